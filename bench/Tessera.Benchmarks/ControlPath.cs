using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Agent;
using Tessera.Controller;
using Tessera.Controller.Store;
using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Tessera.Nbd;

namespace Tessera.Benchmarks;

/// <summary>
/// Control-path figures with a real <see cref="ControllerHost"/> and a real <see cref="AgentHost"/> in one process,
/// talking gRPC over loopback (the `tessera up` arrangement):
///
/// 1. Map-fault round trip: first reads of distinct never-loaded segments (one per 256-segment response window,
///    so every read faults), timed at the agent's DiskVolume: agent → controller (store lookup) → agent.
///    Also first writes to thin segments: the allocation fault (zero the segment, fdatasync, persist, answer).
/// 2. A blocking range command over 1 Mi entries with no I/O in flight, sent by the controller to the agent and
///    timed until the agent's reply is back: SetEntries (one entry filling the range) and ChangeStates.
/// 3. Agent restart to the first served mapped read on a disk with 1 Mi allocated segments: stop the agent,
///    start a new one, connect an NBD client, read 4 KiB of a mapped segment and check its bytes.
///
/// Usage: Tessera.Benchmarks control [--cold-faults N] [--faults N] [--write-faults N] [--segments N] [--restarts N]
/// [--commands N]; --restarts 0 skips part 3 and the long store fill it needs.
/// </summary>
public static class ControlPath
{
    private const int SegmentBytes = 64 << 10; // the smallest segment: 1 Mi segments make a 64 GiB disk
    private const int Window = 256;            // DiskCoordinator.ResponseWindowSegments

