using Tessera.Core;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>
/// A disk unpresented while this agent was disconnected must not survive the agent's next registration: the
/// controller counts the table gone once the old session's lease ran out, but the same process re-registered and so
/// renewed its lease; it kept serving the disk from its stale table, and its acknowledged writes would land wherever
/// the disk's space went next (deterministic simulation, seed 6000128). At registration every table is invalidated;
/// a table the new session does not re-create before its first heartbeat acknowledgement is dropped.
/// </summary>
public class ReregistrationTableTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private const int SegmentBytes = 64 << 10;

    [Fact]
    public async Task A_table_the_new_session_does_not_recreate_is_dropped_at_the_first_heartbeat_ack()
    {
        var c = new FakeController(segmentSizeBytes: SegmentBytes);
        var volume = c.Volume;
        Assert.Equal(IoStatus.Ok, await volume.WriteAsync(0, Pattern.For(0, SegmentBytes, 1), default));

        c.Reregister(); // the disk was unpresented meanwhile: no CreateTable for it
        c.Core.RenewLease(c.Time.GetTimestamp());

        Assert.Null(c.Core.FindVolume("d1"));
        var write = await volume.WriteAsync(0, Pattern.For(0, SegmentBytes, 2), default).AsTask().WaitAsync(Timeout);
        Assert.NotEqual(IoStatus.Ok, write);
        Assert.Equal(Pattern.For(0, SegmentBytes, 1), await ContainerBytesAsync(c, c.Store[0].ContainerOffset)); // the late write reached nothing
    }

    [Fact]
    public async Task A_table_the_new_session_recreates_is_kept_and_reloads_its_entries()
    {
        var c = new FakeController(segmentSizeBytes: SegmentBytes);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(0, Pattern.For(0, SegmentBytes, 1), default));

        c.Reregister();
        var recreate = c.Command(new Command { DiskId = FakeController.DiskId, CreateTable = new CreateTable { Name = "d1", SizeBytes = 4 << 20, SegmentSizeBytes = SegmentBytes } });
        Assert.True((await recreate.WaitAsync(Timeout)).Ok);
        int faultsBefore = c.Faults.Count;
        c.Core.RenewLease(c.Time.GetTimestamp());

        var volume = Assert.IsType<DiskVolume>(c.Core.FindVolume("d1"));
        var read = new byte[SegmentBytes];
        Assert.Equal(IoStatus.Ok, await volume.ReadAsync(0, read, null, default).AsTask().WaitAsync(Timeout));
        Assert.Equal(Pattern.For(0, SegmentBytes, 1), read);
        Assert.True(c.Faults.Count > faultsBefore, "the kept table was invalidated at registration, so the read had to fault");
    }

    private static async Task<byte[]> ContainerBytesAsync(FakeController c, long offset)
    {
        var bytes = new byte[SegmentBytes];
        Assert.Equal(IoStatus.Ok, await c.Container.ReadAsync(offset, bytes));
        return bytes;
    }
}
