using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class StopDuringUnpresentTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task A_snapshot_queued_behind_an_unpresent_cut_off_by_a_stop_is_not_taken()
    {
        // The unpresent waits for its host's DeleteTable reply while the snapshot waits for the disk's lock. A stop
        // cancels the unpresent half-way: the host never answered and may still write in place. The snapshot must not
        // then run and be marked ready in the stopping controller (found by the deterministic simulation, seed
        // 20000706: the snapshot counted the host as gone and a clone of it later read the host's later writes).
        // Two rules prevent it, either is enough here: a stopping controller takes no disk lock, and the unpresent
        // stops counting the host as a holder only once it answered or lapsed.
        var c = await TestCluster.StartAsync(leaseMs: 30_000);
        try
        {
            await c.AddGarbageContainerAsync("c1", 8 * MiB);
            var disk = await c.CreatePresentedDiskAsync("d", 4 * MiB, "a");
            var a = await c.ConnectAsync("a");
            await a.FaultAndWaitAsync(disk.Id, 0, write: true);
            a.AutoReply = false;

            var core = c.Host.Core;
            var row = core.Store.GetDisk(disk.Id)!;
            var unpresent = core.Coordinator.UnpresentAsync(row, "a");
            await a.NextAsync(m => m.Command?.DeleteTable is not null);
            var snapshot = core.Coordinator.CreateSnapshotAsync(disk.Id, "s"); // queued on the disk's lock
            Assert.False(snapshot.IsCompleted);

            await c.Host.StopAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => unpresent);
            var taken = await Record.ExceptionAsync(() => snapshot);
            Assert.True(taken is not null, "the snapshot was taken while the stopping controller still had a host writing in place");
        }
        finally
        {
            await c.DisposeAsync();
        }
    }
}
