using System.Text.Json;
using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

/// <summary>
/// <c>tessera controller</c> and two <c>tessera agent</c> processes (hosts h1 and h2), each its own process, with
/// three disks: <c>shared</c> (read-write on h1 and h2), <c>only1</c> (h1) and <c>ro2</c> (read-only on h2).
/// </summary>
public sealed class ClusterFixture : IAsyncLifetime
{
    private readonly TempDir _dir = new();
    private readonly List<TesseraProcess> _processes = [];

    public string ControllerUrl { get; private set; } = "";
    public int H1Port { get; private set; }
    public int H2Port { get; private set; }

    public string Server(int port) => $"nbd://127.0.0.1:{port}";

    public async Task InitializeAsync()
    {
        try
        {
            await StartAsync();
        }
        catch
        {
            await DisposeAsync(); // no process may outlive a failed start
            throw;
        }
    }

    private async Task StartAsync()
    {
        var ports = Net.FreePorts(3);
        ControllerUrl = $"http://127.0.0.1:{ports[0]}";
        (H1Port, H2Port) = (ports[1], ports[2]);

        var controller = Track(TesseraProcess.Start(["controller", "--data", _dir.Combine("controller"), "--listen", $"127.0.0.1:{ports[0]}"]));
        await controller.WaitForLineAsync(l => l.StartsWith("tessera: controller serving", StringComparison.Ordinal), TesseraProcess.StartTimeout, "controller serving");
        foreach (var (host, port) in new[] { ("h1", H1Port), ("h2", H2Port) })
        {
            var agent = Track(TesseraProcess.Start(["agent", "--controller", ControllerUrl, "--host", host, "--nbd-listen", $"127.0.0.1:{port}"]));
            await agent.WaitForLineAsync(l => l.Contains("registered", StringComparison.Ordinal), TesseraProcess.StartTimeout, $"agent {host} registered");
        }

        await Cli("container", "add", "pool", new Uri(_dir.Combine("pool.img")).AbsoluteUri, "--size", "2GiB");
        await Cli("disk", "create", "shared", "--size", "64MiB");
        await Cli("disk", "create", "only1", "--size", "16MiB");
        await Cli("disk", "create", "ro2", "--size", "16MiB");
        await Cli("disk", "present", "shared", "--host", "h1");
        await Cli("disk", "present", "shared", "--host", "h2");
        await Cli("disk", "present", "only1", "--host", "h1");
        await Cli("disk", "present", "ro2", "--host", "h2", "--read-only");
        await Exports.WaitUntilListedAsync(Server(H1Port), "shared", "only1");
        await Exports.WaitUntilListedAsync(Server(H2Port), "shared", "ro2");
    }

    private TesseraProcess Track(TesseraProcess process)
    {
        _processes.Add(process);
        return process;
    }

    public async Task<ProcessResult> Cli(params string[] args)
    {
        var result = await TesseraProcess.RunAsync([.. args, "--controller", ControllerUrl]);
        Assert.True(result.ExitCode == 0, $"tessera {string.Join(' ', args)} failed: {result}");
        return result;
    }

    public async Task DisposeAsync()
    {
        // Agents first, then the controller, as an operator would.
        for (var i = _processes.Count - 1; i >= 0; i--) await _processes[i].DisposeAsync();
        _processes.Clear();
        _dir.Dispose();
    }
}

public sealed class ClusterTests(ClusterFixture cluster) : IClassFixture<ClusterFixture>
{
    private string Uri(int port, string disk) => $"{cluster.Server(port)}/{disk}";

    [Fact]
    public async Task WriteThroughH1_IsReadThroughH2_IncludingTheFirstWriteToAZeroSegment()
    {
        // h2 first reads zeros (so it holds the Zero entries); after h1's acknowledged first write, h2 reads h1's data, never stale zeros.
        await Tools.QemuIoOkAsync(Uri(cluster.H2Port, "shared"), "read -P 0 3145000 1100000");
        await Tools.QemuIoOkAsync(Uri(cluster.H1Port, "shared"), "write -P 0x5a 3145000 1100000");
        await Tools.QemuIoOkAsync(Uri(cluster.H2Port, "shared"), "read -P 0x5a 3145000 1100000", "read -P 0 3144000 1000");

        // And the other way round, on segments neither host has touched.
        await Tools.QemuIoOkAsync(Uri(cluster.H1Port, "shared"), "read -P 0 20971000 2000");
        await Tools.QemuIoOkAsync(Uri(cluster.H2Port, "shared"), "write -P 0xa5 20971000 2000");
        await Tools.QemuIoOkAsync(Uri(cluster.H1Port, "shared"), "read -P 0xa5 20971000 2000");
    }

