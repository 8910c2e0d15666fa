using Grpc.Net.Client;
using Tessera.Controller.Store;
using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>
/// The controller's in-memory disk rows and presentations (ControllerStore.DiskCache.cs), which the map-fault path
/// reads instead of SQLite: after every kind of change the cache must equal what the store committed. A writer that
/// forgets to drop the entry, or a fill that can race a writer, leaves a stale entry that these tests see.
/// </summary>
public class DiskCacheTests
{
    private const long MiB = 1 << 20;

    private static (ControllerStore Store, string Dir) Open(string? dir = null)
    {
        dir ??= Path.Combine(Path.GetTempPath(), "tessera-cache-" + Guid.NewGuid().ToString("N"));
        return (ControllerStore.Open(dir), dir);
    }

    /// <summary>Fails unless the cached view of the disk is exactly what SQLite says now.</summary>
    private static void AssertMatchesStore(ControllerStore store, ulong diskId, string step)
    {
        var truth = store.GetDisk(diskId);
        var cached = store.GetCachedDisk(diskId);
        if (truth is null)
        {
            Assert.True(cached is null, $"{step}: disk {diskId} is gone from the store but cached as {cached?.Disk}");
            return;
        }
        Assert.True(cached is not null, $"{step}: disk {diskId} exists but the cache says it does not");
        Assert.Equal(truth, cached!.Disk);
        var presented = store.ListPresentations(diskId).ToDictionary(p => p.Host, p => p.ReadOnly);
        Assert.Equal(presented.OrderBy(p => p.Key), cached.ReadOnlyByHost.OrderBy(p => p.Key));
        foreach (var (host, readOnly) in presented) Assert.Equal(new PresentationRow(diskId, host, readOnly), cached.PresentationFor(host));
        Assert.Null(cached.PresentationFor("nobody"));
    }

    // Proves every store method that writes the disks or presentations table leaves the cache equal to the store,
    // each step starting from a warm (filled) entry, so a writer that does not drop it is caught.
    [Fact]
    public void Cache_equals_the_store_after_every_kind_of_change()
    {
        var (store, dir) = Open();
        try
        {
            var c = store.AddContainer("c", "file:///tmp/cache-test.img", 1 << 30)!;
            var disk = store.CreateDisk("d", 4 * MiB, (int)MiB, "t")!;
            store.SetEntries(disk.Id, [(0, MapEntry.Mapped(c.Id, 16))]);
            void Step(string name, Action change, params ulong[] diskIds)
            {
                foreach (var id in diskIds) store.GetCachedDisk(id); // warm
                change();
                foreach (var id in diskIds) AssertMatchesStore(store, id, name);
            }

            Step("present", () => Assert.True(store.AddPresentation(disk.Id, "h1", readOnly: false)), disk.Id);
            Step("present read-only", () => Assert.True(store.AddPresentation(disk.Id, "h2", readOnly: true)), disk.Id);
            Step("present twice (refused)", () => Assert.False(store.AddPresentation(disk.Id, "h2", readOnly: false)), disk.Id);
            Step("unpresent", () => Assert.True(store.RemovePresentation(disk.Id, "h1")), disk.Id);
            Step("grow", () => store.ResizeDisk(disk.Id, 8 * MiB, 8), disk.Id);
            Assert.Equal(8, store.GetCachedDisk(disk.Id)!.Disk.SegmentCount);
            Step("shrink", () => store.ResizeDisk(disk.Id, 2 * MiB, 2), disk.Id);
            DiskRow snapshot = null!;
            Step("snapshot", () => snapshot = store.CreateSnapshot(store.GetDisk(disk.Id)!, "s", "t")!, disk.Id);
            store.MarkSnapshotReady(snapshot.Id);
            Step("present snapshot", () => store.AddPresentation(snapshot.Id, "h3", readOnly: true), snapshot.Id, disk.Id);
            DiskRow clone = null!;
            Step("clone", () => clone = store.CloneSnapshot(snapshot, "cl", "t")!, snapshot.Id, disk.Id);
            Step("present clone", () => store.AddPresentation(clone.Id, "h1", readOnly: false), clone.Id, snapshot.Id);
            Step("delete snapshot", () => store.DeleteSnapshot(snapshot.Id), snapshot.Id, disk.Id, clone.Id);
            Step("delete clone", () => store.DeleteDiskReleasing(clone.Id), clone.Id, disk.Id);

            var unready = store.CreateSnapshot(store.GetDisk(disk.Id)!, "crashed", "t")!;
            store.AddPresentation(unready.Id, "h4", readOnly: true);
            Step("roll back an unacknowledged snapshot", () => Assert.Single(store.RollBackIncompleteSnapshots()), unready.Id, disk.Id);
            Assert.Null(store.GetCachedDisk(unready.Id));

            store.GetCachedDisk(disk.Id);
            store.Dispose();
            // A restarted controller starts from the store, whatever the old process had in memory.
            (store, _) = Open(dir);
            Assert.Equal(0, store.CachedDiskCount);
            AssertMatchesStore(store, disk.Id, "restart");
            Assert.Equal(2 * MiB, store.GetCachedDisk(disk.Id)!.Disk.SizeBytes);
            Step("delete disk", () => store.DeleteDiskReleasing(disk.Id), disk.Id);
        }
        finally
        {
            store.Dispose();
            Directory.Delete(dir, true);
        }
    }

