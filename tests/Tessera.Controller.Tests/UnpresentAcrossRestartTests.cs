using System.Diagnostics;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class UnpresentAcrossRestartTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task After_a_restart_a_host_whose_unpresent_was_cut_off_is_waited_for_before_a_snapshot()
    {
        // Proves a restarted controller counts the host of an unpresent its predecessor committed but had not finished:
        // the host never answered its DeleteTable and may still write in place under the old controller's lease, while
        // no presentation row names it any more. Without the record a snapshot right after the restart was marked ready
        // at once and could miss the host's later writes; with it, the snapshot waits out the first lease.
        const int leaseMs = 4000;
        await using var c = await TestCluster.StartAsync(leaseMs);
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 4 * MiB, "a");
        var a = await c.ConnectAsync("a");
        Assert.Equal(FaultOutcome.Retry, (await a.FaultAndWaitAsync(disk.Id, 0, write: true)).Outcome);
        await a.SendAsync(new AgentMessage { Heartbeat = new Heartbeat { Sequence = 1 } }); // a's lease runs a full lease from here
        await a.NextAsync(m => m.HeartbeatAck is not null);
        a.AutoReply = false;

        var unpresent = c.Host.Core.Coordinator.UnpresentAsync(c.Host.Core.Store.GetDisk(disk.Id)!, "a");
        await a.NextAsync(m => m.Command?.DeleteTable is not null);
        var sinceRestart = Stopwatch.StartNew();
        await c.RestartAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => unpresent);

        var core = c.Host.Core;
        Assert.Equal([(disk.Id, "a")], core.Store.ListUnpresenting());
        await core.Coordinator.CreateSnapshotAsync(disk.Id, "s");
        Assert.True(sinceRestart.Elapsed >= TimeSpan.FromMilliseconds(leaseMs - 100),
            $"the snapshot was taken {sinceRestart.Elapsed} after the restart, while the host of the cut-off unpresent may still have written in place");

        // After the first lease the record has served its purpose: the next restart must not wait for that host again.
        var deadline = Stopwatch.StartNew();
        while (core.Store.ListUnpresenting().Count > 0)
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(30), "the unfinished unpresent was never forgotten after the first lease");
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task An_unpresent_the_host_answered_leaves_no_record()
    {
        // Proves the record lives only until the host dropped its table: a completed unpresent must not make every
        // later restart wait a lease for a host that holds nothing.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 4 * MiB, "a");
        var a = await c.ConnectAsync("a");
        Assert.Equal(FaultOutcome.Retry, (await a.FaultAndWaitAsync(disk.Id, 0, write: true)).Outcome);

        Assert.True(await c.Host.Core.Coordinator.UnpresentAsync(c.Host.Core.Store.GetDisk(disk.Id)!, "a"));
        Assert.Empty(c.Host.Core.Store.ListUnpresenting());
        Assert.Empty(c.Host.Core.Store.ListPresentations(disk.Id));
    }
}
