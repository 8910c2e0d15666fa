using CsCheck;
using Grpc.Net.Client;
using Microsoft.Data.Sqlite;
using Tessera.Controller.Allocation;
using Tessera.Controller.Store;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>High-water marks: thin allocation skips zeroing only for units that never held data.</summary>
public class HighWaterTests
{
    private const int Mi = 1 << 20;
    private const int UnitsPerMi = Mi / MapEntry.PhysicalUnitBytes;

    // Proves the allocator hands out never-used units first, says so, and reports a freed unit's reuse as not never-used.
    [Fact]
    public void Never_used_units_go_first_and_reuse_is_reported()
    {
        var space = new ContainerSpace(16, highWaterUnit: 0);
        Assert.Equal(0, space.Allocate(4, out bool fresh));
        Assert.True(fresh);
        Assert.Equal(4, space.Allocate(4, out fresh));
        Assert.True(fresh);
        space.Free(0, 4);
        Assert.Equal(8, space.Allocate(4, out fresh)); // above the mark first, though unit 0 is free
        Assert.True(fresh);
        Assert.Equal(12, space.Allocate(4, out fresh));
        Assert.True(fresh);
        Assert.Equal(0, space.Allocate(4, out fresh)); // only the freed units are left
        Assert.False(fresh);
        Assert.Equal(16, space.HighWaterUnit);

        var unknown = new ContainerSpace(16); // a container with an unknown past: nothing is trusted
        Assert.Equal(0, unknown.Allocate(4, out fresh));
        Assert.False(fresh);
    }

    // Proves, against a model that remembers every unit ever handed out, that "never used" is never said of a unit
    // that was handed out before or lies below the starting mark, with mixed segment sizes, frees and rebuilds.
    [Fact]
    public void Never_used_is_never_said_of_a_used_unit()
    {
        var op = Gen.Select(Gen.Int[0, 4], Gen.Int[0, 1000], Gen.Int[0, 9], (sizeLog, pick, kind) => (Units: 1 << sizeLog, Pick: pick, Kind: kind));
        Gen.Select(Gen.Int[1, 200], Gen.Int[0, 200], op.Array[1, 150]).Sample(t =>
        {
            var (total, startMark, ops) = t;
            startMark = Math.Min(startMark, total);
            var space = new ContainerSpace(total, startMark);
            var everUsed = new bool[total];
            for (int u = 0; u < startMark; u++) everUsed[u] = true;
            var live = new List<(long First, int Units)>();
            foreach (var (units, pick, kind) in ops)
            {
                if (kind < 3 && live.Count > 0)
                {
                    var (first, n) = live[pick % live.Count];
                    live.Remove((first, n));
                    space.Free(first, n);
                    continue;
                }
                long got = space.Allocate(units, out bool fresh);
                if (got < 0) continue;
                for (long u = got; u < got + units; u++)
                {
                    if (fresh && everUsed[u]) throw new Exception($"unit {u} reported never used but it was used (start mark {startMark})");
                    everUsed[u] = true;
                }
                if (space.HighWaterUnit < got + units) throw new Exception("the mark does not cover a handed-out unit");
                live.Add((got, units));
            }
            for (long u = space.HighWaterUnit; u < total; u++)
                if (everUsed[u]) throw new Exception($"unit {u} above the mark {space.HighWaterUnit} was used");
        }, iter: 300);
    }

    // Proves rebuilding marks a mapped unit as used even above a (wrong) persisted mark, and a repair trusts nothing.
    [Fact]
    public void Rebuild_and_repair_only_raise_the_mark()
    {
        var pool = new SpacePool();
        pool.AddContainer(1, 64, highWaterUnit: 0);
        pool.MarkUsed(1, 16, 16);
        Assert.Equal(32, pool.HighWaterUnit(1));
        Assert.True(pool.TryAllocate(16, out _, out long first, out bool fresh));
        Assert.Equal(32, first);
        Assert.True(fresh);
        pool.ForgetNeverUsed(1);
        Assert.Equal(64, pool.HighWaterUnit(1));
        Assert.True(pool.TryAllocate(16, out _, out first, out fresh));
        Assert.False(fresh);
        pool.AddContainer(2, 64); // no mark given: unknown past
        Assert.Equal(64, pool.HighWaterUnit(2));
    }