    // Proves a fill racing a change cannot put the pre-change state back: readers fill the entry in a loop while
    // the writer flips presentations and resizes, and after each change returns the cache must show it. A fill that
    // reads the store without holding the store lock until it has stored the entry fails this (checked by hand).
    [Fact]
    public async Task Fills_racing_changes_never_leave_a_stale_entry()
    {
        var (store, dir) = Open();
        try
        {
            var disk = store.CreateDisk("d", 4 * MiB, (int)MiB, "t")!;
            using var stop = new CancellationTokenSource();
            long fills = 0;
            var readers = Enumerable.Range(0, 2).Select(_ => Task.Run(() =>
            {
                while (!stop.IsCancellationRequested)
                {
                    store.GetCachedDisk(disk.Id);
                    Interlocked.Increment(ref fills);
                }
            })).ToArray();
            try
            {
                var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
                for (int i = 0; i < 300 && DateTime.UtcNow < deadline; i++)
                {
                    bool readOnly = i % 3 == 0;
                    Assert.True(store.AddPresentation(disk.Id, "h", readOnly));
                    Assert.Equal(new PresentationRow(disk.Id, "h", readOnly), store.GetCachedDisk(disk.Id)!.PresentationFor("h"));
                    Assert.True(store.RemovePresentation(disk.Id, "h"));
                    Assert.Null(store.GetCachedDisk(disk.Id)!.PresentationFor("h"));
                    store.ResizeDisk(disk.Id, (4 + i % 2) * MiB, 4 + i % 2);
                    Assert.Equal((4 + i % 2) * MiB, store.GetCachedDisk(disk.Id)!.Disk.SizeBytes);
                }
            }
            finally
            {
                stop.Cancel();
                await Task.WhenAll(readers);
            }
            Assert.True(Interlocked.Read(ref fills) > 0);
        }
        finally
        {
            store.Dispose();
            Directory.Delete(dir, true);
        }
    }

    // Proves the fault path answers from the current disk and presentations after each change, through a real
    // controller: a stale cache would answer a host after its unpresent, refuse one just presented, keep a
    // read-write view after a read-only present, refuse a segment a grow added, or forget a change over a restart.
    [Fact]
    public async Task Faults_follow_present_unpresent_resize_snapshot_delete_and_restart()
    {
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 16 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "h1");
        using var channel = GrpcChannel.ForAddress(c.Host.Url);
        var snapshots = new Snapshots.SnapshotsClient(channel);
        var h1 = await c.ConnectAsync("h1");
        var h2 = await c.ConnectAsync("h2");

