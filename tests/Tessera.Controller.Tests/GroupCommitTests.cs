using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class GroupCommitTests
{
    private const int Mi = 1 << 20;

    // Proves write faults queued on a disk's lock are allocated in the lock holder's transaction: the first answer
    // already carries every queued segment mapped (at distinct locations), the others find theirs in the store,
    // and every allocated segment, the leader's own included, was pushed Invalid to the faulting host before any
    // answer (a holder must drop its Zero entry before anyone may write the new segment: docs/architecture.md).
    [Fact]
    public async Task Queued_first_writes_share_one_commit()
    {
        await using var c = await TestCluster.StartAsync();
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool", Uri = "file://" + Path.Combine(c.Directory, "pool.img"), SizeBytes = 64L * Mi });
        var d = await c.CreatePresentedDiskAsync("d", 16L * Mi, "h1");
        var h1 = await c.ConnectAsync("h1");
        const int Faults = 8;
        var ids = new List<ulong>();
        using (await c.Host.Core.Coordinator.LockDiskAsync(d.Id)) // hold the disk: the faults queue
        {
            for (ulong s = 0; s < Faults; s++) ids.Add(await h1.FaultAsync(d.Id, s, write: true));
            var deadline = DateTime.UtcNow + TestCluster.Timeout;
            while (c.Host.Core.Coordinator.WaitingWrites(d.Id) < Faults)
            {
                Assert.True(DateTime.UtcNow < deadline, "the faults never queued");
                await Task.Delay(5);
            }
        }

        var responses = new Dictionary<ulong, FaultResponse>();
        FaultResponse? first = null;
        var pushed = new HashSet<ulong>();
        while (responses.Count < Faults)
        {
            var m = await h1.NextAsync();
            if (m.FaultResponse is { } r)
            {
                first ??= r;
                responses[r.FaultId] = r;
            }
            else if (m.Command?.SetEntries is { } set)
            {
                Assert.Null(first); // every push precedes every answer
                Assert.All(set.Entries, e => Assert.Equal(MapEntry.Invalid.Raw, e));
                for (ulong s = set.FirstSegment; s < set.FirstSegment + set.Count; s++) pushed.Add(s); // runs go as one range
            }
        }
        // The first answer on the stream: one at a time, it would carry only its own segment mapped.
        Assert.All(first!.Entries.Take(Faults), e => Assert.True(new MapEntry(e).HasLocation));
        var locations = first.Entries.Take(Faults).Select(e => new MapEntry(e).PhysicalIndex).ToHashSet();
        Assert.Equal(Faults, locations.Count);
        Assert.Equal(Faults, pushed.Count);
        foreach (var r in responses.Values)
        {
            Assert.Equal(FaultOutcome.Retry, r.Outcome);
            Assert.Equal(first.Entries.Take(Faults), r.Entries.Take(Faults));
        }
        Assert.Equal((ulong)Faults, (await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments);
    }
}