    // Proves the mark is persisted with the mapping, only rises, goes with its container, and a v2 store upgrades to
    // "everything used" (it kept no record of which units were ever written).
    [Fact]
    public void Store_persists_marks_and_upgrades_v2_conservatively()
    {
        string dir = Path.Combine(Path.GetTempPath(), "tessera-hw-" + Guid.NewGuid().ToString("N"));
        try
        {
            ushort created, existing;
            using (var store = ControllerStore.Open(dir))
            {
                created = store.AddContainer("a", "file:///tmp/hw-a.img", 8L * Mi, highWaterUnit: 0)!.Id;
                existing = store.AddContainer("b", "file:///tmp/hw-b.img", 8L * Mi)!.Id;
                Assert.Equal(0, store.GetHighWater(created));
                Assert.Equal(8 * UnitsPerMi, store.GetHighWater(existing));
                var disk = store.CreateDisk("d", 4L * Mi, Mi, "now")!;
                store.SetEntriesAdvancingHighWater(disk.Id, [(0, MapEntry.Mapped(created, UnitsPerMi))], UnitsPerMi); // units 1..2 Mi
                store.AdvanceHighWater(created, UnitsPerMi); // lower: no change
            }
            using (var store = ControllerStore.Open(dir))
            {
                Assert.Equal(2 * UnitsPerMi, store.GetHighWater(created));
                Assert.Equal(MapEntry.Mapped(created, UnitsPerMi), store.GetEntry(1, 0));
                store.AdvanceHighWater(created, 3 * UnitsPerMi);
                Assert.True(store.RemoveContainer(existing));
                // The id is reused by a container with an unknown past: the old row must not vouch for it.
                var again = store.AddContainer("c", "file:///tmp/hw-c.img", 4L * Mi)!;
                Assert.Equal(existing, again.Id);
                Assert.Equal(4 * UnitsPerMi, store.GetHighWater(again.Id));
            }
            using (var store = ControllerStore.Open(dir))
                Assert.Equal(3 * UnitsPerMi, store.GetHighWater(created));

            // Make it a v2 store, as an older controller left it, and open it again.
            using (var db = new SqliteConnection($"Data Source={Path.Combine(dir, "tessera.db")};Pooling=False"))
            {
                db.Open();
                using var cmd = db.CreateCommand();
                cmd.CommandText = "DROP TABLE container_high_water; UPDATE meta SET value='2' WHERE key='schema_version';";
                cmd.ExecuteNonQuery();
            }
            using (var store = ControllerStore.Open(dir))
            {
                Assert.Equal(8 * UnitsPerMi, store.GetHighWater(created));
                Assert.Equal(4 * UnitsPerMi, store.GetHighWater(existing));
            }
        }
        finally
        {
            SqliteConnection.ClearAllPools();
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }

    private static MapEntry EntryOf(FaultResponse r, ulong segment) => new(r.Entries[(int)(segment - r.FirstSegment)]);

    private static void Fill(string path, long offset, int length, byte value)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        f.Position = offset;
        var bytes = new byte[length];
        Array.Fill(bytes, value);
        f.Write(bytes);
        f.Flush(flushToDisk: true);
    }

