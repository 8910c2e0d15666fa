using System.Diagnostics;
using Grpc.Core;
using Tessera.Controller.Store;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class UnpresentAcrossRestartTests
{
    private const long MiB = 1 << 20;

    // An unpresent deletes the presentation row, then waits for the host to drop its table. A controller that dies in
    // that wait left a successor that did not count the host at all, although it may still write the disk for the
    // rest of the lease the dead controller granted: the successor migrated the disk (seed 30003644) or could delete
    // it and hand its units to another disk at once. Now the successor treats the host as an unregistered holder for
    // its first lease, so changes that need every holder wait that lease out. Without the fix the delete below
    // returns right after the restart.
    [Fact]
    public async Task A_disk_whose_unpresent_a_restart_cut_off_is_freed_only_after_the_hosts_old_lease()
    {
        const int leaseMs = 5000;
        await using var c = await TestCluster.StartAsync(leaseMs);
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 4 * MiB, "h1");
        var h1 = await c.ConnectAsync("h1");
        Assert.True(new MapEntry((await h1.FaultAndWaitAsync(disk.Id, 0, write: true)).Entries[0]).HasLocation);

        h1.AutoReply = false; // h1 goes quiet (a partition): the unpresent waits for its answer
        var unpresent = c.Admin.UnpresentDiskAsync(new UnpresentRequest { Disk = "d", Host = "h1" }).ResponseAsync;
        await h1.NextAsync(m => m.Command?.DeleteTable is not null); // the presentation row is gone, h1 has not answered

        var sinceRestart = Stopwatch.StartNew(); // started before the new controller: it overestimates that controller's age
        await c.RestartAsync(); // cuts the unpresent off; h1 does not come back within the test
        await Assert.ThrowsAnyAsync<RpcException>(() => unpresent);
        Assert.Empty(c.Host.Core.Store.ListPresentations(disk.Id));

        await c.Admin.DeleteDiskAsync(new DiskRef { Name = "d" });
        Assert.True(sinceRestart.Elapsed >= TimeSpan.FromMilliseconds(leaseMs - 100),
            $"disk d was deleted (its units free for any disk) {sinceRestart.Elapsed} after the restart, while h1 may still write it under its old lease");
    }

    // The record lives exactly as long as the unpresent is unfinished: written with the row's removal, gone when the
    // host answered, and kept when it never did (the next controller finds it).
    [Fact]
    public void The_store_records_an_unpresent_until_it_is_forgotten()
    {
        string dir = Path.Combine(Path.GetTempPath(), "tessera-store-" + Guid.NewGuid().ToString("N"));
        try
        {
            ulong diskId;
            using (var store = ControllerStore.Open(dir))
            {
                diskId = store.CreateDisk("d", 4 * MiB, (int)MiB, "now")!.Id;
                Assert.True(store.AddPresentation(diskId, "h1", readOnly: false));
                Assert.True(store.AddPresentation(diskId, "h2", readOnly: false));
                Assert.True(store.RemovePresentationRecording(diskId, "h1"));
                Assert.True(store.RemovePresentationRecording(diskId, "h2"));
                Assert.False(store.RemovePresentationRecording(diskId, "h2"));
                store.ForgetUnpresenting(diskId, "h2");
                Assert.Equal([(diskId, "h1")], store.ListUnpresenting());
            }
            using (var store = ControllerStore.Open(dir))
            {
                Assert.Equal([(diskId, "h1")], store.ListUnpresenting());
                Assert.Empty(store.ListPresentations(diskId));
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
