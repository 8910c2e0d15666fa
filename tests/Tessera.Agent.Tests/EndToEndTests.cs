using System.Net;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Controller;
using Tessera.Core.Protocol;
using Tessera.Nbd;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>A real controller and real agents in one process, talking gRPC and NBD over loopback.</summary>
internal sealed class Cluster : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    public readonly string Dir = Path.Combine(Path.GetTempPath(), "tessera-e2e-" + Guid.NewGuid().ToString("N"));
    public ControllerHost Controller = null!;
    public Admin.AdminClient Admin = null!;
    private GrpcChannel? _channel;
    private readonly List<AgentHost> _agents = new();
    private readonly int _leaseMs;
    private string _listen = "127.0.0.1:0";

    private readonly int _allocateAheadSegments;

    private Cluster(int leaseMs, int allocateAheadSegments) => (_leaseMs, _allocateAheadSegments) = (leaseMs, allocateAheadSegments);

    /// <param name="allocateAheadSegments">Off by default: most tests count exactly which segments a write allocated.</param>
    public static async Task<Cluster> StartAsync(int leaseMs = 10_000, bool addFilePool = true, int allocateAheadSegments = 0)
    {
        var c = new Cluster(leaseMs, allocateAheadSegments);
        await c.StartControllerAsync();
        if (addFilePool) await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool0", Uri = "file://" + Path.Combine(c.Dir, "pool0.img"), SizeBytes = 256 << 20 });
        return c;
    }

    public async Task StartControllerAsync()
    {
        Controller = await ControllerHost.StartAsync(new ControllerOptions
        {
            DataDirectory = Path.Combine(Dir, "controller"),
            ListenAddress = _listen,
            LeaseMs = _leaseMs,
            HeartbeatIntervalMs = Math.Max(20, _leaseMs / 10),
            AllocateAheadSegments = _allocateAheadSegments,
        }, NullLoggerFactory.Instance);
        _listen = new Uri(Controller.Url).Authority; // restart on the same port
        _channel?.Dispose();
        _channel = GrpcChannel.ForAddress(Controller.Url);
        Admin = new Admin.AdminClient(_channel);
    }

    public Task StopControllerAsync() => Controller.StopAsync();

    public async Task<AgentHost> StartAgentAsync(string host)
    {
        var agent = await AgentHost.StartAsync(new AgentOptions
        {
            ControllerUrl = Controller.Url,
            HostName = host,
            NbdEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
        }, NullLoggerFactory.Instance);
        _agents.Add(agent);
        await agent.Registered.WaitAsync(Timeout);
        return agent;
    }

    public async Task CreateDiskAsync(string name, long sizeBytes, int segmentSizeBytes, params string[] hosts)
    {
        await Admin.CreateDiskAsync(new CreateDiskRequest { Name = name, SizeBytes = (ulong)sizeBytes, SegmentSizeBytes = (uint)segmentSizeBytes });
        foreach (var h in hosts) await Admin.PresentDiskAsync(new PresentRequest { Disk = name, Host = h });
    }

    public static async Task<NbdClient> OpenAsync(AgentHost agent, string disk)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (agent.Core.FindVolume(disk) is null)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"disk {disk} never reached agent {agent.Core.HostName}");
            await Task.Delay(10);
        }
        return await NbdClient.ConnectTcpAsync("127.0.0.1", agent.NbdEndPoint.Port, disk, new NbdClientOptions { BaseAllocation = true });
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var a in _agents) await a.DisposeAsync();
        await Controller.DisposeAsync();
        _channel?.Dispose();
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
    }
}

public class EndToEndTests
{
    private const int Seg = 64 << 10;

    // Proves the whole chain: a thin disk reads zeros, the first write allocates through the controller, data reads back, and the map shows it.
    [Fact]
    public async Task Thin_write_read_through_controller_and_agent()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("d1", 8 << 20, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d1");
        Assert.Equal(8 << 20, nbd.SizeBytes);

        var zeros = new byte[8192];
        Assert.Equal(0u, await nbd.ReadAsync(Seg - 4096, zeros));
        Assert.All(zeros, b => Assert.Equal(0, b));

        var data = Pattern.For(Seg - 4096, 3 * Seg, 1); // spans segments 0..3
        Assert.Equal(0u, await nbd.WriteAsync(Seg - 4096, data));
        Assert.Equal(0u, await nbd.FlushAsync());
        var back = new byte[data.Length];
        Assert.Equal(0u, await nbd.ReadAsync(Seg - 4096, back));
        Assert.Equal(data, back);

        var disk = await c.Admin.GetDiskAsync(new DiskRef { Name = "d1" });
        Assert.Equal(4ul, disk.AllocatedSegments);
    }

