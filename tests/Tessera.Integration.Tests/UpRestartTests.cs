using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

public sealed class UpRestartTests
{
    [Fact]
    public async Task Up_StopsCleanlyAndASecondRunFindsTheSameDisk()
    {
        // Data written through tessera up survives SIGTERM and a second run on the same DIR, which creates nothing new.
        using var dir = new TempDir();
        var data = dir.Combine("data");
        await using (var first = await UpInstance.StartAsync(data, "--size", "1GiB"))
        {
            Assert.Contains("tessera: created disk demo", first.Process.Stdout);
            Assert.Contains($"nbd://127.0.0.1:{first.NbdPort}/demo", first.Process.Stdout);
            Assert.True(File.Exists(Path.Combine(data, "containers", "pool0.img")), "up creates DIR/containers/pool0.img");
            await Tools.QemuIoOkAsync(first.NbdUri(), "write -P 0x77 5242780 300000", "flush");
            var exit = await first.Process.StopAsync(TimeSpan.FromSeconds(60));
            Assert.True(exit == 0, $"tessera up must exit 0 on SIGTERM: exit {exit}\n{first.Process.Stdout}\n{first.Process.Stderr}");
            var stdout = first.Process.Stdout;
            Assert.True(stdout.IndexOf("stopping agent", StringComparison.Ordinal) < stdout.IndexOf("stopping controller", StringComparison.Ordinal),
                $"the agent stops before the controller:\n{stdout}");
            Assert.Contains("tessera: stopped", stdout);
        }

        await using var second = await UpInstance.StartAsync(data, "--size", "1GiB");
        Assert.DoesNotContain("created", second.Process.Stdout);
        Assert.DoesNotContain("presented", second.Process.Stdout);
        Assert.Contains("tessera: found disk demo", second.Process.Stdout);
        await Tools.QemuIoOkAsync(second.NbdUri(), "read -P 0x77 5242780 300000", "read -P 0 5242000 780", "read -P 0 5542780 4096");
        Assert.Single((await second.JsonAsync("container", "list")).GetProperty("containers").EnumerateArray());
        Assert.Single((await second.JsonAsync("disk", "list")).GetProperty("disks").EnumerateArray());
    }
}
