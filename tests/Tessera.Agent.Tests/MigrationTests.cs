using System.Buffers.Binary;
using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using Tessera.Core.Protocol;
using Tessera.Nbd;
using Xunit;
using Xunit.Abstractions;

namespace Tessera.Agent.Tests;

/// <summary>
/// Keeps writing self-describing 4 KiB blocks (disk tag, offset, generation) to a set of blocks, one write at a time
/// per block, and records the last acknowledged generation of each block: the reference model.
/// </summary>
internal sealed class BlockWriter
{
    public const int Block = 4096;
    private readonly NbdClient _nbd;
    private readonly long[] _blocks;
    private readonly int _tag;
    private readonly Random _random;
    public readonly Dictionary<long, int> Acked = new();
    public long Writes;
    public string? Error;
    private readonly CancellationTokenSource _stop = new();
    private Task? _task;

    /// <summary>What a block holds before this writer's first write to it (default: zeros).</summary>
    public Func<long, byte[]> Initial { get; init; } = _ => new byte[Block];

    public BlockWriter(NbdClient nbd, IEnumerable<long> blocks, int tag, int seed)
    {
        _nbd = nbd;
        _blocks = blocks.ToArray();
        _tag = tag;
        _random = new Random(seed);
    }

    public static byte[] Data(int tag, long block, int generation)
    {
        var data = new byte[Block];
        for (int i = 0; i < Block; i += 16)
        {
            BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(i), tag);
            BinaryPrimitives.WriteInt64LittleEndian(data.AsSpan(i + 4), block * Block);
            BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(i + 12), generation);
        }
        return data;
    }

    public void Start() => _task = Task.Run(async () =>
    {
        int generation = 0;
        while (!_stop.IsCancellationRequested)
        {
            long block = _blocks[_random.Next(_blocks.Length)];
            generation++;
            uint status = await _nbd.WriteAsync(block * Block, Data(_tag, block, generation));
            if (status != 0)
            {
                Error = $"write of block {block} failed with errno {status}";
                return;
            }
            lock (Acked) Acked[block] = generation;
            Interlocked.Increment(ref Writes);
        }
    });

    public async Task StopAsync()
    {
        _stop.Cancel();
        await _task!.WaitAsync(Cluster.Timeout);
        Assert.Null(Error);
    }

    /// <summary>Every block of the set reads as its last acknowledged write (zeros when never written).</summary>
    public async Task VerifyAsync(NbdClient reader)
    {
        var back = new byte[Block];
        int bad = 0;
        string first = "";
        foreach (var block in _blocks)
        {
            Assert.Equal(0u, await reader.ReadAsync(block * Block, back));
            var expected = Acked.TryGetValue(block, out int g) ? Data(_tag, block, g) : Initial(block);
            if (!back.AsSpan().SequenceEqual(expected))
            {
                if (bad++ == 0) first = $"block {block}: expected generation {g}, read tag {BinaryPrimitives.ReadInt32LittleEndian(back)} generation {BinaryPrimitives.ReadInt32LittleEndian(back.AsSpan(12))}";
            }
        }
        Assert.True(bad == 0, $"{bad} blocks differ from the last acknowledged write; first: {first}");
    }
}

public class MigrationTests(ITestOutputHelper output)
{
    private const int Seg = 256 << 10;
    private const long DiskSize = 32 << 20;

    private static Operations.OperationsClient Ops(Cluster c, out GrpcChannel channel)
    {
        channel = GrpcChannel.ForAddress(c.Controller.Url);
        return new Operations.OperationsClient(channel);
    }

