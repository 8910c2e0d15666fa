using System.Text.Json;
using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

public sealed class AgentRestartTests
{
    [Fact]
    public async Task AgentKilledAndRestarted_RegistersAnewAndServesTheSameData()
    {
        // An agent killed with SIGKILL keeps nothing; its successor registers with a new incarnation and reloads entries on demand,
        // so data written through the first is read through the second, and the disk map did not change.
        using var dir = new TempDir();
        var ports = Net.FreePorts(2);
        var url = $"http://127.0.0.1:{ports[0]}";
        var server = $"nbd://127.0.0.1:{ports[1]}";
        string[] agentArgs = ["agent", "--controller", url, "--host", "h1", "--nbd-listen", $"127.0.0.1:{ports[1]}"];

        await using var controller = TesseraProcess.Start(["controller", "--data", dir.Combine("controller"), "--listen", $"127.0.0.1:{ports[0]}"]);
        var agent = TesseraProcess.Start(agentArgs);
        try
        {
            await controller.WaitForLineAsync(l => l.StartsWith("tessera: controller serving", StringComparison.Ordinal), TesseraProcess.StartTimeout, "controller serving");
            await agent.WaitForLineAsync(l => l.Contains("registered", StringComparison.Ordinal), TesseraProcess.StartTimeout, "agent registered");
            foreach (var args in new[]
            {
                new[] { "container", "add", "pool", new Uri(dir.Combine("pool.img")).AbsoluteUri, "--size", "1GiB" },
                ["disk", "create", "vol", "--size", "32MiB", "--segment-size", "256KiB"],
                ["disk", "present", "vol", "--host", "h1"],
            })
            {
                var created = await TesseraProcess.RunAsync([.. args, "--controller", url]);
                Assert.True(created.ExitCode == 0, $"tessera {string.Join(' ', args)}: {created}");
            }
            await Exports.WaitUntilListedAsync(server, "vol");
            await Tools.QemuIoOkAsync($"{server}/vol", "write -P 0x61 262000 600000", "write -P 0x62 20000000 4096");
            var incarnationBefore = await Incarnation(url);
            var mapBefore = await MapRanges(url);

            await agent.DisposeAsync(); // SIGKILL: no goodbye to the controller
            agent = TesseraProcess.Start(agentArgs);
            await agent.WaitForLineAsync(l => l.Contains("registered", StringComparison.Ordinal), TesseraProcess.StartTimeout, "restarted agent registered");
            await Exports.WaitUntilListedAsync(server, "vol");

            await Tools.QemuIoOkAsync($"{server}/vol", "read -P 0x61 262000 600000", "read -P 0x62 20000000 4096", "read -P 0 0 262000", "read -P 0 862000 4096");
            Assert.NotEqual(incarnationBefore, await Incarnation(url));
            Assert.Equal(mapBefore, await MapRanges(url));
        }
        finally
        {
            await agent.DisposeAsync();
        }
    }

    private static async Task<JsonElement> Json(string url, params string[] args)
    {
        var result = await TesseraProcess.RunAsync([.. args, "--json", "--controller", url]);
        Assert.True(result.ExitCode == 0, $"tessera {string.Join(' ', args)}: {result}");
        return JsonDocument.Parse(result.Stdout).RootElement.Clone();
    }

    private static async Task<ulong> Incarnation(string url)
    {
        var hosts = (await Json(url, "host", "list")).GetProperty("hosts").EnumerateArray().Where(h => h.GetProperty("host").GetString() == "h1").ToList();
        var host = Assert.Single(hosts);
        Assert.True(host.GetProperty("connected").GetBoolean(), "h1 must be connected");
        return host.GetProperty("incarnation").GetUInt64();
    }

    private static async Task<string> MapRanges(string url) => (await Json(url, "disk", "map", "vol")).GetProperty("ranges").GetRawText();
}
