using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

public sealed class ControllerOutageTests
{
    [Fact]
    public async Task ControllerKilled_MappedIoContinues_AndAFaultCompletesWhenItReturns()
    {
        // With the controller process killed, I/O to mapped segments still flows through the agent; a first write to a Zero
        // segment waits, and completes once a controller on the same data directory is back.
        using var dir = new TempDir();
        var ports = Net.FreePorts(2);
        var listen = $"127.0.0.1:{ports[0]}";
        var url = $"http://{listen}";
        var uri = $"nbd://127.0.0.1:{ports[1]}/outage";
        string[] controllerArgs = ["controller", "--data", dir.Combine("controller"), "--listen", listen];

        var controller = TesseraProcess.Start(controllerArgs);
        var agent = TesseraProcess.Start(["agent", "--controller", url, "--host", "h1", "--nbd-listen", $"127.0.0.1:{ports[1]}"]);
        try
        {
            await controller.WaitForLineAsync(l => l.StartsWith("tessera: controller serving", StringComparison.Ordinal), TesseraProcess.StartTimeout, "controller serving");
            await agent.WaitForLineAsync(l => l.Contains("registered", StringComparison.Ordinal), TesseraProcess.StartTimeout, "agent registered");
            foreach (var args in new[]
            {
                new[] { "container", "add", "pool", new Uri(dir.Combine("pool.img")).AbsoluteUri, "--size", "1GiB" },
                ["disk", "create", "outage", "--size", "16MiB"],
                ["disk", "present", "outage", "--host", "h1"],
            })
            {
                var result = await TesseraProcess.RunAsync([.. args, "--controller", url]);
                Assert.True(result.ExitCode == 0, $"tessera {string.Join(' ', args)}: {result}");
            }
            await Exports.WaitUntilListedAsync($"nbd://127.0.0.1:{ports[1]}", "outage");
            await Tools.QemuIoOkAsync(uri, "write -P 0x21 0 1048576"); // segment 0 is now mapped in h1's table

            // SIGKILL, not SIGTERM: the controller is gone at once, so the checks below run well inside the agent's lease
            // even on a loaded machine (a graceful stop could take seconds of it).
            await controller.DisposeAsync();

            // Within the agent's lease (10 s, given up at 80 %): mapped reads and writes need no controller.
            await Tools.QemuIoOkAsync(uri, "write -P 0x22 4096 4096", "read -P 0x22 4096 4096", "read -P 0x21 0 4096");

            // A first write to a Zero segment faults and must wait for the controller.
            var pending = Tools.QemuIoAsync(uri, "write -P 0x33 5242880 4096");
            var early = await Task.WhenAny(pending, Task.Delay(TimeSpan.FromSeconds(2)));
            if (early == pending) Assert.Fail($"a write needing allocation completed with no controller running: {await pending}");

            controller = TesseraProcess.Start(controllerArgs);
            await controller.WaitForLineAsync(l => l.StartsWith("tessera: controller serving", StringComparison.Ordinal), TesseraProcess.StartTimeout, "controller serving again");
            var written = await pending;
            Assert.True(written.ExitCode == 0 && !written.All.Contains("failed", StringComparison.OrdinalIgnoreCase), $"the waiting write must complete once the controller is back: {written}");
            await Tools.QemuIoOkAsync(uri, "read -P 0x33 5242880 4096", "read -P 0x22 4096 4096", "read -P 0x21 8192 4096");
        }
        finally
        {
            await agent.DisposeAsync();
            await controller.DisposeAsync();
        }
    }
}