    public static int Run(string[] args)
    {
        int coldFaults = 1000, faults = 2000, writeFaults = 300, restarts = 5, commands = 7;
        long segments = 1 << 20;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--faults": faults = int.Parse(args[i + 1]); break;
                case "--cold-faults": coldFaults = int.Parse(args[i + 1]); break;
                case "--write-faults": writeFaults = int.Parse(args[i + 1]); break;
                case "--segments": segments = long.Parse(args[i + 1]); break;
                case "--restarts": restarts = int.Parse(args[i + 1]); break;
                case "--commands": commands = int.Parse(args[i + 1]); break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        var dir = Path.Combine(Path.GetTempPath(), $"tessera-control-{Environment.ProcessId}");
        try
        {
            RunAsync(dir, coldFaults, faults, writeFaults, segments, restarts, commands).GetAwaiter().GetResult();
            return 0;
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }

    private static async Task RunAsync(string dir, int coldFaults, int faults, int writeFaults, long segments, int restarts, int commands)
    {
        var loggers = NullLoggerFactory.Instance;
        var controllerDir = Path.Combine(dir, "controller");
        long diskBytes = segments * SegmentBytes;
        // Room for the restart disk's 1 Mi segments at units [segments, 2*segments) plus what faults allocate below.
        long containerBytes = 2 * diskBytes + (64L << 20);
        var poolUri = new Uri(Path.Combine(dir, "pool0.img")).AbsoluteUri;

        var sinceControllerStart = Stopwatch.StartNew();
        var controller = await ControllerHost.StartAsync(new ControllerOptions { DataDirectory = controllerDir, ListenAddress = "127.0.0.1:0" }, loggers);
        var channel = GrpcChannel.ForAddress(controller.Url);
        var admin = new Admin.AdminClient(channel);
        var container = await admin.AddContainerAsync(new AddContainerRequest { Name = "pool0", Uri = poolUri, SizeBytes = (ulong)containerBytes });
        foreach (var name in new[] { "faults", "command", "restart" })
        {
            await admin.CreateDiskAsync(new CreateDiskRequest { Name = name, SizeBytes = (ulong)diskBytes, SegmentSizeBytes = SegmentBytes });
            await admin.PresentDiskAsync(new PresentRequest { Disk = name, Host = "local" });
        }
        var agent = await StartAgentAsync(controller.Url);
        Console.WriteLine($"controller {controller.Url}, agent NBD {agent.NbdEndPoint}; disks of {segments} segments of {SegmentBytes >> 10} KiB");

        // ---- 1. map-fault round trips
        var volume = await VolumeAsync(agent, "faults");
        var buffer = new byte[4096];
        long windows = segments / Window;
        // A few faults for the gRPC connection and SQLite caches, excluded from the figures: the last windows of the disk.
        for (int i = 0; i < 50; i++) await volume.ReadAsync((windows - 1 - i) * Window * (long)SegmentBytes, buffer, null, default);
        // Cold: a process a second old, as every figure before 2026-11-27 06:00 was measured. Tiered compilation is
        // still promoting methods in the background then, and its compiles are most of the process CPU.
        long jitAtStart = System.Runtime.JitInfo.GetCompiledMethodCount();
        await MeasureReadFaultsAsync(agent, volume, buffer, firstWindow: 0, coldFaults, "cold process");
        Console.WriteLine($"  (methods compiled during the cold faults: {System.Runtime.JitInfo.GetCompiledMethodCount() - jitAtStart})");
        // Warm: fault on the command disk (its table is overwritten whole by the commands below) until tiered
        // compilation goes quiet and the controller's first lease (10 s, during which a read fault also checks for
        // hosts that have not registered yet) is over, then measure again: a long-running agent and controller.
        long jitBefore = System.Runtime.JitInfo.GetCompiledMethodCount();
        int warmFaults = await WarmUpUntilJitQuietAsync(await VolumeAsync(agent, "command"), windows, buffer,
            TimeSpan.FromMilliseconds(controller.Core.Options.LeaseMs + 500) - sinceControllerStart.Elapsed);
        Console.WriteLine($"  (warm-up: {warmFaults} faults on the command disk, {System.Runtime.JitInfo.GetCompiledMethodCount() - jitBefore} methods compiled meanwhile)");
        jitAtStart = System.Runtime.JitInfo.GetCompiledMethodCount();
        await MeasureReadFaultsAsync(agent, volume, buffer, firstWindow: coldFaults, faults, "warm process");
        Console.WriteLine($"  (methods compiled during the warm faults: {System.Runtime.JitInfo.GetCompiledMethodCount() - jitAtStart})");
        faults = coldFaults; // the write faults below use the windows the cold reads loaded

        var allocFaults = new List<double>(writeFaults);
        for (int i = 0; i < writeFaults; i++)
        {
            // Segments already loaded as Zero by the reads above: each write faults once to allocate.
            long offset = (long)(i % faults) * Window * SegmentBytes + (17L + 1 + i / faults) * SegmentBytes;
            long t0 = Stopwatch.GetTimestamp();
            var status = await volume.WriteAsync(offset, buffer, default);
            double us = Stopwatch.GetElapsedTime(t0).TotalMicroseconds;
            if (status != IoStatus.Ok) throw new InvalidOperationException($"write fault failed: {status}");
            allocFaults.Add(us);
        }
        Report("map fault, first write to a thin segment (allocate: zero + fdatasync + persist)", allocFaults);

        // ---- 2. blocking range commands over every entry
        var core = controller.Core;
        var commandDisk = core.Store.GetDisk("command")!;
        var session = core.Sessions.Holding(commandDisk.Id).Single(s => !s.IsClosed);
        var commandVolume = await VolumeAsync(agent, "command");
        var setTimes = new List<double>();
        var changeTimes = new List<double>();
        var setCpu = TimeSpan.Zero;
        var changeCpu = TimeSpan.Zero;
        for (int i = 0; i < commands; i++)
        {
            // Zero over the whole thin disk: what the store already says, so the agent stays consistent.
            var set = new Command { Blocking = true, DiskId = commandDisk.Id, SetEntries = new SetEntries { FirstSegment = 0, Count = (ulong)segments } };
            set.SetEntries.Entries.Add(MapEntry.Zero.Raw);
            var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            setTimes.Add(await TimeCommandAsync(session, set, core.Stopping));
            setCpu += Process.GetCurrentProcess().TotalProcessorTime - cpu0;
            var change = new Command
            {
                Blocking = true,
                DiskId = commandDisk.Id,
                ChangeStates = new ChangeStates { FirstSegment = 0, Count = (ulong)segments, Set = (uint)EntryStates.NoWrite },
            };
            cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            changeTimes.Add(await TimeCommandAsync(session, change, core.Stopping));
            changeCpu += Process.GetCurrentProcess().TotalProcessorTime - cpu0;
            if (commandVolume.Table.Get(segments - 1).States != (EntryStates.Zero | EntryStates.NoWrite))
                throw new InvalidOperationException("ChangeStates did not reach the agent's table");
            var clear = new Command
            {
                Blocking = true,
                DiskId = commandDisk.Id,
                ChangeStates = new ChangeStates { FirstSegment = 0, Count = (ulong)segments, Clear = (uint)EntryStates.NoWrite },
            };
            await TimeCommandAsync(session, clear, core.Stopping);
        }
        Report($"blocking SetEntries over {segments} entries, controller → agent → reply", setTimes, "ms");
        Report($"blocking ChangeStates over {segments} loaded entries, controller → agent → reply", changeTimes, "ms");
        Console.WriteLine($"  (process CPU per command: SetEntries {setCpu.TotalMilliseconds / commands:F1} ms, ChangeStates {changeCpu.TotalMilliseconds / commands:F1} ms)");

        // ---- 3. agent restart on a disk with every segment allocated (--restarts 0 skips it, and its long store fill)
        await agent.StopAsync();
        if (restarts == 0)
        {
            await controller.StopAsync();
            channel.Dispose();
            return;
        }
        var restartDisk = core.Store.GetDisk("restart")!;
        await controller.StopAsync();
        channel.Dispose();
        var fill = Stopwatch.StartNew();
        using (var store = ControllerStore.Open(controllerDir))
        {
            const int batch = 65536;
            var rows = new List<(long, MapEntry)>(batch);
            for (long s = 0; s < segments; s++)
            {
                rows.Add((s, MapEntry.Mapped((ushort)container.Id, segments + s)));
                if (rows.Count == batch) { store.SetEntries(restartDisk.Id, rows); rows.Clear(); }
            }
            if (rows.Count > 0) store.SetEntries(restartDisk.Id, rows);
        }
        Console.WriteLine($"  (stored {segments} allocated entries in {fill.Elapsed.TotalSeconds:F1} s)");
        var start = Stopwatch.StartNew();
        controller = await ControllerHost.StartAsync(new ControllerOptions { DataDirectory = controllerDir, ListenAddress = "127.0.0.1:0" }, loggers);
        Console.WriteLine($"  (controller restart with {segments} allocated segments in the store: {start.Elapsed.TotalMilliseconds:F0} ms)");
        agent = await StartAgentAsync(controller.Url);
        await agent.StopAsync();

        var restartTimes = new List<double>();
        var random = new Random(5);
        using (var pool = Tessera.Core.Containers.FileContainer.Open(poolUri))
        {
            for (int i = 0; i < restarts; i++)
            {
                long segment = random.NextInt64(segments);
                // Mark the physical place so the read proves it went through the map.
                var marker = new byte[4096];
                BinaryPrimitives.WriteInt64LittleEndian(marker, 0x7e55e7a000000000 | segment);
                await pool.WriteAsync((segments + segment) * MapEntry.PhysicalUnitBytes, marker);

                long t0 = Stopwatch.GetTimestamp();
                agent = await StartAgentAsync(controller.Url, waitRegistered: false);
                var client = await ConnectWhenExportedAsync(agent.NbdEndPoint, "restart");
                uint errno = await client.ReadAsync(segment * SegmentBytes, buffer);
                double ms = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                if (errno != 0) throw new InvalidOperationException($"read after restart failed: errno {errno}");
                if (!buffer.AsSpan().SequenceEqual(marker)) throw new InvalidOperationException("read after restart returned the wrong bytes");
                restartTimes.Add(ms);
                await client.DisposeAsync();
                await agent.StopAsync();
            }
        }
        Report($"agent start to first served mapped read (NBD), disk with {segments} allocated segments", restartTimes, "ms");
        await controller.StopAsync();
    }

    /// <summary>Read faults of distinct never-loaded windows from <paramref name="firstWindow"/> on; prints p50/p99 and process CPU per fault.</summary>
    private static async Task MeasureReadFaultsAsync(AgentHost agent, DiskVolume volume, byte[] buffer, long firstWindow, int count, string label)
    {
        long windows = volume.Table.SegmentCount / Window;
        var readFaults = new List<double>(count);
        // CPU time of the whole process (controller and agent) per fault: unlike latency, barely moved by other load.
        var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        // What the runtime did per fault (process-wide, so controller and agent together): thread-pool work items
        // (each one a hand-off between threads), managed bytes allocated, lock contentions, gen-0 collections.
        long workItems0 = ThreadPool.CompletedWorkItemCount, bytes0 = GC.GetTotalAllocatedBytes(precise: false);
        long contentions0 = Monitor.LockContentionCount;
        int gen0 = GC.CollectionCount(0);
        int faultsDone = 0;
        for (long w = firstWindow; w < Math.Min(firstWindow + count, windows - 100); w++)
        {
            long offset = w * Window * SegmentBytes + 17L * SegmentBytes;
            long sent = agent.Core.Counters.FaultsSent;
            long t0 = Stopwatch.GetTimestamp();
            var status = await volume.ReadAsync(offset, buffer, null, default);
            double us = Stopwatch.GetElapsedTime(t0).TotalMicroseconds;
            if (status != IoStatus.Ok) throw new InvalidOperationException($"read fault failed: {status}");
            if (agent.Core.Counters.FaultsSent == sent + 1) readFaults.Add(us);
            faultsDone++;
        }
        Report($"map fault, read of a never-loaded segment (agent → controller → agent), {label}", readFaults);
        ReportCpu($"read fault ({label})", cpuBefore, faultsDone, "µs");
        double per = Math.Max(1, faultsDone);
        Console.WriteLine($"  (per read fault ({label}): {(ThreadPool.CompletedWorkItemCount - workItems0) / per:F1} thread-pool work items, " +
            $"{(GC.GetTotalAllocatedBytes(precise: false) - bytes0) / per:F0} B allocated, {(Monitor.LockContentionCount - contentions0) / per:F2} lock contentions; " +
            $"{GC.CollectionCount(0) - gen0} gen-0 GCs in {faultsDone} faults)");
    }

    /// <summary>
    /// Read faults over the windows of <paramref name="volume"/> for at least <paramref name="minimum"/> (and two
    /// seconds), and then until a round of 500 compiles almost no method (tier-1 promotion waits for ~30 calls and a
    /// 100 ms quiet period, then compiles in the background); at most 20 seconds. Between rounds the agent's table is
    /// invalidated locally (stricter than the controller's, so safe) so the same windows fault again. Returns the
    /// number of faults made.
    /// </summary>
    private static async Task<int> WarmUpUntilJitQuietAsync(DiskVolume volume, long windows, byte[] buffer, TimeSpan minimum)
    {
        if (minimum < TimeSpan.FromSeconds(2)) minimum = TimeSpan.FromSeconds(2);
        var elapsed = Stopwatch.StartNew();
        int done = 0;
        while (elapsed.Elapsed < TimeSpan.FromSeconds(20))
        {
            long compiled = System.Runtime.JitInfo.GetCompiledMethodCount();
            volume.Table.InvalidateAll();
            for (int i = 0; i < Math.Min(500, windows); i++, done++) await volume.ReadAsync(i * Window * (long)SegmentBytes, buffer, null, default);
            await Task.Delay(150); // lets the background compiler's batch finish
            if (elapsed.Elapsed > minimum && System.Runtime.JitInfo.GetCompiledMethodCount() - compiled < 5) break;
        }
        return done;
    }

    private static async Task<double> TimeCommandAsync(Tessera.Controller.Agents.AgentSession session, Command command, CancellationToken ct)
    {
        long t0 = Stopwatch.GetTimestamp();
        var outcome = await session.SendAndWaitAsync(command, ct);
        double ms = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        if (outcome != Tessera.Controller.Agents.AckOutcome.Acknowledged) throw new InvalidOperationException($"command {command.OpCase} not acknowledged: {outcome}");
        return ms;
    }

    private static async Task<AgentHost> StartAgentAsync(string controllerUrl, bool waitRegistered = true)
    {
        var agent = await AgentHost.StartAsync(new AgentOptions
        {
            ControllerUrl = controllerUrl,
            HostName = "local",
            NbdEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
        }, NullLoggerFactory.Instance);
        if (waitRegistered) await agent.Registered.WaitAsync(TimeSpan.FromSeconds(30));
        return agent;
    }

    private static async Task<DiskVolume> VolumeAsync(AgentHost agent, string name)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            var v = agent.Core.FindVolume(name);
            if (v != null) return v;
            if (deadline.Elapsed > TimeSpan.FromSeconds(30)) throw new TimeoutException($"no table for {name}");
            await Task.Delay(1);
        }
    }

    /// <summary>Connects as soon as the agent exports the disk (its table arrives after registration).</summary>
    private static async Task<NbdClient> ConnectWhenExportedAsync(IPEndPoint endPoint, string export)
    {
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return await NbdClient.ConnectTcpAsync(endPoint.Address.ToString(), endPoint.Port, export);
            }
            catch (Exception e) when (e is NbdClientException or IOException or System.Net.Sockets.SocketException)
            {
                if (deadline.Elapsed > TimeSpan.FromSeconds(30)) throw;
                await Task.Delay(1);
            }
        }
    }

    private static void ReportCpu(string what, TimeSpan cpuBefore, int count, string unit)
    {
        double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpuBefore).TotalMicroseconds / Math.Max(1, count);
        Console.WriteLine($"  (process CPU per {what}, controller and agent together: {cpu:F1} {unit})");
    }

    private static void Report(string what, List<double> samples, string unit = "µs")
    {
        if (samples.Count == 0) { Console.WriteLine($"{what}: no samples"); return; }
        samples.Sort();
        double P(double q) => samples[Math.Min(samples.Count - 1, (int)Math.Ceiling(q * samples.Count) - 1)];
        Console.WriteLine($"{what}: n={samples.Count} p50={P(0.5):F1} {unit} p99={P(0.99):F1} {unit} max={samples[^1]:F1} {unit}");
    }
}