    private static async Task<ContainerView> Container(Cluster c, string name) =>
        (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single(x => x.Name == name);

    private static async Task<JobView> WaitJobAsync(Operations.OperationsClient ops, ulong id, Func<JobView, bool>? until = null, TimeSpan? timeout = null)
    {
        until ??= j => j.State != "running";
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        using var call = ops.WatchJob(new JobRef { Id = id }, deadline: deadline);
        JobView? last = null;
        await foreach (var view in call.ResponseStream.ReadAllAsync())
        {
            last = view;
            if (until(view)) return view;
        }
        throw new TimeoutException($"job {id} ended the watch in state {last?.State} without reaching the condition");
    }

    private void Report(string what, JobView job) =>
        output.WriteLine($"{what}: {job.MovedSegments} segments ({job.MovedBytes} bytes) in {job.ElapsedSeconds:F2} s = {job.BytesPerSecond / (1 << 20):F1} MiB/s; " +
            $"per-segment pause p50 {job.PauseP50Ms:F2} ms, p99 {job.PauseP99Ms:F2} ms, max {job.PauseMaxMs:F2} ms ({job.PauseSamples} samples); {job.Message}");

    /// <summary>What <see cref="FilledDiskAsync"/> leaves in a block: the fill pattern in each segment's first block, zeros elsewhere.</summary>
    private static byte[] Filled(long block) => block % (Seg / BlockWriter.Block) == 0 ? BlockWriter.Data(99, block, 0) : new byte[BlockWriter.Block];

    /// <summary>Creates a disk on pool0 only and fills every segment, so it all has to move.</summary>
    private static async Task<(AgentHost Agent, NbdClient Nbd)> FilledDiskAsync(Cluster c, string disk, params string[] hosts)
    {
        await c.CreateDiskAsync(disk, DiskSize, Seg, hosts);
        var agent = await c.StartAgentAsync(hosts[0]);
        var nbd = await Cluster.OpenAsync(agent, disk);
        for (long off = 0; off < DiskSize; off += Seg)
            Assert.Equal(0u, await nbd.WriteAsync(off, BlockWriter.Data(99, off / BlockWriter.Block, 0)));
        return (agent, nbd);
    }

    private async Task MigrateUnderLoadAsync(Cluster c, Func<Task<string>> addTarget)
    {
        var (_, nbd) = await FilledDiskAsync(c, "d1", "h1");
        await using var _ = nbd;
        string targetName = await addTarget(); // after the fill, so every segment is on pool0 and has to move
        // Blocks 1..: block 0 of each segment keeps the fill pattern, as a check of the copy itself.
        var blocks = Enumerable.Range(0, (int)(DiskSize / BlockWriter.Block)).Select(b => (long)b).Where(b => b % (Seg / BlockWriter.Block) != 0).ToArray();
        var writer = new BlockWriter(nbd, blocks, 1, 42);
        writer.Start();
        var ops = Ops(c, out var channel);
        using var __ = channel;
        while (Interlocked.Read(ref writer.Writes) < 200) await Task.Delay(5);
        long before = Interlocked.Read(ref writer.Writes);
        var job = await ops.MigrateDiskAsync(new MigrateDiskRequest { Disk = "d1", To = targetName });
        var done = await WaitJobAsync(ops, job.Id);
        long during = Interlocked.Read(ref writer.Writes) - before;
        await writer.StopAsync();
        Assert.Equal("done", done.State);
        Assert.Equal((ulong)(DiskSize / Seg), done.MovedSegments);
        Assert.True(during > 0, "no write was acknowledged while the disk migrated");
        Report($"migrate to {targetName} under load ({during} writes during the job)", done);

        await writer.VerifyAsync(nbd);
        var fill = new byte[BlockWriter.Block];
        for (long off = 0; off < DiskSize; off += Seg)
        {
            Assert.Equal(0u, await nbd.ReadAsync(off, fill));
            Assert.Equal(BlockWriter.Data(99, off / BlockWriter.Block, 0), fill);
        }
        Assert.Equal(0ul, (await Container(c, "pool0")).UsedBytes);
        var locations = await ops.GetDiskLocationsAsync(new DiskRef { Name = "d1" });
        Assert.Equal(targetName, locations.Containers.Single().Container);
    }

    /// <summary>Moves disk d1 (all of it on pool0) to pool1 and back, each move complete; reports how far <paramref name="progress"/> got meanwhile.</summary>
    private async Task MoveThereAndBackAsync(Cluster c, string load, Func<long> progress)
    {
        var ops = Ops(c, out var channel);
        using var _ = channel;
        foreach (var target in new[] { "pool1", "pool0" })
        {
            long before = progress();
            var job = await ops.MigrateDiskAsync(new MigrateDiskRequest { Disk = "d1", To = target });
            var done = await WaitJobAsync(ops, job.Id);
            Assert.Equal("done", done.State);
            Assert.Equal((ulong)(DiskSize / Seg), done.MovedSegments);
            Report($"migrate to {target} under {load} ({progress() - before} requests during the job)", done);
        }
    }

    /// <summary>Each 8-byte word of disk d1 in the large-read test: its own offset, scrambled.</summary>
    private static ulong WordAt(long offset) => (ulong)offset * 0x9E3779B97F4A7C15UL ^ 0xD1;

    // Proves large reads, which are sent from the containers' file mappings (DiskVolume.MappedReads.cs), return the
    // disk's own bytes, never a failure, while every segment moves to another container and back: each read resolves
    // its ranges when its reply is due, against whichever container the segment is on then. (That the disk's gate is
    // held until the bytes are in the socket is MappedReadTests' to prove: freed units are zeroed only when reused, so
    // this run could not tell.)
    [Fact]
    public async Task Migrate_disk_there_and_back_under_large_reads()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("d1", DiskSize, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d1");
        var image = new byte[DiskSize];
        for (int i = 0; i < image.Length; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(i), WordAt(i));
        for (int off = 0; off < image.Length; off += 1 << 20) Assert.Equal(0u, await nbd.WriteAsync(off, image.AsMemory(off, 1 << 20)));
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool1", Uri = "file://" + Path.Combine(c.Dir, "pool1.img"), SizeBytes = 256 << 20 });
        var volume = agent.Core.FindVolume("d1")!;
        long mappedBefore = volume.MappedReadsBegun;

        using var stop = new CancellationTokenSource();
        long reads = 0;
        string? mismatch = null;
        async Task ReadLoopAsync(int seed)
        {
            await using var reader = await Cluster.OpenAsync(agent, "d1");
            var random = new Random(seed);
            var buffer = new byte[1 << 20];
            while (!stop.IsCancellationRequested && mismatch is null)
            {
                int length = (64 << 10) << random.Next(5); // 64 KiB .. 1 MiB: above the mapped-read threshold
                long offset = random.NextInt64((DiskSize - length) / 4096 + 1) * 4096 + (random.Next(2) == 0 ? 0 : 8);
                if (offset + length > DiskSize) offset -= 8;
                uint status = await reader.ReadAsync(offset, buffer.AsMemory(0, length));
                if (status != 0) { mismatch = $"read at {offset} (+{length}) failed with errno {status}"; break; }
                if (!buffer.AsSpan(0, length).SequenceEqual(image.AsSpan((int)offset, length)))
                {
                    int at = 0;
                    while (buffer[at] == image[offset + at]) at++;
                    mismatch = $"read at {offset} (+{length}) differs from byte {offset + at} on: word {BinaryPrimitives.ReadUInt64LittleEndian(buffer.AsSpan(at & ~7)):x16}";
                }
                Interlocked.Increment(ref reads);
            }
        }
        var readers = new[] { Task.Run(() => ReadLoopAsync(1)), Task.Run(() => ReadLoopAsync(2)) };
        while (Interlocked.Read(ref reads) < 20 && mismatch is null) await Task.Delay(5);
        await MoveThereAndBackAsync(c, "large reads", () => Interlocked.Read(ref reads));
        stop.Cancel();
        await Task.WhenAll(readers).WaitAsync(Cluster.Timeout);
        Assert.Null(mismatch);
        Assert.True(volume.MappedReadsBegun - mappedBefore > 0, "no read was sent from a file mapping");
        Assert.Equal(0ul, (await Container(c, "pool1")).UsedBytes);
        var back = new byte[1 << 20];
        for (int off = 0; off < image.Length; off += back.Length)
        {
            Assert.Equal(0u, await nbd.ReadAsync(off, back));
            Assert.True(back.AsSpan().SequenceEqual(image.AsSpan(off, back.Length)), $"after the moves, the MiB at {off} differs");
        }
    }

    // Proves large writes, which are spliced from the socket into the containers' files (DiskVolume.SplicedWrites.cs),
    // are never lost while every segment moves to another container and back: each 4 KiB block ends holding the
    // generation of the last acknowledged write to it, whether the write met the segment before, during (NoWrite: the
    // write faults and takes the buffered path) or after its move. (That the disk's gate is held until the pipe is in
    // the files is SplicedWriteTests' to prove: with one writer the window is too narrow for this run to show.)
    [Fact]
    public async Task Migrate_disk_there_and_back_under_large_writes()
    {
        await using var c = await Cluster.StartAsync();
        var (agent, nbd) = await FilledDiskAsync(c, "d1", "h1");
        await using var _ = nbd;
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool1", Uri = "file://" + Path.Combine(c.Dir, "pool1.img"), SizeBytes = 256 << 20 });
        var volume = agent.Core.FindVolume("d1")!;
        long splicedBefore = volume.SplicedWritesBegun;
        const int Block = BlockWriter.Block;
        var acked = new int[DiskSize / Block]; // the reference model: last acknowledged generation per block (0: the fill)

        using var stop = new CancellationTokenSource();
        long writes = 0;
        string? failure = null;
        var writer = Task.Run(async () =>
        {
            var random = new Random(7);
            int generation = 0;
            while (!stop.IsCancellationRequested)
            {
                int blocks = (128 << 10) / Block << random.Next(4); // 128 KiB .. 1 MiB: above the spliced-write threshold
                long first = random.NextInt64(DiskSize / Block - blocks + 1);
                generation++;
                var data = new byte[blocks * Block];
                for (int b = 0; b < blocks; b++) BlockWriter.Data(3, first + b, generation).CopyTo(data, b * Block);
                uint status = await nbd.WriteAsync(first * Block, data);
                if (status != 0) { failure = $"write at block {first} failed with errno {status}"; return; }
                for (int b = 0; b < blocks; b++) acked[first + b] = generation;
                Interlocked.Increment(ref writes);
            }
        });
        while (Interlocked.Read(ref writes) < 20 && failure is null) await Task.Delay(5);
        await MoveThereAndBackAsync(c, "large writes", () => Interlocked.Read(ref writes));
        stop.Cancel();
        await writer.WaitAsync(Cluster.Timeout);
        Assert.Null(failure);
        Assert.True(volume.SplicedWritesBegun - splicedBefore > 0, "no write was spliced into a container file");

        int bad = 0;
        string? first = null;
        var back = new byte[Block];
        for (long block = 0; block < acked.Length; block++)
        {
            Assert.Equal(0u, await nbd.ReadAsync(block * Block, back));
            var expected = acked[block] == 0 ? Filled(block) : BlockWriter.Data(3, block, acked[block]);
            if (!back.AsSpan().SequenceEqual(expected) && bad++ == 0)
                first = $"block {block}: expected generation {acked[block]}, read generation {BinaryPrimitives.ReadInt32LittleEndian(back.AsSpan(12))}";
        }
        Assert.True(bad == 0, $"{bad} blocks differ from the last acknowledged write; first: {first}");
    }

    // Proves a disk migrates from one file container to another while a host writes: every block equals the last acknowledged write and the source ends empty.
    [Fact]
    public async Task Migrate_disk_between_file_containers_under_writes()
    {
        await using var c = await Cluster.StartAsync();
        await MigrateUnderLoadAsync(c, async () =>
        {
            await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool1", Uri = "file://" + Path.Combine(c.Dir, "pool1.img"), SizeBytes = 256 << 20 });
            return "pool1";
        });
    }

    // Proves a disk migrates from a file container to an nbd:// container served by qemu-nbd while a host writes, without losing an acknowledged write.
    [Fact]
    public async Task Migrate_disk_to_nbd_container_under_writes()
    {
        await using var c = await Cluster.StartAsync();
        string backing = Path.Combine(c.Dir, "remote.img");
        using (var f = File.Create(backing)) f.SetLength(128 << 20);
        await using var qemu = await ExternalServer.StartAsync("qemu-nbd", port => $"-f raw -x pool -b 127.0.0.1 -p {port} --persistent --shared=8 -t {backing}");
        await MigrateUnderLoadAsync(c, async () =>
        {
            await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "remote", Uri = $"nbd://127.0.0.1:{qemu.Port}/pool" });
            return "remote";
        });
    }

    // Proves evacuating a container under writes from two hosts sharing the disk keeps every acknowledged write of both, leaves the container empty, and only then lets it be removed.
    [Fact]
    public async Task Evacuate_container_under_writes_from_two_hosts_then_remove_it()
    {
        await using var c = await Cluster.StartAsync();
        var (_, n1) = await FilledDiskAsync(c, "shared", "h1", "h2");
        await using var n1Scope = n1;
        var a2 = await c.StartAgentAsync("h2");
        await using var n2 = await Cluster.OpenAsync(a2, "shared");
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool1", Uri = "file://" + Path.Combine(c.Dir, "pool1.img"), SizeBytes = 128 << 20 });
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool2", Uri = "file://" + Path.Combine(c.Dir, "pool2.img"), SizeBytes = 128 << 20 });
        var ops = Ops(c, out var channel);
        using var __ = channel;

        var refused = await Assert.ThrowsAsync<RpcException>(async () => await ops.RemoveContainerAsync(new ContainerRef { Name = "pool0" }));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);

        long blocks = DiskSize / BlockWriter.Block;
        var w1 = new BlockWriter(n1, Enumerable.Range(0, (int)blocks).Select(b => (long)b).Where(b => b % 2 == 0), 1, 1) { Initial = Filled };
        var w2 = new BlockWriter(n2, Enumerable.Range(0, (int)blocks).Select(b => (long)b).Where(b => b % 2 == 1), 2, 2) { Initial = Filled };
        w1.Start();
        w2.Start();
        while (Interlocked.Read(ref w1.Writes) < 100 || Interlocked.Read(ref w2.Writes) < 100) await Task.Delay(5);
        long before = w1.Writes + w2.Writes;
        var job = await ops.EvacuateContainerAsync(new EvacuateRequest { Container = "pool0" });
        var done = await WaitJobAsync(ops, job.Id);
        long during = Interlocked.Read(ref w1.Writes) + Interlocked.Read(ref w2.Writes) - before;
        await w1.StopAsync();
        await w2.StopAsync();
        Assert.Equal("done", done.State);
        Assert.True(during > 0);
        Report($"evacuate pool0 under writes from two hosts ({during} writes during the job)", done);

        // Each host sees both hosts' acknowledged writes.
        await w1.VerifyAsync(n2);
        await w2.VerifyAsync(n1);
        await w1.VerifyAsync(n1);
        await w2.VerifyAsync(n2);
        Assert.Equal(0ul, (await Container(c, "pool0")).UsedBytes);
        var locations = await ops.GetDiskLocationsAsync(new DiskRef { Name = "shared" });
        Assert.DoesNotContain(locations.Containers, l => l.Container == "pool0");
        await ops.RemoveContainerAsync(new ContainerRef { Name = "pool0" });
        Assert.DoesNotContain((await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers, x => x.Name == "pool0");
    }

    // Proves a migration interrupted by a controller stop resumes after the controller starts again on the same data dir, completes, and loses no acknowledged write.
    [Fact]
    public async Task Controller_restart_in_the_middle_of_a_migration_completes_it()
    {
        await using var c = await Cluster.StartAsync(leaseMs: 3000);
        var (_, nbd) = await FilledDiskAsync(c, "d1", "h1");
        await using var _ = nbd;
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool1", Uri = "file://" + Path.Combine(c.Dir, "pool1.img"), SizeBytes = 256 << 20 });
        var writer = new BlockWriter(nbd, Enumerable.Range(0, (int)(DiskSize / BlockWriter.Block)).Select(b => (long)b), 1, 7) { Initial = Filled };
        writer.Start();
        var ops = Ops(c, out var channel);
        var job = await ops.MigrateDiskAsync(new MigrateDiskRequest { Disk = "d1", To = "pool1" });
        var mid = await WaitJobAsync(ops, job.Id, j => j.MovedSegments >= 8 || j.State != "running");
        Assert.Equal("running", mid.State);
        await c.StopControllerAsync();
        channel.Dispose();
        long writesWhileDown = Interlocked.Read(ref writer.Writes);

        await c.StartControllerAsync();
        ops = Ops(c, out channel);
        using var __ = channel;
        var done = await WaitJobAsync(ops, job.Id);
        Assert.True(Interlocked.Read(ref writer.Writes) > writesWhileDown, "the writer made no progress after the restart");
        await writer.StopAsync();
        Assert.Equal("done", done.State);
        Assert.Equal((ulong)(DiskSize / Seg), done.MovedSegments);
        Report("migration resumed after a controller restart", done);
        await writer.VerifyAsync(nbd);
        Assert.Equal(0ul, (await Container(c, "pool0")).UsedBytes);
    }

    // Proves a container that fails (its NBD server dies) is marked failed with a reason after an agent reports I/O errors, hosts get EIO only on its segments, and other segments keep working.
    [Fact]
    public async Task Failed_container_gives_EIO_only_for_its_segments()
    {
        await using var c = await Cluster.StartAsync();
        string backing = Path.Combine(c.Dir, "remote.img");
        using (var f = File.Create(backing)) f.SetLength(256 << 20);
        var qemu = await ExternalServer.StartAsync("qemu-nbd", port => $"-f raw -x pool -b 127.0.0.1 -p {port} --persistent --shared=8 -t {backing}");
        bool killed = false;
        try
        {
            await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "remote", Uri = $"nbd://127.0.0.1:{qemu.Port}/pool" });
            await c.CreateDiskAsync("d1", DiskSize, Seg, "h1");
            var agent = await c.StartAgentAsync("h1");
            await using var nbd = await Cluster.OpenAsync(agent, "d1");
            for (long off = 0; off < DiskSize; off += Seg)
                Assert.Equal(0u, await nbd.WriteAsync(off, BlockWriter.Data(5, off / BlockWriter.Block, 1), fua: true));
            var map = await c.Admin.GetDiskMapAsync(new DiskRef { Name = "d1" });
            var remoteSegments = map.Ranges.Where(r => r.Container == "remote").SelectMany(r => Enumerable.Range((int)r.FirstSegment, (int)r.Count)).ToList();
            var localSegments = map.Ranges.Where(r => r.Container == "pool0").SelectMany(r => Enumerable.Range((int)r.FirstSegment, (int)r.Count)).ToList();
            Assert.NotEmpty(remoteSegments);
            Assert.NotEmpty(localSegments);

            await qemu.DisposeAsync(); // the remote container dies
            killed = true;
            var buf = new byte[BlockWriter.Block];
            // I/O on its segments fails; the agent reports it; the controller probes and marks the container failed.
            var deadline = DateTime.UtcNow + Cluster.Timeout;
            ContainerView remote;
            while ((remote = await Container(c, "remote")).Health != "failed")
            {
                Assert.True(DateTime.UtcNow < deadline, "the container was never marked failed");
                Assert.Equal(5u /* EIO */, await nbd.ReadAsync((long)remoteSegments[0] * Seg, buf));
                await Task.Delay(20);
            }
            output.WriteLine($"remote: {remote.Health}: {remote.FailureReason}");
            Assert.Contains("I/O errors", remote.FailureReason);

            foreach (var s in remoteSegments)
            {
                Assert.Equal(5u, await nbd.ReadAsync((long)s * Seg, buf));
                Assert.Equal(5u, await nbd.WriteAsync((long)s * Seg, BlockWriter.Data(5, s, 2)));
            }
            foreach (var s in localSegments)
            {
                Assert.Equal(0u, await nbd.ReadAsync((long)s * Seg, buf));
                Assert.Equal(BlockWriter.Data(5, (long)s * Seg / BlockWriter.Block, 1), buf);
                Assert.Equal(0u, await nbd.WriteAsync((long)s * Seg + BlockWriter.Block, BlockWriter.Data(5, s, 3)));
            }
            // The store says Error for every remote segment (so a restarted agent gets Error too).
            map = await c.Admin.GetDiskMapAsync(new DiskRef { Name = "d1" });
            Assert.All(map.Ranges.Where(r => r.Container == "remote"), r => Assert.Equal("error", r.State));
            var ops = Ops(c, out var channel);
            using var ____ = channel;
            var locations = await ops.GetDiskLocationsAsync(new DiskRef { Name = "d1" });
            Assert.Equal((ulong)remoteSegments.Count, locations.Containers.Single(l => l.Container == "remote").ErrorSegments);
            // Repair is refused while the probe still fails.
            var refused = await Assert.ThrowsAsync<RpcException>(async () => await ops.RepairContainerAsync(new ContainerRef { Name = "remote" }));
            Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        }
        finally
        {
            if (!killed) await qemu.DisposeAsync();
        }
    }
    // Proves a move that a stopped controller had persisted but not pushed is rolled forward at the next start: the old units stay reserved until the blocking push, then are freed, and the job completes with the data intact.
    [Fact]
    public async Task Persisted_half_move_is_rolled_forward_after_restart()
    {
        await using var c = await Cluster.StartAsync(leaseMs: 2000);
        await c.CreateDiskAsync("d1", 4 << 20, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using (var nbd = await Cluster.OpenAsync(agent, "d1"))
        {
            for (long off = 0; off < 4 << 20; off += BlockWriter.Block)
                Assert.Equal(0u, await nbd.WriteAsync(off, BlockWriter.Data(3, off / BlockWriter.Block, 1)));
            Assert.Equal(0u, await nbd.FlushAsync());
        }
        string pool1 = Path.Combine(c.Dir, "pool1.img");
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool1", Uri = "file://" + pool1, SizeBytes = 64 << 20 });
        await agent.StopAsync();
        await c.StopControllerAsync();

        // What a controller that died between steps 4 and 5 leaves behind: segment 3 mapped at pool1 unit 0 (bytes copied
        // and flushed), the cursor "persisted", the old units on pool0 free as far as the map can tell.
        using (var store = Tessera.Controller.Store.ControllerStore.Open(Path.Combine(c.Dir, "controller")))
        {
            var disk = store.GetDisk("d1")!;
            var old = store.GetEntry(disk.Id, 3);
            var bytes = new byte[Seg];
            using (var src = new FileStream(Path.Combine(c.Dir, "pool0.img"), FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
            {
                src.Position = old.ContainerOffset;
                src.ReadExactly(bytes);
            }
            using (var dst = new FileStream(pool1, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            {
                dst.Write(bytes);
                dst.Flush(flushToDisk: true);
            }
            var job = store.AddMigrationJob(Tessera.Controller.Store.MigrationJobRow.KindDisk, disk.Id, 0, 2, 16, DateTime.UtcNow.ToString("O"));
            store.SetJobCursor(job.Id, disk.Id, 3, old, 2, 0);
            store.RelocateSegment(job.Id, old.ContainerId, old.PhysicalIndex, 2, 0);
        }

        await c.StartControllerAsync();
        var restarted = await c.StartAgentAsync("h1");
        var ops = Ops(c, out var channel);
        using var _ = channel;
        var done = await WaitJobAsync(ops, 1);
        Assert.Equal("done", done.State);
        Assert.Equal(16ul, done.MovedSegments);
        Assert.Equal(0ul, (await Container(c, "pool0")).UsedBytes);
        Assert.Equal((ulong)(4 << 20), (await Container(c, "pool1")).UsedBytes);
        await using var again = await Cluster.OpenAsync(restarted, "d1");
        var back = new byte[BlockWriter.Block];
        for (long off = 0; off < 4 << 20; off += BlockWriter.Block)
        {
            Assert.Equal(0u, await again.ReadAsync(off, back));
            Assert.Equal(BlockWriter.Data(3, off / BlockWriter.Block, 1), back);
        }
    }
    // Proves an operator can fail a container (EIO on its segments at once, pushed with the blocking flag) and repair it after a successful probe: its Error segments stay Error, new segments may land on it again.
    [Fact]
    public async Task Operator_fail_and_repair_a_container()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("d1", 4 << 20, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d1");
        Assert.Equal(0u, await nbd.WriteAsync(0, BlockWriter.Data(4, 0, 1)));
        var ops = Ops(c, out var channel);
        using var _ = channel;
        var failed = await ops.FailContainerAsync(new FailContainerRequest { Name = "pool0", Reason = "disk replaced" });
        Assert.Equal("failed", failed.Health);
        Assert.Equal("disk replaced", failed.FailureReason);
        var buf = new byte[BlockWriter.Block];
        Assert.Equal(5u, await nbd.ReadAsync(0, buf)); // the push was blocking: no fault needed to see it
        // Only moves toward worse: failing again keeps the first reason.
        Assert.Equal("disk replaced", (await ops.FailContainerAsync(new FailContainerRequest { Name = "pool0", Reason = "other" })).FailureReason);
        // No healthy container: a first write to a thin segment gets ENOSPC, not a segment on the failed container.
        Assert.Equal(28u, await nbd.WriteAsync(2 * Seg, BlockWriter.Data(4, 2 * Seg / BlockWriter.Block, 1)));

        var repaired = await ops.RepairContainerAsync(new ContainerRef { Name = "pool0" });
        Assert.Equal("ok", repaired.Health);
        Assert.Equal(5u, await nbd.ReadAsync(0, buf));
        Assert.Equal(0u, await nbd.WriteAsync(2 * Seg, BlockWriter.Data(4, 2 * Seg / BlockWriter.Block, 1)));
        Assert.Equal(0u, await nbd.ReadAsync(2 * Seg, buf));
        Assert.Equal(BlockWriter.Data(4, 2 * Seg / BlockWriter.Block, 1), buf);
        var locations = await ops.GetDiskLocationsAsync(new DiskRef { Name = "d1" });
        var pool0 = locations.Containers.Single();
        Assert.Equal((1ul, 1ul), (pool0.Segments, pool0.ErrorSegments));
    }
}
