using Grpc.Net.Client;
using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>How the controller serves ahead-requests (docs/architecture.md, "Ahead-requests").</summary>
public class AheadRequestTests
{
    private const int Mi = 1 << 20;

    private static async Task<(TestCluster C, DiskView Disk, FakeAgent H1)> StartAsync(long poolBytes, long diskBytes, int bound, bool freshPool = true)
    {
        var c = await TestCluster.StartAsync();
        if (freshPool)
            await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool", Uri = "file://" + Path.Combine(c.Directory, "pool.img"), SizeBytes = (ulong)poolBytes });
        else
            await c.AddGarbageContainerAsync("pool", poolBytes);
        c.Host.Core.Coordinator.AllocateAheadSegments = bound;
        var d = await c.CreatePresentedDiskAsync("d", diskBytes, "h1");
        return (c, d, await c.ConnectAsync("h1"));
    }

    private static async Task<long> AllocatedAsync(TestCluster c) => (long)(await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments;

    // Proves an ahead-request on the segment after a sequential writer's last allocation is served as that writer's own
    // fault would be: its segment and the next window are committed (the window grows as for a write fault), every one
    // of them pushed Invalid before the answer, which carries them mapped at distinct never-used locations below the mark.
    [Fact]
    public async Task Ahead_request_allocates_and_opens_the_window_like_a_write_fault()
    {
        var (c, d, h1) = await StartAsync(512L * Mi, 128L * Mi, bound: 8);
        await using var _ = c;
        var (first, _) = await h1.WriteFaultCollectingPushesAsync(d.Id, 0, MapEntry.Zero.Raw, ahead: false);
        Assert.Equal(FaultOutcome.Retry, first.Outcome);
        long next = 1;
        var locations = new HashSet<long>();
        foreach (int window in new[] { 1, 2, 4, 8 })
        {
            var (answer, pushed) = await h1.WriteFaultCollectingPushesAsync(d.Id, next, MapEntry.Zero.Raw, ahead: true);
            Assert.Equal(FaultOutcome.Retry, answer.Outcome);
            Assert.Equal(window, c.Host.Core.Coordinator.AllocateAheadWindow(d.Id));
            long end = next + 1 + window;
            Assert.Equal(end, await AllocatedAsync(c));
            for (long s = next; s < end; s++)
            {
                Assert.Contains(s, pushed);
                var e = new MapEntry(answer.Entries[(int)s]);
                Assert.True(e.HasLocation, $"segment {s} not mapped in the answer");
                Assert.True(locations.Add(e.PhysicalIndex));
            }
            Assert.Equal(end - next, pushed.Count);
            next = end;
        }
        var container = (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single();
        Assert.Equal(next * (Mi / MapEntry.PhysicalUnitBytes), c.Host.Core.Store.GetHighWater((ushort)container.Id));
    }

    // Proves an ahead-request takes only never-used units: on a container whose units all need zeroing it is refused with
    // NO_SPACE and allocates nothing, pushes nothing, while the writer's own fault on the same segment then allocates.
    [Fact]
    public async Task Ahead_request_never_takes_units_that_need_zeroing()
    {
        var (c, d, h1) = await StartAsync(64L * Mi, 32L * Mi, bound: 8, freshPool: false);
        await using var _ = c;
        var (refused, pushed) = await h1.WriteFaultCollectingPushesAsync(d.Id, 0, MapEntry.Zero.Raw, ahead: true);
        Assert.Equal(FaultOutcome.Fail, refused.Outcome);
        Assert.Equal((uint)IoStatus.NoSpace, refused.Status);
        Assert.Empty(pushed);
        Assert.Equal(0, await AllocatedAsync(c));
        var (served, _) = await h1.WriteFaultCollectingPushesAsync(d.Id, 0, MapEntry.Zero.Raw, ahead: false);
        Assert.Equal(FaultOutcome.Retry, served.Outcome);
        Assert.Equal(1, await AllocatedAsync(c));
    }

    // Proves an ahead-request never takes the pool's reserve (1/16): with 2 of 32 segments free it is refused, while a
    // write fault still gets the segment.
    [Fact]
    public async Task Ahead_request_never_takes_the_reserve()
    {
        var (c, d, h1) = await StartAsync(32L * Mi, 64L * Mi, bound: 0);
        await using var _ = c;
        for (long s = 0; s < 30; s++) Assert.Equal(FaultOutcome.Retry, (await h1.WriteFaultCollectingPushesAsync(d.Id, s, MapEntry.Zero.Raw, ahead: false)).Answer.Outcome);
        Assert.Equal(FaultOutcome.Retry, (await h1.WriteFaultCollectingPushesAsync(d.Id, 30, MapEntry.Zero.Raw, ahead: false)).Answer.Outcome); // 1 of 32 left after this one
        var (refused, _) = await h1.WriteFaultCollectingPushesAsync(d.Id, 31, MapEntry.Zero.Raw, ahead: true);
        Assert.Equal(FaultOutcome.Fail, refused.Outcome);
        Assert.Equal((uint)IoStatus.NoSpace, refused.Status);
        Assert.Equal(31, await AllocatedAsync(c));
        Assert.Equal(FaultOutcome.Retry, (await h1.WriteFaultCollectingPushesAsync(d.Id, 31, MapEntry.Zero.Raw, ahead: false)).Answer.Outcome);
        Assert.Equal(32, await AllocatedAsync(c));
    }

    // Proves an ahead-request copies nothing: on a segment a snapshot shares (NoWrite) it only loads the entry, which
    // stays shared, and allocates nothing; the writer's own fault then copies on write as before.
    [Fact]
    public async Task Ahead_request_on_a_shared_segment_copies_nothing()
    {
        var (c, d, h1) = await StartAsync(64L * Mi, 16L * Mi, bound: 0);
        await using var _ = c;
        Assert.Equal(FaultOutcome.Retry, (await h1.WriteFaultCollectingPushesAsync(d.Id, 3, MapEntry.Zero.Raw, ahead: false)).Answer.Outcome);
        using (var channel = GrpcChannel.ForAddress(c.Host.Url))
            await new Snapshots.SnapshotsClient(channel).CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "d", Name = "s" });
        var shared = c.Host.Core.Store.GetEntry(d.Id, 3);
        Assert.Equal(EntryStates.NoWrite, shared.States);
        var (answer, pushed) = await h1.WriteFaultCollectingPushesAsync(d.Id, 3, MapEntry.Zero.Raw, ahead: true);
        Assert.Equal(FaultOutcome.Retry, answer.Outcome);
        Assert.Empty(pushed);
        Assert.Equal(shared, c.Host.Core.Store.GetEntry(d.Id, 3));
        Assert.Equal(shared, new MapEntry(answer.Entries[3]));
        Assert.Equal(FaultOutcome.Retry, (await h1.WriteFaultCollectingPushesAsync(d.Id, 3, MapEntry.Zero.Raw, ahead: false)).Answer.Outcome);
        Assert.NotEqual(shared.PhysicalIndex, c.Host.Core.Store.GetEntry(d.Id, 3).PhysicalIndex); // the write's own fault copied
    }
}
