using Tessera.Controller.Store;
using Tessera.Core.Mapping;
using Xunit;

namespace Tessera.Controller.Tests;

public class SnapshotStoreTests
{
    private static (ControllerStore Store, string Dir) Open()
    {
        string dir = Path.Combine(Path.GetTempPath(), "tessera-store-" + Guid.NewGuid().ToString("N"));
        return (ControllerStore.Open(dir), dir);
    }

    [Fact]
    public void A_location_is_released_only_when_its_last_reference_goes()
    {
        // Proves reference counting across a disk, its snapshot and a clone: replacing or deleting a shared location frees it only when no row names it.
        var (store, dir) = Open();
        try
        {
            var c = store.AddContainer("c", "file:///tmp/x.img", 1 << 30)!;
            var disk = store.CreateDisk("d", 4L << 16, 1 << 16, "t")!;
            store.SetEntries(disk.Id, [(0, MapEntry.Mapped(c.Id, 10)), (1, MapEntry.Mapped(c.Id, 11))]);
            var snap = store.CreateSnapshot(disk, "s", "t")!;
            store.MarkSnapshotReady(snap.Id);
            Assert.Equal(EntryStates.NoWrite, store.GetEntry(disk.Id, 0).States);
            Assert.Equal(EntryStates.NoWrite, store.GetEntry(snap.Id, 1).States);
            var clone = store.CloneSnapshot(snap, "cl", "t")!;
            Assert.Equal(3, store.ReferenceCount(new(c.Id, 10)));

            Assert.Empty(store.SetEntriesReleasing(disk.Id, [(0, MapEntry.Mapped(c.Id, 20))])); // snapshot and clone still name 10
            Assert.Empty(store.DeleteSnapshot(snap.Id));                                          // clone still names 10 and 11
            Assert.Null(store.ClearNoWriteIfUnshared(disk.Id, 1));                                // 11 is shared with the clone
            Assert.Equal([new PhysicalLocation(c.Id, 10)], store.DeleteDiskReleasing(clone.Id)); // 11 stays: the disk names it
            Assert.Equal(EntryStates.None, store.ClearNoWriteIfUnshared(disk.Id, 1)!.Value.States);
            Assert.Equal([new PhysicalLocation(c.Id, 20), new PhysicalLocation(c.Id, 11)], store.DeleteDiskReleasing(disk.Id));
        }
        finally
        {
            store.Dispose();
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void A_snapshot_never_acknowledged_by_the_agents_is_rolled_back_at_start()
    {
        // Proves a controller that crashed between persisting a snapshot and its blocking NoWrite push forgets that snapshot on restart, while the disk keeps its data (with NoWrite, the more restrictive side).
        var (store, dir) = Open();
        try
        {
            var c = store.AddContainer("c", "file:///tmp/x.img", 1 << 30)!;
            var disk = store.CreateDisk("d", 4L << 16, 1 << 16, "t")!;
            store.SetEntries(disk.Id, [(0, MapEntry.Mapped(c.Id, 10))]);
            var done = store.CreateSnapshot(disk, "done", "t")!;
            store.MarkSnapshotReady(done.Id);
            store.CreateSnapshot(disk, "crashed", "t");
            store.Dispose();

            store = ControllerStore.Open(dir);
            Assert.Equal(["d@crashed"], store.RollBackIncompleteSnapshots());
            Assert.Equal(["done"], store.ListSnapshots(disk.Id).Select(s => s.Name));
            Assert.Null(store.GetDisk("d@crashed"));
            Assert.Equal(2, store.ReferenceCount(new(c.Id, 10)));
            Assert.Equal(MapEntry.Mapped(c.Id, 10, EntryStates.NoWrite), store.GetEntry(disk.Id, 0));
        }
        finally
        {
            store.Dispose();
            Directory.Delete(dir, true);
        }
    }
}