    // Proves two hosts sharing a disk see each other's acknowledged writes, including the first write to a Zero segment.
    [Fact]
    public async Task Shared_disk_first_write_is_visible_on_the_other_host()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("shared", 4 << 20, Seg, "h1", "h2");
        var a1 = await c.StartAgentAsync("h1");
        var a2 = await c.StartAgentAsync("h2");
        await using var n1 = await Cluster.OpenAsync(a1, "shared");
        await using var n2 = await Cluster.OpenAsync(a2, "shared");

        // h2 loads segment 5 as Zero first, so it holds a Zero entry when h1 allocates it.
        var buf = new byte[4096];
        Assert.Equal(0u, await n2.ReadAsync(5 * Seg, buf));
        Assert.All(buf, b => Assert.Equal(0, b));

        var data = Pattern.For(5 * Seg, 4096, 9);
        Assert.Equal(0u, await n1.WriteAsync(5 * Seg, data));
        Assert.Equal(0u, await n2.ReadAsync(5 * Seg, buf));
        Assert.Equal(data, buf);

        // And the other way round, on a segment h1 has already loaded.
        var data2 = Pattern.For(5 * Seg + 4096, 4096, 10);
        Assert.Equal(0u, await n2.WriteAsync(5 * Seg + 4096, data2));
        Assert.Equal(0u, await n1.ReadAsync(5 * Seg + 4096, buf));
        Assert.Equal(data2, buf);
    }

    // Proves a restarted agent starts with no tables, reloads them on demand, and finds every byte written before.
    [Fact]
    public async Task Agent_restart_reloads_tables_and_keeps_data()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("d1", 4 << 20, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        var data = Pattern.For(0, 2 * Seg, 3);
        await using (var nbd = await Cluster.OpenAsync(agent, "d1"))
        {
            Assert.Equal(0u, await nbd.WriteAsync(0, data, fua: true));
        }
        ulong incarnation = agent.Core.Incarnation;
        await agent.StopAsync();

        var restarted = await c.StartAgentAsync("h1");
        Assert.NotEqual(incarnation, restarted.Core.Incarnation);
        await using var again = await Cluster.OpenAsync(restarted, "d1");
        var back = new byte[data.Length];
        Assert.Equal(0u, await again.ReadAsync(0, back));
        Assert.Equal(data, back);
    }

    // Proves mapped I/O continues with the controller stopped, and a fault waits and completes once the controller is back.
    [Fact]
    public async Task Controller_outage_mapped_io_continues_and_faults_wait()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("d1", 4 << 20, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d1");
        var data = Pattern.For(0, 4096, 4);
        Assert.Equal(0u, await nbd.WriteAsync(0, data));

        await c.StopControllerAsync();
        // Mapped segment 0: reads and writes go on without the controller.
        var data2 = Pattern.For(0, 4096, 5);
        Assert.Equal(0u, await nbd.WriteAsync(0, data2));
        var back = new byte[4096];
        Assert.Equal(0u, await nbd.ReadAsync(0, back));
        Assert.Equal(data2, back);

        // Segment 7 was never touched: its write must fault and wait for the controller.
        var pending = nbd.WriteAsync(7 * Seg, Pattern.For(7 * Seg, 4096, 6)).AsTask();
        await Task.Delay(200);
        Assert.False(pending.IsCompleted);

        await c.StartControllerAsync();
        Assert.Equal(0u, await pending.WaitAsync(Cluster.Timeout));
        Assert.Equal(0u, await nbd.ReadAsync(7 * Seg, back));
        Assert.Equal(Pattern.For(7 * Seg, 4096, 6), back);
    }

    // Proves a host sees only the disks presented to it, and a read-only presentation refuses writes with EPERM.
    [Fact]
    public async Task Presentation_limits_what_a_host_sees_and_may_write()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("mine", 1 << 20, Seg, "h1");
        await c.CreateDiskAsync("theirs", 1 << 20, Seg, "h2");
        await c.Admin.CreateDiskAsync(new CreateDiskRequest { Name = "ro", SizeBytes = 1 << 20 });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "ro", Host = "h1", ReadOnly = true });
        var agent = await c.StartAgentAsync("h1");
        await using var ro = await Cluster.OpenAsync(agent, "ro");
        var names = new AgentCatalog(agent.Core).ListExports().Select(e => e.Name).ToArray();
        Assert.Equal(new[] { "mine", "ro" }, names);
        Assert.True(ro.ReadOnly);
        Assert.Equal(1u /* EPERM */, await ro.WriteAsync(0, new byte[512]));
        await Assert.ThrowsAnyAsync<Exception>(() => NbdClient.ConnectTcpAsync("127.0.0.1", agent.NbdEndPoint.Port, "theirs"));
    }

    // Proves whole-segment WRITE_ZEROES returns segments to Zero through the controller and frees their space.
    [Fact]
    public async Task Whole_segment_write_zeroes_frees_space()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("d1", 4 << 20, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d1");
        Assert.Equal(0u, await nbd.WriteAsync(0, Pattern.For(0, 4 * Seg, 2)));
        Assert.Equal(4ul, (await c.Admin.GetDiskAsync(new DiskRef { Name = "d1" })).AllocatedSegments);
        Assert.Equal(0u, await nbd.WriteZeroesAsync(Seg, 2 * Seg));
        Assert.Equal(2ul, (await c.Admin.GetDiskAsync(new DiskRef { Name = "d1" })).AllocatedSegments);
        var extents = new NbdExtentList();
        Assert.Equal(0u, await nbd.BlockStatusAsync(0, 4 * Seg, extents));
        Assert.Equal(NbdExtentFlags.Data, extents[0].Flags);
        Assert.Equal(new NbdExtent(Seg, 2 * Seg, NbdExtentFlags.Hole | NbdExtentFlags.Zero), extents[1]);
        var back = new byte[4 * Seg];
        Assert.Equal(0u, await nbd.ReadAsync(0, back));
        Assert.Equal(Pattern.For(0, Seg, 2), back.AsSpan(0, Seg).ToArray());
        Assert.All(back.AsSpan(Seg, 2 * Seg).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(Pattern.For(3 * Seg, Seg, 2), back.AsSpan(3 * Seg).ToArray());
    }

    // Proves presentation changes are live: a second host gets the disk while the first keeps writing, and unpresenting
    // ends the first host's connection with ESHUTDOWN only after its acknowledged writes are readable through the second.
    [Fact]
    public async Task Presentation_changes_while_a_host_writes()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("live", 4 << 20, Seg, "h1");
        var a1 = await c.StartAgentAsync("h1");
        var a2 = await c.StartAgentAsync("h2");
        await using var n1 = await Cluster.OpenAsync(a1, "live");

        using var stop = new CancellationTokenSource();
        long acknowledged = -1; // highest block index whose write h1 got acknowledged
        uint lastError = 0;
        var writer = Task.Run(async () =>
        {
            for (long block = 0; block < (4 << 20) / 4096 && !stop.IsCancellationRequested; block++)
            {
                uint errno;
                try { errno = await n1.WriteAsync(block * 4096, Pattern.For(block * 4096, 4096, 1)); }
                catch (NbdClientException) { errno = 108; } // the server may close the connection after answering ESHUTDOWN
                if (errno != 0) { lastError = errno; return; }
                Interlocked.Exchange(ref acknowledged, block);
            }
        });

        while (Interlocked.Read(ref acknowledged) < 50 && !writer.IsCompleted) await Task.Delay(5);
        Assert.False(writer.IsCompleted, $"the writer stopped early with errno {lastError}");
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "live", Host = "h2" });
        await using var n2 = await Cluster.OpenAsync(a2, "live");
        while (Interlocked.Read(ref acknowledged) < 150 && !writer.IsCompleted) await Task.Delay(5);

        await c.Admin.UnpresentDiskAsync(new UnpresentRequest { Disk = "live", Host = "h1" });
        await writer.WaitAsync(Cluster.Timeout); // the unpresent must stop h1's writes: the writer ends on an error
        Assert.Equal(108u /* ESHUTDOWN */, lastError);
        Assert.Null(a1.Core.FindVolume("live"));

        long last = Interlocked.Read(ref acknowledged);
        Assert.True(last >= 150);
        var back = new byte[4096];
        for (long block = 0; block <= last; block++)
        {
            Assert.Equal(0u, await n2.ReadAsync(block * 4096, back));
            Assert.Equal(Pattern.For(block * 4096, 4096, 1), back);
        }
    }

    // Proves an nbd:// container served by qemu-nbd holds a disk's bytes: a write through the agent lands in qemu-nbd's backing file at the mapped location.
    [Fact]
    public async Task Nbd_container_served_by_qemu_nbd_stores_the_data()
    {
        await using var c = await Cluster.StartAsync(addFilePool: false);
        string backing = Path.Combine(c.Dir, "remote.img");
        Directory.CreateDirectory(c.Dir);
        using (var f = File.Create(backing)) f.SetLength(32 << 20);
        await using var qemu = await ExternalServer.StartAsync("qemu-nbd", port => $"-f raw -x pool -b 127.0.0.1 -p {port} --persistent --shared=8 -t {backing}");
        var added = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "remote", Uri = $"nbd://127.0.0.1:{qemu.Port}/pool" });
        Assert.Equal((ulong)(32 << 20), added.SizeBytes);

        await c.CreateDiskAsync("d1", 4 << 20, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d1");
        var data = Pattern.For(3 * Seg + 512, 8192, 8);
        Assert.Equal(0u, await nbd.WriteAsync(3 * Seg + 512, data, fua: true));
        var back = new byte[data.Length];
        Assert.Equal(0u, await nbd.ReadAsync(3 * Seg + 512, back));
        Assert.Equal(data, back);

        var map = await c.Admin.GetDiskMapAsync(new DiskRef { Name = "d1" });
        var range = map.Ranges.Single(r => r.FirstSegment <= 3 && r.FirstSegment + r.Count > 3 && r.ContainerId == added.Id);
        long physical = ((long)range.FirstPhysicalSegment + (3 - (long)range.FirstSegment) * (Seg >> 16)) << 16;
        var onDisk = new byte[data.Length];
        using (var f = new FileStream(backing, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            f.Position = physical + 512;
            f.ReadExactly(onDisk);
        }
        Assert.Equal(data, onDisk);
    }
}

