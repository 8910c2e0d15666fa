using Grpc.Net.Client;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class MigrationPushOrderTests
{
    private const long MiB = 1 << 20;

    private static IEnumerable<MapEntry> EntriesOf(ControllerMessage m, ulong diskId) =>
        m.Command is { SetEntries: { } set } c && c.DiskId == diskId && set.FirstSegment == 0 ? set.Entries.Select(e => new MapEntry(e)) : [];

    private static bool Names(ControllerMessage m, ulong diskId, ushort container) => EntriesOf(m, diskId).Any(e => e.HasLocation && e.ContainerId == container);

    // A moved segment is frozen at its old place (NoWrite) while it is copied; then every holder must stop reading the
    // old place before any holder may write the new one. The controller used to push the new, writable entry to every
    // holder at once: the first to apply it wrote and acknowledged in the new place while a slower holder (its stream
    // silent) still read the old bytes (found by the deterministic simulation, seed 40003509: a WRITE_ZEROES
    // acknowledged on h0, the data it replaced read on h1). Now the new place goes out with NoWrite, blocking, and
    // only once every holder answered does the writable entry follow. Without the fix h1's first entry naming the
    // new container is writable while h2 has not answered.
    [Fact]
    public async Task No_holder_may_write_the_new_place_before_every_holder_left_the_old_one()
    {
        await using var c = await TestCluster.StartAsync();
        var a = await c.AddGarbageContainerAsync("a", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 4 * MiB, "h1", "h2");
        var h1 = await c.ConnectAsync("h1");
        var h2 = await c.ConnectAsync("h2");
        var allocated = new MapEntry((await h1.FaultAndWaitAsync(disk.Id, 0, write: true)).Entries[0]);
        Assert.True(allocated.HasLocation && allocated.ContainerId == (ushort)a.Id, $"segment 0 was not allocated on a: {allocated}");
        var b = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "b", Uri = "file://" + Path.Combine(c.Directory, "b.img"), SizeBytes = 8 * MiB });
        var target = (ushort)b.Id;
        h2.AutoReply = false; // h2 is the slow holder: it answers only when the test says so

        using var channel = GrpcChannel.ForAddress(c.Host.Url);
        await new Tessera.Core.Protocol.Operations.OperationsClient(channel).MigrateDiskAsync(new MigrateDiskRequest { Disk = "d", To = "b" });

        var freeze = await h2.NextAsync(m => Names(m, disk.Id, (ushort)a.Id));
        Assert.All(EntriesOf(freeze, disk.Id), e => Assert.True((e.States & EntryStates.NoWrite) != 0, $"the old place was not frozen: {e}"));
        await h2.ReplyAsync(freeze.Command);

        var h2New = await h2.NextAsync(m => Names(m, disk.Id, target)); // held: h2 may still be reading the old place
        var h1New = await h1.NextAsync(m => Names(m, disk.Id, target));
        Assert.All(EntriesOf(h1New, disk.Id), e => Assert.True((e.States & EntryStates.NoWrite) != 0,
            $"h1 may write the new place ({e}) while h2 has not answered the push that takes it off the old one"));
        Assert.All(EntriesOf(h2New, disk.Id), e => Assert.True((e.States & EntryStates.NoWrite) != 0, $"h2 got {e}"));
        Assert.True(h2New.Command.Blocking, "the push that moves holders off the old place must be blocking");

        await h2.ReplyAsync(h2New.Command);
        h2.AutoReply = true;
        // Then the writable entry, so writers do not each fault once on the moved segment.
        var relaxed = await h1.NextAsync(m => Names(m, disk.Id, target));
        Assert.All(EntriesOf(relaxed, disk.Id), e => Assert.True(e.HasLocation && e.ContainerId == target && (e.States & EntryStates.NoWrite) == 0, $"h1 got {e}"));
        var answered = await h2.NextAsync(m => Names(m, disk.Id, target));
        await h2.ReplyAsync(answered.Command); // sent before AutoReply was back on, or already answered: a second reply is ignored
    }
}