        var written = await h1.FaultAndWaitAsync(disk.Id, 5, write: true);
        Assert.Equal(FaultOutcome.Retry, written.Outcome);
        var mapped = new MapEntry(written.Entries[(int)(5 - written.FirstSegment)]);
        Assert.True(mapped.HasLocation);

        var notPresented = await h2.FaultAndWaitAsync(disk.Id, 5, write: false); // fills the cache without h2
        Assert.Equal(FaultOutcome.Fail, notPresented.Outcome);
        Assert.Equal((uint)IoStatus.Shutdown, notPresented.Status);

        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "d", Host = "h2", ReadOnly = true });
        var readOnlyView = await h2.FaultAndWaitAsync(disk.Id, 5, write: false);
        Assert.Equal(FaultOutcome.Retry, readOnlyView.Outcome);
        Assert.Equal(mapped.WithStates(EntryStates.NoWrite, EntryStates.None).Raw, readOnlyView.Entries[(int)(5 - readOnlyView.FirstSegment)]);
        var refusedWrite = await h2.FaultAndWaitAsync(disk.Id, 6, write: true);
        Assert.Equal((uint)IoStatus.NotPermitted, refusedWrite.Status);

        Assert.Equal((uint)IoStatus.InvalidArgument, (await h1.FaultAndWaitAsync(disk.Id, 9, write: false)).Status); // beyond 8 segments
        await snapshots.ResizeDiskAsync(new ResizeDiskRequest { Name = "d", SizeBytes = (ulong)(12 * MiB) });
        var grown = await h1.FaultAndWaitAsync(disk.Id, 9, write: false);
        Assert.Equal(FaultOutcome.Retry, grown.Outcome);
        Assert.Equal(12, grown.Entries.Count);

        await snapshots.CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "d", Name = "s" });
        var shared = await h1.FaultAndWaitAsync(disk.Id, 5, write: false);
        Assert.Equal(EntryStates.NoWrite, new MapEntry(shared.Entries[(int)(5 - shared.FirstSegment)]).States);

        await c.Admin.UnpresentDiskAsync(new UnpresentRequest { Disk = "d", Host = "h1" });
        var afterUnpresent = await h1.FaultAndWaitAsync(disk.Id, 5, write: false);
        Assert.Equal(FaultOutcome.Fail, afterUnpresent.Outcome);
        Assert.Equal((uint)IoStatus.Shutdown, afterUnpresent.Status);

        await c.RestartAsync();
        h2 = await c.ConnectAsync("h2");
        var afterRestart = await h2.FaultAndWaitAsync(disk.Id, 9, write: false);
        Assert.Equal(FaultOutcome.Retry, afterRestart.Outcome);
        Assert.Equal(12, afterRestart.Entries.Count); // the grown size, read from the store by the new process
        Assert.Equal(EntryStates.NoWrite, new MapEntry(afterRestart.Entries[5]).States);

        using var restartedChannel = GrpcChannel.ForAddress(c.Host.Url);
        var clone = await new Snapshots.SnapshotsClient(restartedChannel).CloneDiskAsync(new CloneDiskRequest { Source = "d@s", Name = "cl" });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "cl", Host = "h2" });
        Assert.Equal(FaultOutcome.Retry, (await h2.FaultAndWaitAsync(clone.Id, 5, write: false)).Outcome);
        await c.Admin.UnpresentDiskAsync(new UnpresentRequest { Disk = "cl", Host = "h2" });
        await c.Admin.DeleteDiskAsync(new DiskRef { Name = "cl" });
        var deleted = await h2.FaultAndWaitAsync(clone.Id, 5, write: false);
        Assert.Equal(FaultOutcome.Fail, deleted.Outcome);
        Assert.Equal((uint)IoStatus.Shutdown, deleted.Status);
    }
}