/// <summary>A third-party server process on a free loopback port, killed on dispose.</summary>
internal sealed class ExternalServer : IAsyncDisposable
{
    private readonly System.Diagnostics.Process _process;
    public int Port { get; }

    private ExternalServer(System.Diagnostics.Process process, int port)
    {
        _process = process;
        Port = port;
    }

    public static async Task<ExternalServer> StartAsync(string program, Func<int, string> arguments)
    {
        for (int attempt = 0; ; attempt++)
        {
            int port = FreePort();
            var psi = new System.Diagnostics.ProcessStartInfo(program, arguments(port)) { RedirectStandardError = true, RedirectStandardOutput = true };
            System.Diagnostics.Process process;
            try { process = System.Diagnostics.Process.Start(psi)!; }
            catch (System.ComponentModel.Win32Exception e) { throw new InvalidOperationException($"{program} is not installed: run scripts/test.sh, which installs it", e); }
            var deadline = DateTime.UtcNow + Cluster.Timeout;
            while (DateTime.UtcNow < deadline && !process.HasExited)
            {
                try
                {
                    using var probe = new System.Net.Sockets.TcpClient();
                    await probe.ConnectAsync(IPAddress.Loopback, port);
                    return new ExternalServer(process, port);
                }
                catch (System.Net.Sockets.SocketException) { await Task.Delay(20); }
            }
            string err = process.HasExited ? await process.StandardError.ReadToEndAsync() : "";
            if (!process.HasExited) process.Kill(true);
            if (attempt >= 2) throw new InvalidOperationException($"{program} did not start listening: {err}");
        }
    }

    private static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited) _process.Kill(true);
        await _process.WaitForExitAsync();
        _process.Dispose();
    }
}
