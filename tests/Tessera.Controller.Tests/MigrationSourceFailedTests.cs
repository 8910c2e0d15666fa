using Grpc.Core;
using Grpc.Net.Client;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>A container marked failed while a migration copies one of its segments (simulation bug 16).</summary>
public class MigrationSourceFailedTests
{
    private const int Mi = 1 << 20;

    // Proves a move whose source is marked failed during the copy rolls back: the segment stays Error (it was on the
    // failed container, like every other segment there) and the units taken on the target are freed. Before the fix
    // the move relocated the Error rows to the target; Error voids a location, so no live row named those units and
    // the pool kept them used for good (found by the simulator: seeds 40001627, 40004573, 40005230, 40006612 and
    // 30000782 of the `0a2b85e` run, a container lost while a job moved a segment off it).
    [Fact]
    public async Task A_move_whose_source_fails_during_the_copy_rolls_back_and_frees_its_target_units()
    {
        await using var c = await TestCluster.StartAsync();
        var a = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "a", Uri = "file://" + Path.Combine(c.Directory, "a.img"), SizeBytes = 8 * Mi });
        var d = await c.CreatePresentedDiskAsync("d", 4 * Mi, "h1");
        var h1 = await c.ConnectAsync("h1");
        var written = await h1.FaultAndWaitAsync(d.Id, 0, write: true);
        Assert.True(new MapEntry(written.Entries[0]).HasLocation);
        var b = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "b", Uri = "file://" + Path.Combine(c.Directory, "b.img"), SizeBytes = 8 * Mi });

        var copied = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resume = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        c.Host.Core.Coordinator.AfterCopyForTest = async ct =>
        {
            copied.TrySetResult();
            await resume.Task.WaitAsync(ct);
        };
        using var channel = GrpcChannel.ForAddress(c.Host.Url);
        var ops = new Tessera.Core.Protocol.Operations.OperationsClient(channel);
        var job = await ops.MigrateDiskAsync(new MigrateDiskRequest { Disk = "d", To = "b" });
        await copied.Task.WaitAsync(TestCluster.Timeout);

        // The failure persists at once and then waits for the disk's lock, which the move holds.
        var failing = ops.FailContainerAsync(new FailContainerRequest { Name = "a", Reason = "test: lost during the copy" }).ResponseAsync;
        var until = DateTime.UtcNow + TestCluster.Timeout;
        while (!c.Host.Core.Pool.IsFailed((ushort)a.Id))
        {
            Assert.True(DateTime.UtcNow < until, "container a was not marked failed");
            Assert.False(failing.IsCompleted && failing.IsFaulted, "FailContainer failed");
            await Task.Delay(10);
        }
        resume.TrySetResult();

        var finished = await WaitJobAsync(ops, job.Id);
        await failing.WaitAsync(TestCluster.Timeout);
        var entry = c.Host.Core.Store.GetEntry(d.Id, 0);
        Assert.True((entry.States & EntryStates.Error) != 0, $"segment 0 is {entry}, not Error: it was on the failed container");
        Assert.Equal(0, c.Host.Core.Pool.Usage((ushort)b.Id).UsedUnits);
        Assert.DoesNotContain(c.Host.Core.Store.AllSegments(), r => r.Entry.ContainerId == (ushort)b.Id);
        Assert.Equal("failed", finished.State);
    }

    private static async Task<JobView> WaitJobAsync(Tessera.Core.Protocol.Operations.OperationsClient ops, ulong id)
    {
        using var call = ops.WatchJob(new JobRef { Id = id }, deadline: DateTime.UtcNow + TestCluster.Timeout);
        await foreach (var view in call.ResponseStream.ReadAllAsync())
            if (view.State != "running") return view;
        throw new TimeoutException($"job {id} ended the watch while running");
    }
}
