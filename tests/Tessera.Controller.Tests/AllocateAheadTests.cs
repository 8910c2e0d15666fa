using Tessera.Controller.Allocation;
using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>Sequential allocate-ahead (docs/architecture.md, "Sequential allocate-ahead").</summary>
public class AllocateAheadTests
{
    private const int Mi = 1 << 20;
    private const int UnitsPerSegment = Mi / MapEntry.PhysicalUnitBytes;

    private static async Task<(TestCluster C, DiskView Disk, FakeAgent H1)> StartAsync(long poolBytes, long diskBytes, int bound, bool freshPool = true)
    {
        var c = await TestCluster.StartAsync();
        if (freshPool)
            await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool", Uri = "file://" + Path.Combine(c.Directory, "pool.img"), SizeBytes = (ulong)poolBytes });
        else
            await c.AddGarbageContainerAsync("pool", poolBytes); // an existing file: every unit needs zeroing
        c.Host.Core.Coordinator.AllocateAheadSegments = bound;
        var d = await c.CreatePresentedDiskAsync("d", diskBytes, "h1");
        return (c, d, await c.ConnectAsync("h1"));
    }

    private static long MappedCount(FaultResponse r) => r.Entries.Count(e => new MapEntry(e).HasLocation);

    private static async Task<long> AllocatedAsync(TestCluster c) => (long)(await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments;

    // Proves a sequential writer's window opens only on the second fault, doubles per sequential fault up to the bound,
    // maps exactly the next segments (distinct, never-used locations), and that every segment it maps was pushed
    // Invalid to the faulting host before the answer, which carries them mapped.
    [Fact]
    public async Task Sequential_faults_grow_the_window_to_its_bound()
    {
        var (c, d, h1) = await StartAsync(512L * Mi, 128L * Mi, bound: 8);
        await using var _ = c;
        long next = 0;
        var expectedWindows = new[] { 0, 1, 2, 4, 8, 8, 8 };
        var locations = new HashSet<long>();
        foreach (int window in expectedWindows)
        {
            var (answer, pushed) = await h1.WriteFaultCollectingPushesAsync(d.Id, next);
            Assert.Equal(FaultOutcome.Retry, answer.Outcome);
            Assert.Equal(window, c.Host.Core.Coordinator.AllocateAheadWindow(d.Id));
            long end = next + 1 + window;
            Assert.Equal(end, MappedCount(answer)); // everything below end is mapped, nothing above it
            for (long s = 0; s < answer.Entries.Count; s++)
            {
                var e = new MapEntry(answer.Entries[(int)s]);
                Assert.Equal(s < end, e.HasLocation);
                if (s >= next && s < end)
                {
                    Assert.Contains(s, pushed);
                    Assert.True(locations.Add(e.PhysicalIndex), $"segment {s} got a location already handed out");
                }
            }
            Assert.Equal(end - next, pushed.Count);
            Assert.Equal(end, await AllocatedAsync(c));
            next = end;
        }
        // Every mapped unit is below the persisted high-water mark (the advance is in the mapping's transaction).
        var container = (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single();
        Assert.Equal(next * UnitsPerSegment, c.Host.Core.Store.GetHighWater((ushort)container.Id));
    }

    // Proves scattered first writes map nothing ahead, also when they are only a few segments apart (writes at 2, 10
    // and 41 MiB once made "within 16 segments" map the whole gap): each allocates exactly its own segment.
    [Fact]
    public async Task Random_faults_map_nothing_ahead()
    {
        var (c, d, h1) = await StartAsync(512L * Mi, 256L * Mi, bound: 32);
        await using var _ = c;
        long[] segments = [0, 2, 10, 41, 100, 40, 200, 150, 70, 250, 20, 120, 180];
        for (int i = 0; i < segments.Length; i++)
        {
            var (answer, pushed) = await h1.WriteFaultCollectingPushesAsync(d.Id, segments[i]);
            Assert.Equal(FaultOutcome.Retry, answer.Outcome);
            Assert.Equal(0, c.Host.Core.Coordinator.AllocateAheadWindow(d.Id));
            Assert.Equal(new[] { segments[i] }, pushed.Order());
            Assert.Equal(i + 1, await AllocatedAsync(c));
        }
    }

    // Proves allocate-ahead never takes units that would need zeroing: on a pool whose units all have an unknown past,
    // a sequential writer allocates exactly the segments it writes, though its window grows.
    [Fact]
    public async Task Units_that_need_zeroing_are_never_mapped_ahead()
    {
        var (c, d, h1) = await StartAsync(64L * Mi, 32L * Mi, bound: 8, freshPool: false);
        await using var _ = c;
        for (long s = 0; s < 6; s++)
        {
            var (answer, pushed) = await h1.WriteFaultCollectingPushesAsync(d.Id, s);
            Assert.Equal(FaultOutcome.Retry, answer.Outcome);
            Assert.Equal(new[] { s }, pushed.Order());
            Assert.Equal(s + 1, MappedCount(answer));
            Assert.Equal(s + 1, await AllocatedAsync(c));
        }
        Assert.Equal(8, c.Host.Core.Coordinator.AllocateAheadWindow(d.Id)); // the window was open, the units were not usable
    }

    // Proves allocate-ahead leaves the pool's reserve (1/16) to exact allocation: while a sequential writer with a large
    // window fills the pool, ahead never takes free space below the reserve, so another disk's first write still
    // succeeds when the writer has mapped all but the reserve; the last segments go one written segment at a time.
    [Fact]
    public async Task Ahead_never_takes_the_reserve()
    {
        const int PoolSegments = 32; // reserve = 32 segments / 16 = 2 segments
        var (c, d, h1) = await StartAsync(PoolSegments * (long)Mi, 64L * Mi, bound: 32);
        await using var _ = c;
        var other = await c.Admin.CreateDiskAsync(new CreateDiskRequest { Name = "other", SizeBytes = 8L * Mi });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "other", Host = "h1" });
        long reserve = PoolSegments / SpacePool.AheadReserveDivisor;
        async Task<long> FreeSegmentsAsync()
        {
            var v = (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single();
            return (long)(v.SizeBytes - v.UsedBytes) / Mi;
        }
        long next = 0;
        while (await FreeSegmentsAsync() > reserve)
        {
            long before = await FreeSegmentsAsync();
            var (answer, _) = await h1.WriteFaultCollectingPushesAsync(d.Id, next);
            Assert.Equal(FaultOutcome.Retry, answer.Outcome);
            long after = await FreeSegmentsAsync();
            Assert.True(after >= Math.Min(reserve, before - 1), $"ahead took the reserve: {before} free before, {after} after");
            next = await AllocatedAsync(c);
        }
        Assert.True(c.Host.Core.Coordinator.AllocateAheadWindow(d.Id) > 1, "the window never opened; the test proves nothing");
        var (otherAnswer, _) = await h1.WriteFaultCollectingPushesAsync(other.Id, 0);
        Assert.Equal(FaultOutcome.Retry, otherAnswer.Outcome);
        Assert.True(new MapEntry(otherAnswer.Entries[0]).HasLocation);
        // The writer gets the rest one segment at a time, then a clean ENOSPC.
        while (await FreeSegmentsAsync() > 0)
        {
            long before = await AllocatedAsync(c);
            var (answer, _) = await h1.WriteFaultCollectingPushesAsync(d.Id, before);
            Assert.Equal(FaultOutcome.Retry, answer.Outcome);
            Assert.Equal(before + 1, await AllocatedAsync(c));
        }
        var (full, _) = await h1.WriteFaultCollectingPushesAsync(d.Id, await AllocatedAsync(c));
        Assert.Equal(FaultOutcome.Fail, full.Outcome);
        Assert.Equal((uint)IoStatus.NoSpace, full.Status);
    }

    // Proves a bound of 0 turns allocate-ahead off entirely.
    [Fact]
    public async Task Bound_zero_disables_it()
    {
        var (c, d, h1) = await StartAsync(64L * Mi, 32L * Mi, bound: 0);
        await using var _ = c;
        for (long s = 0; s < 5; s++)
        {
            var (answer, pushed) = await h1.WriteFaultCollectingPushesAsync(d.Id, s);
            Assert.Equal(new[] { s }, pushed.Order());
            Assert.Equal(s + 1, await AllocatedAsync(c));
        }
        Assert.Equal(0, c.Host.Core.Coordinator.AllocateAheadWindow(d.Id));
    }

    // Proves the window's segments are committed with the high-water advance, durably: after a restart on the same store
    // every segment mapped ahead is still mapped at the same place, every mapped unit is below the persisted mark (the
    // pool rebuild would throw on a double mapping), a new disk's allocation gets units above all of them, and the
    // volatile window starts again from 0.
    [Fact]
    public async Task Window_survives_a_restart_with_its_high_water_mark()
    {
        var (c, d, h1) = await StartAsync(256L * Mi, 64L * Mi, bound: 16);
        await using var _ = c;
        long next = 0;
        for (int i = 0; i < 4; i++) next = MappedCount((await h1.WriteFaultCollectingPushesAsync(d.Id, next)).Answer);
        Assert.True(next > 4, "nothing was mapped ahead; the test proves nothing");
        var before = c.Host.Core.Store.GetSegments(d.Id, 0, next).Select(r => r.Entry).ToList();

        await c.RestartAsync();
        var after = c.Host.Core.Store.GetSegments(d.Id, 0, 64).Select(r => r.Entry).ToList();
        Assert.Equal(before, after);
        var container = (ushort)(await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single().Id;
        long mark = c.Host.Core.Store.GetHighWater(container);
        Assert.All(after, e => Assert.True(e.PhysicalIndex + UnitsPerSegment <= mark, $"{e} lies above the persisted mark {mark}"));
        Assert.Equal(0, c.Host.Core.Coordinator.AllocateAheadWindow(d.Id));

        var other = await c.Admin.CreateDiskAsync(new CreateDiskRequest { Name = "other", SizeBytes = 8L * Mi });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "other", Host = "h2" });
        var h2 = await c.ConnectAsync("h2");
        var (answer, _) = await h2.WriteFaultCollectingPushesAsync(other.Id, 0);
        Assert.True(new MapEntry(answer.Entries[0]).PhysicalIndex >= mark);
    }
}
