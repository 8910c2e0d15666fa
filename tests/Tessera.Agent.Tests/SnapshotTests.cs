using System.Buffers.Binary;
using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Tessera.Nbd;
using Xunit;
using Xunit.Abstractions;

namespace Tessera.Agent.Tests;

/// <summary>Snapshots, copy-on-write, clones and resize through a real controller, real agents and NBD.</summary>
public class SnapshotTests(ITestOutputHelper output)
{
    private const int Seg = 64 << 10;
    private const int Block = 4096;
    private const int EPERM = 1;

    /// <summary>A 4 KiB block that names its disk tag, offset and generation; generation 0 is "never written" (zeros).</summary>
    private static byte[] BlockFor(int tag, long offset, int generation)
    {
        var b = new byte[Block];
        for (int i = 0; i < Block; i += 16)
        {
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(i), tag);
            BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(i + 4), offset);
            BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(i + 12), generation);
        }
        return b;
    }

    /// <summary>The generation a block holds (0 for zeros); fails the test on a torn, misplaced or foreign block.</summary>
    private static int GenerationOf(ReadOnlySpan<byte> b, int tag, long offset)
    {
        if (!b.ContainsAnyExcept((byte)0)) return 0;
        int generation = BinaryPrimitives.ReadInt32LittleEndian(b[12..]);
        var expected = BlockFor(tag, offset, generation);
        Assert.True(b.SequenceEqual(expected), $"block at {offset} is torn or misplaced (tag {BinaryPrimitives.ReadInt32LittleEndian(b)}, offset {BinaryPrimitives.ReadInt64LittleEndian(b[4..])}, generation {generation})");
        return generation;
    }

    private static async Task<int[]> ReadGenerationsAsync(NbdClient nbd, int tag, int blocks)
    {
        var gens = new int[blocks];
        var buffer = new byte[Seg];
        for (long off = 0; off < (long)blocks * Block; off += Seg)
        {
            Assert.Equal(0u, await nbd.ReadAsync(off, buffer));
            for (int i = 0; i < Seg / Block; i++)
                gens[(off / Block) + i] = GenerationOf(buffer.AsSpan(i * Block, Block), tag, off + (long)i * Block);
        }
        return gens;
    }

    private static async Task<long> UsedBytesAsync(Cluster c) =>
        (long)(await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Sum(x => (long)x.UsedBytes);

    private static async Task WaitUntilAsync(Func<bool> condition, string what)
    {
        var deadline = Stopwatch.StartNew();
        while (!condition())
        {
            if (deadline.Elapsed > Cluster.Timeout) throw new TimeoutException(what);
            await Task.Delay(5);
        }
    }

    // Proves a snapshot taken while writers on two hosts run holds exactly the disk at the snapshot point (per block: the last write acknowledged before the command, or one concurrent with it), later writes do not leak into it, a clone diverges independently, and deleting the snapshot frees exactly its unshared space.
    [Fact]
    public async Task Snapshot_under_load_is_crash_consistent_and_clone_diverges()
    {
        await using var c = await Cluster.StartAsync();
        using var channel = GrpcChannel.ForAddress(c.Controller.Url);
        var snaps = new Snapshots.SnapshotsClient(channel);
        const int Tag = 7, Blocks = (4 << 20) / Block, Writers = 4;
        await c.CreateDiskAsync("d", Blocks * (long)Block, Seg, "h1", "h2");
        var agent = await c.StartAgentAsync("h1");
        var agent2 = await c.StartAgentAsync("h2"); // a shared disk: the snapshot must stop writes on both hosts

        var started = new int[Blocks];   // last generation whose write started, per block
        var acked = new int[Blocks];     // last generation acknowledged, per block
        long totalAcked = 0;
        using var stop = new CancellationTokenSource();
        var writers = new List<Task>();
        for (int w = 0; w < Writers; w++)
        {
            int writer = w;
            var nbd = await Cluster.OpenAsync(writer % 2 == 0 ? agent : agent2, "d");
            writers.Add(Task.Run(async () =>
            {
                await using var _ = nbd;
                var random = new Random(writer);
                while (!stop.IsCancellationRequested)
                {
                    // Each writer owns the blocks b with b % Writers == writer, so one block's writes never overlap.
                    int b = random.Next(Blocks / Writers) * Writers + writer;
                    int generation = started[b] + 1;
                    Volatile.Write(ref started[b], generation);
                    Assert.Equal(0u, await nbd.WriteAsync((long)b * Block, BlockFor(Tag, (long)b * Block, generation)));
                    Volatile.Write(ref acked[b], generation);
                    Interlocked.Increment(ref totalAcked);
                }
            }));
        }

        await WaitUntilAsync(() => Interlocked.Read(ref totalAcked) >= 2000 || writers.Any(t => t.IsCompleted), "writers made no progress before the snapshot");
        var lower = Enumerable.Range(0, Blocks).Select(b => Volatile.Read(ref acked[b])).ToArray();     // acknowledged before the command started
        var watch = Stopwatch.StartNew();
        var snapshot = await snaps.CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "d", Name = "s1" });
        watch.Stop();
        var upper = Enumerable.Range(0, Blocks).Select(b => Volatile.Read(ref started[b])).ToArray();   // started before the command answered
        output.WriteLine($"snapshot under load: {watch.Elapsed.TotalMilliseconds:0.0} ms round trip, {snapshot.CreationMicros / 1000.0:0.0} ms in the controller");
        // Read the snapshot while the writers go on: it must not change any more (checked against the read at the end).
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "d@s1", Host = "h1", ReadOnly = true });
        int[] early;
        await using (var sn = await Cluster.OpenAsync(agent, "d@s1"))
            early = await ReadGenerationsAsync(sn, Tag, Blocks);
        long atSnapshot = Interlocked.Read(ref totalAcked);
        await WaitUntilAsync(() => Interlocked.Read(ref totalAcked) >= atSnapshot + 2000 || writers.Any(t => t.IsCompleted), "writers made no progress after the snapshot");
        stop.Cancel();
        await Task.WhenAll(writers).WaitAsync(Cluster.Timeout);

        // The snapshot, presented read-only and read through NBD.
        await using (var sn = await Cluster.OpenAsync(agent, "d@s1"))
        {
            Assert.True(sn.ReadOnly);
            var gens = await ReadGenerationsAsync(sn, Tag, Blocks);
            Assert.Equal(early, gens);
            int concurrent = 0;
            for (int b = 0; b < Blocks; b++)
            {
                Assert.True(gens[b] >= lower[b] && gens[b] <= upper[b], $"snapshot block {b} holds generation {gens[b]}, outside [{lower[b]}, {upper[b]}]");
                if (gens[b] != lower[b]) concurrent++;
            }
            output.WriteLine($"{concurrent} blocks hold a write concurrent with the snapshot; {Blocks - concurrent} the last acknowledged before it");
            Assert.NotEqual(0u, await sn.WriteAsync(0, BlockFor(Tag, 0, 999)));
        }
        // The disk holds every acknowledged write (all writers finished, so started == acked).
        await using (var d = await Cluster.OpenAsync(agent, "d"))
            Assert.Equal(acked, await ReadGenerationsAsync(d, Tag, Blocks));
        Assert.True(acked.Zip(upper).Count(p => p.First > p.Second) > 0, "no write after the snapshot: the test proves nothing about leaks");

        // A clone starts equal to the snapshot and diverges independently of the disk and the snapshot.
        var snapGens = await ReadSnapshotAsync(c, agent, Tag, Blocks);
        await snaps.CloneDiskAsync(new CloneDiskRequest { Source = "d@s1", Name = "c1" });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "c1", Host = "h1" });
        await using (var clone = await Cluster.OpenAsync(agent, "c1"))
        {
            Assert.Equal(snapGens, await ReadGenerationsAsync(clone, Tag, Blocks));
            // Overwrite the first 8 segments of the clone (whole segments, so those become unique to it).
            for (long off = 0; off < 8L * Seg; off += Block)
                Assert.Equal(0u, await clone.WriteAsync(off, BlockFor(Tag, off, 100_000)));
            var cloneGens = await ReadGenerationsAsync(clone, Tag, Blocks);
            for (int b = 0; b < Blocks; b++)
                Assert.Equal(b < 8 * Seg / Block ? 100_000 : snapGens[b], cloneGens[b]);
        }
        await using (var d = await Cluster.OpenAsync(agent, "d"))
            Assert.Equal(acked, await ReadGenerationsAsync(d, Tag, Blocks));
        Assert.Equal(snapGens, await ReadSnapshotAsync(c, agent, Tag, Blocks));

        // Deleting the snapshot frees exactly the physical segments neither the disk nor the clone names.
        var maps = new Dictionary<string, DiskMapReply>();
        foreach (var name in new[] { "d", "c1", "d@s1" }) maps[name] = await c.Admin.GetDiskMapAsync(new DiskRef { Name = name });
        static IEnumerable<(uint, ulong)> Locations(DiskMapReply m) => m.Ranges.Where(r => r.ContainerId != 0)
            .SelectMany(r => Enumerable.Range(0, (int)r.Count).Select(i => (r.ContainerId, r.FirstPhysicalSegment + (ulong)i * (Seg / (64 << 10)))));
        var others = Locations(maps["d"]).Concat(Locations(maps["c1"])).ToHashSet();
        long expectedFreed = Locations(maps["d@s1"]).Count(l => !others.Contains(l)) * (long)Seg;
        var listed = (await snaps.ListSnapshotsAsync(new ListSnapshotsRequest { Disk = "d" })).Snapshots.Single();
        Assert.Equal((ulong)expectedFreed, listed.UniqueBytes);
        Assert.True(expectedFreed >= 8L * Seg, $"expected the 8 segments both sides overwrote to be unique to the snapshot, got {expectedFreed} bytes");

        await Assert.ThrowsAsync<RpcException>(async () => await snaps.DeleteSnapshotAsync(new SnapshotRef { Disk = "d", Name = "s1" })); // still presented
        await c.Admin.UnpresentDiskAsync(new UnpresentRequest { Disk = "d@s1", Host = "h1" });
        long before = await UsedBytesAsync(c);
        await snaps.DeleteSnapshotAsync(new SnapshotRef { Disk = "d", Name = "s1" });
        Assert.Equal(expectedFreed, before - await UsedBytesAsync(c));

        // A segment only the clone names now (the disk copied it, the snapshot is gone): its write just clears NoWrite.
        await using (var clone = await Cluster.OpenAsync(agent, "c1"))
        {
            Assert.Equal(0u, await clone.WriteAsync(9L * Seg, BlockFor(Tag, 9L * Seg, 100_001)));
            var buf = new byte[Block];
            Assert.Equal(0u, await clone.ReadAsync(9L * Seg, buf));
            Assert.Equal(100_001, GenerationOf(buf, Tag, 9L * Seg));
        }
        await using (var d = await Cluster.OpenAsync(agent, "d"))
            Assert.Equal(acked, await ReadGenerationsAsync(d, Tag, Blocks));
    }

    private static async Task<int[]> ReadSnapshotAsync(Cluster c, AgentHost agent, int tag, int blocks)
    {
        await using var sn = await Cluster.OpenAsync(agent, "d@s1");
        return await ReadGenerationsAsync(sn, tag, blocks);
    }

    // Proves snapshots survive a controller restart: the allocator is rebuilt from shared locations without double counting, and a write to a shared segment after the restart is copied while the snapshot keeps the old data.
    [Fact]
    public async Task Snapshot_survives_a_controller_restart_and_copy_on_write_goes_on()
    {
        await using var c = await Cluster.StartAsync();
        await c.CreateDiskAsync("p", 8L * Seg, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "p");
        for (int s = 0; s < 8; s++) Assert.Equal(0u, await nbd.WriteAsync((long)s * Seg, BlockFor(5, (long)s * Seg, 1)));
        using (var channel = GrpcChannel.ForAddress(c.Controller.Url))
            await new Snapshots.SnapshotsClient(channel).CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "p", Name = "s" });
        long used = await UsedBytesAsync(c);
        Assert.Equal(8L * Seg, used);

        await c.StopControllerAsync();
        await c.StartControllerAsync();
        Assert.Equal(used, await UsedBytesAsync(c));
        Assert.Equal(0u, await nbd.WriteAsync(2L * Seg, BlockFor(5, 2L * Seg, 2)).AsTask().WaitAsync(Cluster.Timeout));
        Assert.Equal(used + Seg, await UsedBytesAsync(c));

        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "p@s", Host = "h1", ReadOnly = true });
        await using var sn = await Cluster.OpenAsync(agent, "p@s");
        var buf = new byte[Block];
        Assert.Equal(0u, await sn.ReadAsync(2L * Seg, buf));
        Assert.Equal(1, GenerationOf(buf, 5, 2L * Seg));
        Assert.Equal(0u, await nbd.ReadAsync(2L * Seg, buf));
        Assert.Equal(2, GenerationOf(buf, 5, 2L * Seg));
    }

    // Proves resize: a grow is seen by a new connection with the new space reading zeros; a shrink over data is refused (FAILED_PRECONDITION) unless forced, and a forced shrink frees the tail.
    [Fact]
    public async Task Resize_grows_online_and_refuses_to_shrink_over_data_unless_forced()
    {
        await using var c = await Cluster.StartAsync();
        using var channel = GrpcChannel.ForAddress(c.Controller.Url);
        var snaps = new Snapshots.SnapshotsClient(channel);
        await c.CreateDiskAsync("r", 16L * Seg, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using (var nbd = await Cluster.OpenAsync(agent, "r"))
            Assert.Equal(0u, await nbd.WriteAsync(3L * Seg, BlockFor(1, 3L * Seg, 1)));

        await snaps.ResizeDiskAsync(new ResizeDiskRequest { Name = "r", SizeBytes = 32L * Seg });
        long usedBefore;
        await using (var nbd = await Cluster.OpenAsync(agent, "r"))
        {
            Assert.Equal(32L * Seg, nbd.SizeBytes);
            var buf = new byte[Block];
            Assert.Equal(0u, await nbd.ReadAsync(20L * Seg, buf));
            Assert.Equal(0, GenerationOf(buf, 1, 20L * Seg));
            Assert.Equal(0u, await nbd.WriteAsync(20L * Seg, BlockFor(1, 20L * Seg, 2)));
            Assert.Equal(0u, await nbd.ReadAsync(3L * Seg, buf));
            Assert.Equal(1, GenerationOf(buf, 1, 3L * Seg));
            usedBefore = await UsedBytesAsync(c);

            var refused = await Assert.ThrowsAsync<RpcException>(async () => await snaps.ResizeDiskAsync(new ResizeDiskRequest { Name = "r", SizeBytes = 16L * Seg }));
            Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
            Assert.DoesNotContain('\n', refused.Status.Detail);
            Assert.Equal(0u, await nbd.ReadAsync(20L * Seg, buf)); // nothing changed
            Assert.Equal(2, GenerationOf(buf, 1, 20L * Seg));

            await snaps.ResizeDiskAsync(new ResizeDiskRequest { Name = "r", SizeBytes = 16L * Seg, Force = true });
            Assert.NotEqual(0u, await nbd.ReadAsync(20L * Seg, buf)); // the old connection's table shrank too
        }
        Assert.Equal(usedBefore - Seg, await UsedBytesAsync(c));
        await using (var nbd = await Cluster.OpenAsync(agent, "r"))
            Assert.Equal(16L * Seg, nbd.SizeBytes);

        // Growing again exposes zeros, not the discarded data.
        await snaps.ResizeDiskAsync(new ResizeDiskRequest { Name = "r", SizeBytes = 32L * Seg });
        await using (var nbd = await Cluster.OpenAsync(agent, "r"))
        {
            var buf = new byte[Block];
            Assert.Equal(0u, await nbd.ReadAsync(20L * Seg, buf));
            Assert.Equal(0, GenerationOf(buf, 1, 20L * Seg));
        }
    }

    // Proves snapshot creation is metadata only: a 1 TiB thin disk in use by a host is snapshotted quickly, and the next write to a shared segment copies it while the snapshot keeps the old data.
    [Fact]
    public async Task Snapshot_of_a_1TiB_disk_is_metadata_only()
    {
        await using var c = await Cluster.StartAsync();
        using var channel = GrpcChannel.ForAddress(c.Controller.Url);
        var snaps = new Snapshots.SnapshotsClient(channel);
        const long TiB = 1L << 40;
        await c.CreateDiskAsync("big", TiB, 1 << 20, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "big");
        long[] offsets = [0, TiB / 2, TiB - Block];
        foreach (var off in offsets) Assert.Equal(0u, await nbd.WriteAsync(off, BlockFor(3, off, 1)));

        var times = new List<double>();
        for (int i = 0; i < 3; i++)
        {
            var watch = Stopwatch.StartNew();
            var s = await snaps.CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "big", Name = "s" + i });
            times.Add(watch.Elapsed.TotalMilliseconds);
            output.WriteLine($"1 TiB thin disk, snapshot {i}: {watch.Elapsed.TotalMilliseconds:0.0} ms round trip, {s.CreationMicros / 1000.0:0.0} ms in the controller");
        }
        Assert.True(times.Min() < 2000, $"snapshot of a 1 TiB thin disk took {times.Min():0} ms");

        long used = await UsedBytesAsync(c);
        foreach (var off in offsets) Assert.Equal(0u, await nbd.WriteAsync(off, BlockFor(3, off, 2)));
        Assert.Equal(used + 3 * (1L << 20), await UsedBytesAsync(c)); // one copy per written segment
        var buf = new byte[Block];
        foreach (var off in offsets)
        {
            Assert.Equal(0u, await nbd.ReadAsync(off, buf));
            Assert.Equal(2, GenerationOf(buf, 3, off));
        }
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "big@s2", Host = "h1", ReadOnly = true });
        await using var sn = await Cluster.OpenAsync(agent, "big@s2");
        foreach (var off in offsets)
        {
            Assert.Equal(0u, await sn.ReadAsync(off, buf));
            Assert.Equal(1, GenerationOf(buf, 3, off));
        }
        var refused = await Assert.ThrowsAsync<RpcException>(async () => await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "big@s1", Host = "h1" }));
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
    }

    // Proves a controller killed in the middle of a snapshot (agents still draining the blocking NoWrite) leaves no half
    // snapshot: after the restart the snapshot is rolled back, every acknowledged write is intact, the disk stays
    // writable, and a new snapshot works.
    [Fact]
    public async Task Controller_killed_mid_snapshot_rolls_back_cleanly()
    {
        var held = new MemoryContainer($"hold://{Guid.NewGuid():N}", 64 << 20);
        ContainerRegistry.RegisterScheme("hold", uri => uri == held.Uri ? held : throw new IOException($"no held container {uri}"));
        await using var c = await Cluster.StartAsync(addFilePool: false);
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "held", Uri = held.Uri });
        await c.CreateDiskAsync("k", 2 << 20, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "k");
        for (int s = 0; s < 4; s++) Assert.Equal(0u, await nbd.WriteAsync(s * Seg, Pattern.For(s * Seg, 4096, 1)));

        // An older write held in the container keeps the agent from answering the blocking NoWrite.
        held.HoldOperations();
        var inFlight = nbd.WriteAsync(Seg, Pattern.For(Seg, 4096, 2)).AsTask();
        using var channel = Grpc.Net.Client.GrpcChannel.ForAddress(c.Controller.Url);
        var snapshot = new Snapshots.SnapshotsClient(channel).CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "k", Name = "s" }).ResponseAsync;
        var volume = agent.Core.FindVolume("k")!;
        var deadline = DateTime.UtcNow + Cluster.Timeout;
        while ((volume.Table.Get(0).States & EntryStates.NoWrite) == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the snapshot's NoWrite never reached the agent");
            await Task.Delay(5);
        }
        Assert.False(snapshot.IsCompleted);

        await c.StopControllerAsync();
        await Assert.ThrowsAnyAsync<Exception>(() => snapshot); // the caller learns the snapshot did not happen
        held.ReleaseOperations();
        Assert.Equal(0u, await inFlight.WaitAsync(Cluster.Timeout));

        await c.StartControllerAsync();
        var snaps = new Snapshots.SnapshotsClient(Grpc.Net.Client.GrpcChannel.ForAddress(c.Controller.Url));
        Assert.Empty((await snaps.ListSnapshotsAsync(new ListSnapshotsRequest { Disk = "k" })).Snapshots);

        // Still writable (NoWrite is lifted without a copy: nothing else references the segments) and nothing lost.
        Assert.Equal(0u, await nbd.WriteAsync(2 * Seg, Pattern.For(2 * Seg, 4096, 3)));
        var back = new byte[4096];
        byte[] expected = [1, 2, 3, 1];
        for (int s = 0; s < 4; s++)
        {
            Assert.Equal(0u, await nbd.ReadAsync(s * Seg, back));
            Assert.Equal(Pattern.For(s * Seg, 4096, expected[s]), back);
        }
        var taken = await snaps.CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "k", Name = "s" });
        Assert.Equal("k@s", taken.Ref);
    }
}