    [Fact]
    public async Task EachAgentListsOnlyItsHostsDisks()
    {
        // NBD_OPT_LIST on each agent shows exactly the disks presented to that host, and GO on another host's disk fails.
        Assert.Equal(["only1", "shared"], await Exports.ListAsync(cluster.Server(cluster.H1Port)));
        Assert.Equal(["ro2", "shared"], await Exports.ListAsync(cluster.Server(cluster.H2Port)));
        var foreign = await Tools.RunAsync("nbdinfo", Uri(cluster.H2Port, "only1"));
        Assert.True(foreign.ExitCode != 0, $"h2 must not serve only1: {foreign}");
    }

    [Fact]
    public async Task ReadOnlyPresentation_RefusesWrites()
    {
        // A read-only presentation is served read-only: reads work, a write fails with a permission error and changes nothing.
        // (qemu-io, seeing NBD_FLAG_READ_ONLY, refuses to open the export read-write: "Permission denied".)
        var info = await Tools.RunOkAsync("nbdinfo", "--json", Uri(cluster.H2Port, "ro2"));
        Assert.True(JsonDocument.Parse(info.Stdout).RootElement.GetProperty("exports")[0].GetProperty("is_read_only").GetBoolean());
        await Tools.QemuIoOkAsync(Uri(cluster.H2Port, "ro2"), readOnly: true, "read -P 0 0 65536");

        var write = await Tools.QemuIoAsync(Uri(cluster.H2Port, "ro2"), "write -P 0x11 0 4096");
        Assert.True(write.ExitCode != 0, $"a write to a read-only presentation must fail: {write}");
        Assert.Matches("(?i)permission denied|operation not permitted|read-only", write.All);
        await Tools.QemuIoOkAsync(Uri(cluster.H2Port, "ro2"), readOnly: true, "read -P 0 0 4096");
    }

    [Fact]
    public async Task ReadOnlyPresentation_ServerRefusesWritesWithEperm()
    {
        // A client that ignores the read-only flag and sends NBD_CMD_WRITE anyway gets EPERM from the agent, and the data stays zero.
        using var dir = new TempDir();
        var script = dir.Combine("write.py");
        await File.WriteAllTextAsync(script, """
            import errno, sys, nbd
            h = nbd.NBD()
            h.set_strict_mode(0)  # let libnbd send the write although the export is read-only
            h.connect_uri(sys.argv[1])
            try:
                h.pwrite(b"\x11" * 4096, 8192)
            except nbd.Error as e:
                print(f"refused: {e.errno} {e.string}")
                sys.exit(0 if e.errno in (errno.EPERM, "EPERM") else 2)
            print("write accepted")
            sys.exit(1)
            """);
        Tools.Require("nbdinfo");
        var result = await Tools.RunAsync("/usr/bin/python3", script, Uri(cluster.H2Port, "ro2"));
        Assert.True(result.ExitCode == 0, $"the agent must refuse a write to a read-only presentation with EPERM: {result}");
        await Tools.QemuIoOkAsync(Uri(cluster.H2Port, "ro2"), readOnly: true, "read -P 0 8192 4096");
    }

    [Fact]
    public async Task HostList_ShowsBothAgents()
    {
        // The controller lists both agents as connected, each with the disks presented to it.
        var result = await cluster.Cli("host", "list", "--json");
        var hosts = JsonDocument.Parse(result.Stdout).RootElement.GetProperty("hosts").EnumerateArray()
            .ToDictionary(h => h.GetProperty("host").GetString()!);
        Assert.True(hosts["h1"].GetProperty("connected").GetBoolean());
        Assert.True(hosts["h2"].GetProperty("connected").GetBoolean());
        Assert.Contains("only1", hosts["h1"].GetProperty("disks").EnumerateArray().Select(d => d.GetString()));
        Assert.DoesNotContain("only1", hosts["h2"].GetProperty("disks").EnumerateArray().Select(d => d.GetString()));
    }
}
