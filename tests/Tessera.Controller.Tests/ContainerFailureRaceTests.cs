using Grpc.Net.Client;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>
/// Marking a container failed while a change of a disk holds that disk's lock (simulation bug 17). The marking persists
/// at once and pushes Error once it has each disk's lock; what it marks and pushes must be the map as it is then.
/// </summary>
public class ContainerFailureRaceTests
{
    private const int Mi = 1 << 20;

    // Proves a copy-on-write that took its units on a container before it was marked failed, and commits after, does
    // not leave a live row on the failed container: the marking catches it under the disk's lock. Before the fix the
    // row stayed mapped there (not Error), so every host read EIO from a segment the map called healthy (seeds
    // 30001335 and 30003228 of the `0a2b85e` run: an allocation and a copy-on-write in flight when a probe failed).
    [Fact]
    public async Task A_copy_on_write_committed_after_its_container_failed_is_marked_Error()
    {
        var (c, a, d, h1) = await StartWithSegmentZeroOnAAsync();
        await using var cluster = c;
        using var channel = GrpcChannel.ForAddress(c.Host.Url);
        await new Snapshots.SnapshotsClient(channel).CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "d", Name = "s" });

        var copied = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resume = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        c.Host.Core.Coordinator.AfterCopyForTest = async ct =>
        {
            copied.TrySetResult();
            await resume.Task.WaitAsync(ct);
        };
        ulong cow = await h1.FaultAsync(d.Id, 0, write: true); // the segment is shared with the snapshot: copy-on-write
        await copied.Task.WaitAsync(TestCluster.Timeout);

        var failing = await StartFailingAAsync(channel, c, a, "test: failed during a copy-on-write");
        resume.TrySetResult();
        await h1.NextAsync(m => m.FaultResponse?.FaultId == cow);
        await failing.WaitAsync(TestCluster.Timeout);

        var entry = c.Host.Core.Store.GetEntry(d.Id, 0);
        Assert.True(entry.ContainerId != (ushort)a.Id || (entry.States & EntryStates.Error) != 0,
            $"segment 0 of d is {entry}: a live row on the failed container a");
    }

    // Proves the marking pushes Error only for what is on the container when it has the disk's lock. A zeroing queued
    // on the lock before the marking released an Error segment to Zero; the marking then pushed Error for it from the
    // rows it had read before, and the host kept that Error for a segment the map called Zero: every read of it
    // answered EIO for good (seed 30000782 of the `0a2b85e` run, a TRIM over a segment of the lost container).
    [Fact]
    public async Task A_segment_zeroed_while_its_container_was_being_marked_failed_is_not_pushed_Error()
    {
        var (c, a, d, h1) = await StartWithSegmentZeroOnAAsync();
        await using var cluster = c;

        // Segment 1's allocation holds d's lock until h1 answers its blocking push.
        h1.AutoReply = false;
        ulong allocation = await h1.FaultAsync(d.Id, 1, write: true);
        var held = (await h1.NextAsync(m => m.Command?.SetEntries is { } s && s.FirstSegment <= 1 && 1 < s.FirstSegment + s.Count)).Command;
        Assert.Equal((ushort)a.Id, c.Host.Core.Store.GetEntry(d.Id, 1).ContainerId);
        // Room elsewhere for the probe write below, added after segment 1 took its units on a.
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "b", Uri = "file://" + Path.Combine(c.Directory, "b.img"), SizeBytes = 8 * Mi });

        // A zeroing of segment 0 queues on the lock. A write fault sent after it on the same stream shows when it has:
        // faults take their place on the lock in the order the stream delivers them.
        ulong zeroing = (ulong)Random.Shared.NextInt64(1 << 40, 1L << 50);
        await h1.SendAsync(new AgentMessage { Fault = new MapFault { FaultId = zeroing, DiskId = d.Id, Segment = 0, Write = true, Zero = true, Count = 1 } });
        ulong marker = await h1.FaultAsync(d.Id, 2, write: true);
        await WaitUntilAsync(() => c.Host.Core.Coordinator.WaitingWrites(d.Id) == 1, null, "the write fault behind the zeroing did not queue");

        using var channel = GrpcChannel.ForAddress(c.Host.Url);
        var failing = await StartFailingAAsync(channel, c, a, "test: failed while a zeroing waited");
        h1.AutoReply = true;
        await h1.ReplyAsync(held);

        // Everything h1 hears until the marking's Error push for segment 1, which is still on a.
        var heard = new List<ControllerMessage>();
        while (true)
        {
            var m = await h1.NextAsync();
            heard.Add(m);
            if (m.Command?.SetEntries is { } s && s.FirstSegment <= 1 && 1 < s.FirstSegment + s.Count && (new MapEntry(s.Entries[0]).States & EntryStates.Error) != 0) break;
        }
        await failing.WaitAsync(TestCluster.Timeout);
        Assert.Contains(heard, m => m.FaultResponse?.FaultId == zeroing);
        Assert.Equal(EntryStates.Zero, c.Host.Core.Store.GetEntry(d.Id, 0).States);
        Assert.True((c.Host.Core.Store.GetEntry(d.Id, 1).States & EntryStates.Error) != 0);
        var pushedError = heard.Where(m => m.Command?.SetEntries is { } s && s.FirstSegment == 0 && (new MapEntry(s.Entries[0]).States & EntryStates.Error) != 0).ToList();
        Assert.True(pushedError.Count == 0, "the marking pushed Error for segment 0 after the zeroing had made it Zero");
        _ = allocation;
        _ = marker;
    }

    /// <summary>A cluster with container a, disk d presented to h1, and d's segment 0 mapped on a.</summary>
    private static async Task<(TestCluster, ContainerView, DiskView, FakeAgent)> StartWithSegmentZeroOnAAsync()
    {
        var c = await TestCluster.StartAsync();
        var a = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "a", Uri = "file://" + Path.Combine(c.Directory, "a.img"), SizeBytes = 8 * Mi });
        var d = await c.CreatePresentedDiskAsync("d", 4 * Mi, "h1");
        var h1 = await c.ConnectAsync("h1");
        Assert.True(new MapEntry((await h1.FaultAndWaitAsync(d.Id, 0, write: true)).Entries[0]).HasLocation);
        return (c, a, d, h1);
    }

    /// <summary>Starts marking container a failed and returns once the pool knows (the marking's pushes still to come).</summary>
    private static async Task<Task<ContainerView>> StartFailingAAsync(GrpcChannel channel, TestCluster c, ContainerView a, string reason)
    {
        var failing = new Tessera.Core.Protocol.Operations.OperationsClient(channel).FailContainerAsync(new FailContainerRequest { Name = "a", Reason = reason }).ResponseAsync;
        await WaitUntilAsync(() => c.Host.Core.Pool.IsFailed((ushort)a.Id), failing, "container a was not marked failed");
        return failing;
    }

    private static async Task WaitUntilAsync(Func<bool> condition, Task? failFast, string what)
    {
        var until = DateTime.UtcNow + TestCluster.Timeout;
        while (!condition())
        {
            if (failFast is { IsFaulted: true }) await failFast;
            Assert.True(DateTime.UtcNow < until, what);
            await Task.Delay(5);
        }
    }
}