    private static byte[] Read(string path, long offset, int length)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        f.Position = offset;
        var bytes = new byte[length];
        f.ReadExactly(bytes);
        return bytes;
    }

    // Proves the copy-on-write safety rule: a crash after the copy reached its new units and before the mapping
    // committed must not leave those units "never used". Without persisting the mark before the copy, the new
    // controller hands the copied units to another disk unzeroed and that disk reads the first disk's bytes.
    [Fact]
    public async Task Crash_between_copy_on_write_and_commit_leaks_nothing()
    {
        await using var c = await TestCluster.StartAsync();
        string path = Path.Combine(c.Directory, "pool.img");
        var container = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool", Uri = "file://" + path, SizeBytes = 8 * Mi });
        var d = await c.CreatePresentedDiskAsync("d", 4 * Mi, "h1");
        var h1 = await c.ConnectAsync("h1");
        var first = EntryOf(await h1.FaultAndWaitAsync(d.Id, 0, write: true), 0);
        Assert.True(first.HasLocation);
        Fill(path, first.ContainerOffset, Mi, 0xD1); // the agent's write of disk d's data

        using var channel = GrpcChannel.ForAddress(c.Host.Url);
        await new Snapshots.SnapshotsClient(channel).CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "d", Name = "s" });
        var copied = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        c.Host.Core.Coordinator.AfterCopyForTest = async ct =>
        {
            copied.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct); // the process "dies" here: the mapping is never committed
        };
        await h1.FaultAsync(d.Id, 0, write: true); // a write to the shared segment: copy-on-write
        await copied.Task.WaitAsync(TestCluster.Timeout);
        Assert.True(c.Host.Core.Store.GetHighWater((ushort)container.Id) >= 2 * UnitsPerMi, "the copy's units are not under the persisted mark");
        await c.RestartAsync();

        var e = await c.CreatePresentedDiskAsync("e", 4 * Mi, "h2");
        var h2 = await c.ConnectAsync("h2");
        var fresh = EntryOf(await h2.FaultAndWaitAsync(e.Id, 0, write: true), 0);
        Assert.True(fresh.HasLocation);
        Assert.NotEqual(first.PhysicalIndex, fresh.PhysicalIndex);
        var bytes = Read(path, fresh.ContainerOffset, Mi);
        Assert.False(bytes.AsSpan().ContainsAnyExcept((byte)0), $"disk e's new segment at unit {fresh.PhysicalIndex} holds disk d's bytes");
    }

    // Proves migration follows the same rule: while the copy is on its target and the mapping is not yet persisted,
    // the persisted mark of the target container already covers the target units.
    [Fact]
    public async Task Migration_persists_the_mark_before_it_copies()
    {
        await using var c = await TestCluster.StartAsync();
        string pathA = Path.Combine(c.Directory, "a.img"), pathB = Path.Combine(c.Directory, "b.img");
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "a", Uri = "file://" + pathA, SizeBytes = 8 * Mi });
        var d = await c.CreatePresentedDiskAsync("d", 4 * Mi, "h1");
        var h1 = await c.ConnectAsync("h1");
        var first = EntryOf(await h1.FaultAndWaitAsync(d.Id, 0, write: true), 0);
        Fill(pathA, first.ContainerOffset, Mi, 0xD1);
        var b = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "b", Uri = "file://" + pathB, SizeBytes = 8 * Mi });
        Assert.Equal(0, c.Host.Core.Store.GetHighWater((ushort)b.Id));

        var copied = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        c.Host.Core.Coordinator.AfterCopyForTest = async ct =>
        {
            copied.TrySetResult(c.Host.Core.Store.GetHighWater((ushort)b.Id));
            await Task.Delay(Timeout.Infinite, ct);
        };
        using var channel = GrpcChannel.ForAddress(c.Host.Url);
        await new Tessera.Core.Protocol.Operations.OperationsClient(channel).MigrateDiskAsync(new MigrateDiskRequest { Disk = "d", To = "b" });
        long markDuringCopy = await copied.Task.WaitAsync(TestCluster.Timeout);
        Assert.True(Read(pathB, 0, Mi).AsSpan().ContainsAnyExcept((byte)0), "the copy did not reach b's first segment");
        Assert.True(markDuringCopy >= UnitsPerMi, $"b's persisted mark {markDuringCopy} does not cover the copy");
    }

    // Proves a repaired container is trusted no more: its units are zeroed on allocation as for an unknown container.
    [Fact]
    public async Task Repair_forgets_never_used_units()
    {
        await using var c = await TestCluster.StartAsync();
        string path = Path.Combine(c.Directory, "pool.img");
        var container = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool", Uri = "file://" + path, SizeBytes = 8 * Mi });
        using var channel = GrpcChannel.ForAddress(c.Host.Url);
        var ops = new Tessera.Core.Protocol.Operations.OperationsClient(channel);
        await ops.FailContainerAsync(new FailContainerRequest { Name = "pool", Reason = "test" });
        Fill(path, 4L * Mi, Mi, 0xEE); // whatever happened to it while it was failed
        await ops.RepairContainerAsync(new ContainerRef { Name = "pool" });
        Assert.Equal(8 * UnitsPerMi, c.Host.Core.Store.GetHighWater((ushort)container.Id));
        Assert.Equal(8 * UnitsPerMi, c.Host.Core.Pool.HighWaterUnit((ushort)container.Id));
        var d = await c.CreatePresentedDiskAsync("d", 8 * Mi, "h1");
        var h1 = await c.ConnectAsync("h1");
        for (ulong s = 0; s < 8; s++)
        {
            var entry = EntryOf(await h1.FaultAndWaitAsync(d.Id, s, write: true), s);
            Assert.True(entry.HasLocation);
            Assert.False(Read(path, entry.ContainerOffset, Mi).AsSpan().ContainsAnyExcept((byte)0), $"segment {s} was not zeroed");
        }
    }
}
