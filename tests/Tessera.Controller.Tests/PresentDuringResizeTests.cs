using Xunit;

namespace Tessera.Controller.Tests;

public class PresentDuringResizeTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task A_present_that_waited_behind_a_resize_creates_the_table_with_the_new_size()
    {
        // The present reads the disk before it takes the disk's lock; a shrink holds the lock while its holder drains.
        // The table the present then creates must have the size the store has, not the size read before the lock: a
        // later fault reloads entries but never the size (found by the simulation, seed 10001833: a host kept a size
        // two grows old and read a shorter disk than every other host).
        await using var c = await TestCluster.StartAsync(leaseMs: 30_000);
        await c.AddGarbageContainerAsync("c1", 16 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "b");
        var b = await c.ConnectAsync("b");
        var a = await c.ConnectAsync("a");
        b.AutoReply = false;

        var core = c.Host.Core;
        var shrink = core.Coordinator.ResizeAsync(disk.Id, 4 * MiB, force: true);
        var shrinkCommand = await b.NextAsync(m => m.Command?.ResizeTable is not null); // the shrink holds the lock, waiting for b
        var grow = core.Coordinator.ResizeAsync(disk.Id, 6 * MiB, force: false); // queued on the lock
        // What PresentDisk does: read the disk, persist the presentation, create the table on the host's session.
        var rowBeforeTheLock = core.Store.GetDisk(disk.Id)!;
        Assert.Equal(4 * MiB, rowBeforeTheLock.SizeBytes);
        Assert.True(core.Store.AddPresentation(disk.Id, "a", readOnly: false));
        var present = core.Coordinator.PresentAsync(core.Sessions.Get("a")!, rowBeforeTheLock); // queued behind the grow

        await b.ReplyAsync(shrinkCommand.Command);
        await shrink;
        var growCommand = await b.NextAsync(m => m.Command?.ResizeTable is not null);
        await b.ReplyAsync(growCommand.Command);
        await grow;
        var created = await a.NextAsync(m => m.Command?.CreateTable is not null);
        await present;
        ulong size = created.Command.CreateTable.SizeBytes;
        if (a.TryPeek(out var next) && next?.Command?.ResizeTable is { } resize) size = resize.SizeBytes;
        Assert.Equal((ulong)(6 * MiB), size);
    }
}
