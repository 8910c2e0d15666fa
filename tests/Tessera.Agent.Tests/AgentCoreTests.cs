using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Tessera.Nbd;
using Xunit;

namespace Tessera.Agent.Tests;

public class AgentCoreTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    // Proves a thin segment reads as zeros before the first write, allocates on it, and returns the data after.
    [Fact]
    public async Task Thin_segment_reads_zeros_then_data()
    {
        var c = new FakeController();
        var buffer = new byte[4096];
        Array.Fill(buffer, (byte)0xEE);
        Assert.Equal(IoStatus.Ok, await c.Volume.ReadAsync(8192, buffer, null, default));
        Assert.All(buffer, b => Assert.Equal(0, b));
        Assert.Equal(0, c.Container.Writes);

        var data = Pattern.For(8192, 4096, 1);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(8192, data, default));
        Assert.Equal(IoStatus.Ok, await c.Volume.ReadAsync(8192, buffer, null, default));
        Assert.Equal(data, buffer);
        Assert.True(c.Store.ContainsKey(0));
    }

    // Proves a request crossing segment boundaries is split, each piece mapped to its own location, and gathered back whole.
    [Fact]
    public async Task Request_across_segments_is_split_and_gathered()
    {
        var c = new FakeController(segmentSizeBytes: 64 << 10);
        long offset = (64 << 10) - 1000; // starts 1000 bytes before the end of segment 0 and spans into segment 3
        var data = Pattern.For(offset, 3 * (64 << 10), 7);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(offset, data, default));
        Assert.Equal(4, c.Store.Count);
        var back = new byte[data.Length];
        Assert.Equal(IoStatus.Ok, await c.Volume.ReadAsync(offset, back, null, default));
        Assert.Equal(data, back);
        // Segment 1 must hold its own bytes at its own location: offset 64 KiB maps to the start of its physical segment.
        var seg1 = c.Store[1];
        var expected = Pattern.For(64 << 10, 16, 7);
        Assert.Equal(expected, c.Container.Peek(seg1.ContainerOffset, 16).ToArray());
    }

    // Proves reads of zero segments are reported as zero extents (for NBD holes) instead of being filled.
    [Fact]
    public async Task Zero_segments_are_reported_as_extents()
    {
        var c = new FakeController(segmentSizeBytes: 64 << 10);
        await c.Volume.WriteAsync(64 << 10, Pattern.For(64 << 10, 512, 1), default);
        var extents = new NbdExtentList();
        var buffer = new byte[3 * (64 << 10)];
        Assert.Equal(IoStatus.Ok, await c.Volume.ReadAsync(0, buffer, extents, default));
        Assert.Equal(2, extents.Count);
        Assert.Equal(new NbdExtent(0, 64 << 10, NbdExtentFlags.Hole | NbdExtentFlags.Zero), extents[0]);
        Assert.Equal(new NbdExtent(128 << 10, 64 << 10, NbdExtentFlags.Hole | NbdExtentFlags.Zero), extents[1]);
        Assert.Equal(Pattern.For(64 << 10, 512, 1), buffer.AsSpan(64 << 10, 512).ToArray());
    }

    // Proves concurrent faults on one segment are coalesced into one message to the controller.
    [Fact]
    public async Task Faults_on_one_segment_are_coalesced()
    {
        var c = new FakeController { AutoAnswer = false };
        var reads = Enumerable.Range(0, 10).Select(_ => c.Volume.ReadAsync(100, new byte[10], null, default).AsTask()).ToArray();
        await WaitUntil(() => !c.Faults.IsEmpty);
        Assert.Single(c.Faults);
        Assert.All(reads, r => Assert.False(r.IsCompleted));
        c.AnswerPendingFaults();
        Assert.All(await Task.WhenAll(reads).WaitAsync(Timeout), s => Assert.Equal(IoStatus.Ok, s));
        Assert.Equal(1, c.Core.Counters.FaultsSent);
        Assert.Equal(9, c.Core.Counters.FaultsCoalesced);
    }

    // Proves the blocking flag: the command applies at once but is answered only after the older in-flight write completed.
    [Fact]
    public async Task Blocking_command_waits_for_older_io_only()
    {
        var c = new FakeController();
        await c.Volume.WriteAsync(0, new byte[512], default); // maps segment 0
        c.Container.HoldOperations();
        var inFlight = c.Volume.WriteAsync(0, Pattern.For(0, 512, 2), default).AsTask();
        var reply = c.Command(new Command { DiskId = FakeController.DiskId, Blocking = true, ChangeStates = new ChangeStates { FirstSegment = 0, Count = 1, Set = (uint)EntryStates.NoWrite } });
        Assert.Equal(EntryStates.NoWrite, c.Volume.Table.Get(0).States); // applied at once
        await Task.Delay(50);
        Assert.False(reply.IsCompleted); // but not answered while the older write is in flight

        // A write issued after the command sees NoWrite and faults instead of writing.
        c.AutoAnswer = false;
        while (c.Faults.TryDequeue(out _)) { }
        var later = c.Volume.WriteAsync(0, new byte[512], default).AsTask();
        await WaitUntil(() => !c.Faults.IsEmpty);
        Assert.True(c.Faults.TryPeek(out var fault) && fault.Write && new MapEntry(fault.SeenEntry).States == EntryStates.NoWrite);

        c.Container.ReleaseOperations();
        Assert.Equal(IoStatus.Ok, await inFlight.WaitAsync(Timeout));
        Assert.True((await reply.WaitAsync(Timeout)).Ok);
        Assert.False(later.IsCompleted);
    }

    // Proves a non-blocking command is answered at once even with I/O in flight.
    [Fact]
    public async Task Non_blocking_command_answers_at_once()
    {
        var c = new FakeController();
        await c.Volume.WriteAsync(0, new byte[512], default);
        c.Container.HoldOperations();
        var inFlight = c.Volume.ReadAsync(0, new byte[512], null, default).AsTask();
        var reply = await c.Command(new Command { DiskId = FakeController.DiskId, GetEntries = new GetEntries { FirstSegment = 0, Count = 2 } }).WaitAsync(Timeout);
        Assert.True(reply.Ok);
        Assert.Equal(c.Store[0].Raw, reply.Entries[0]);
        Assert.Equal(MapEntry.Invalid.Raw, reply.Entries[1]);
        c.Container.ReleaseOperations();
        await inFlight.WaitAsync(Timeout);
    }

    // Proves Error entries fail reads and writes with EIO without touching the container.
    [Fact]
    public async Task Error_entries_fail_with_eio()
    {
        var c = new FakeController();
        c.Store[0] = MapEntry.Error;
        Assert.Equal(IoStatus.IoError, await c.Volume.ReadAsync(0, new byte[512], null, default));
        Assert.Equal(IoStatus.IoError, await c.Volume.WriteAsync(0, new byte[512], default));
        Assert.Equal(0, c.Container.Writes);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(c.SegmentSizeBytes, new byte[512], default)); // other segments still work
    }

    // Proves a controller "fail" answer reaches the I/O with its status (ENOSPC) and nothing is written.
    [Fact]
    public async Task Failed_fault_returns_its_status()
    {
        var c = new FakeController { FailAllocationsWith = IoStatus.NoSpace };
        Assert.Equal(IoStatus.NoSpace, await c.Volume.WriteAsync(0, new byte[512], default));
        Assert.Equal(0, c.Container.Writes);
        c.FailAllocationsWith = null;
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(0, new byte[512], default));
    }

    // Proves a read-only table refuses writes with EPERM before any fault.
    [Fact]
    public async Task Read_only_refuses_writes()
    {
        var c = new FakeController(readOnly: true);
        Assert.Equal(IoStatus.NotPermitted, await c.Volume.WriteAsync(0, new byte[512], default));
        Assert.Empty(c.Faults);
    }

    // Proves out-of-range I/O is refused with EINVAL.
    [Fact]
    public async Task Out_of_range_is_invalid()
    {
        var c = new FakeController(sizeBytes: 1 << 20);
        Assert.Equal(IoStatus.InvalidArgument, await c.Volume.ReadAsync((1 << 20) - 100, new byte[512], null, default));
        Assert.Equal(IoStatus.InvalidArgument, await c.Volume.WriteAsync(-1, new byte[1], default));
    }

    // Proves a lapsed lease invalidates the table so the next I/O faults instead of using a possibly stale entry,
    // and that the fault is answered only once a heartbeat renewed the lease (LeaseEnforcementTests has the details).
    [Fact]
    public async Task Lease_lapse_invalidates_tables()
    {
        var c = new FakeController();
        await c.Volume.WriteAsync(0, new byte[512], default);
        Assert.True(c.Core.CheckLease());
        c.Time.Advance(TimeSpan.FromMilliseconds(10_000 * AgentCore.LeaseSafetyFraction - 1));
        Assert.True(c.Core.CheckLease());
        c.Time.Advance(TimeSpan.FromMilliseconds(2));
        Assert.False(c.Core.CheckLease());
        Assert.Equal(MapEntry.Invalid, c.Volume.Table.Get(0));
        long faults = c.Core.Counters.FaultsSent;
        var read = c.Volume.ReadAsync(0, new byte[512], null, default).AsTask();
        await WaitUntil(() => Interlocked.Read(ref c.Core.Counters.AnswersHeldWhileLapsed) == 1); // answered during the lapse: not used
        Assert.False(read.IsCompleted);
        c.Core.RenewLease(c.Time.GetTimestamp());
        Assert.Equal(IoStatus.Ok, await read.WaitAsync(Timeout));
        Assert.Equal(faults + 1, c.Core.Counters.FaultsSent);
    }

    // Proves deleting a table closes the volume and fails waiting faults with ESHUTDOWN.
    [Fact]
    public async Task Delete_table_shuts_the_volume()
    {
        var c = new FakeController { AutoAnswer = false };
        var volume = c.Volume;
        var waiting = volume.ReadAsync(0, new byte[10], null, default).AsTask();
        await WaitUntil(() => !c.Faults.IsEmpty);
        var reply = await c.Command(new Command { DiskId = FakeController.DiskId, Blocking = true, DeleteTable = new DeleteTable() }).WaitAsync(Timeout);
        Assert.True(reply.Ok);
        Assert.Equal(IoStatus.Shutdown, await waiting.WaitAsync(Timeout));
        Assert.True(volume.Closed.IsCancellationRequested);
        Assert.Null(c.Core.FindVolume("d1"));
    }

    // Proves commands outside the table are refused with an error reply, not applied.
    [Fact]
    public async Task Bad_commands_get_error_replies()
    {
        var c = new FakeController(sizeBytes: 1 << 20, segmentSizeBytes: 64 << 10);
        var reply = await c.Command(new Command { DiskId = FakeController.DiskId, ChangeStates = new ChangeStates { FirstSegment = 10, Count = 10, Set = 2 } });
        Assert.False(reply.Ok);
        reply = await c.Command(new Command { DiskId = FakeController.DiskId, ChangeStates = new ChangeStates { FirstSegment = 0, Count = 1, Clear = (uint)EntryStates.Zero } });
        Assert.False(reply.Ok);
        reply = await c.Command(new Command { DiskId = 999, GetEntries = new GetEntries { FirstSegment = 0, Count = 1 } });
        Assert.False(reply.Ok);
    }

    // Proves WRITE_ZEROES leaves never-written segments unallocated and zeroes partial mapped ones in place; FAST_ZERO refuses to write.
    [Fact]
    public async Task Write_zeroes_respects_the_table()
    {
        var c = new FakeController(segmentSizeBytes: 64 << 10);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteZeroesAsync(0, 128 << 10, fastZero: true, noHole: false, default));
        Assert.Empty(c.Store);
        await c.Volume.WriteAsync(0, Pattern.For(0, 4096, 3), default);
        Assert.Equal(IoStatus.NotSupported, await c.Volume.WriteZeroesAsync(0, 4096, fastZero: true, noHole: false, default));
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteZeroesAsync(0, 4096, fastZero: false, noHole: false, default));
        var back = new byte[4096];
        await c.Volume.ReadAsync(0, back, null, default);
        Assert.All(back, b => Assert.Equal(0, b));
        Assert.Single(c.Store); // partial: zeroed in place, still allocated
        Assert.Empty(c.ZeroFaults);
    }

    // Proves whole segments covered by WRITE_ZEROES or TRIM become a controller table change (back to Zero, space freed) with no container write.
    [Fact]
    public async Task Whole_segment_zeroing_is_a_table_change()
    {
        int seg = 64 << 10;
        var c = new FakeController(segmentSizeBytes: seg);
        await c.Volume.WriteAsync(0, Pattern.For(0, 4 * seg, 5), default);
        Assert.Equal(4, c.Store.Count);
        long writes = c.Container.Writes;

        // Zero [seg/2, 3*seg): segment 0 partly (in place), segments 1 and 2 whole (table change).
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteZeroesAsync(seg / 2, 3 * seg - seg / 2, fastZero: false, noHole: false, default));
        Assert.Single(c.ZeroFaults);
        Assert.Equal(EntryStates.Zero, c.Volume.Table.Get(1).States);
        Assert.Equal(EntryStates.Zero, c.Volume.Table.Get(2).States);
        Assert.Equal(new long[] { 0, 3 }, c.Store.Keys.Order().ToArray());
        Assert.Equal(writes, c.Container.Writes); // the partial piece is zeroed in place (ZeroAsync), whole segments not at all

        var back = new byte[4 * seg];
        await c.Volume.ReadAsync(0, back, null, default);
        Assert.Equal(Pattern.For(0, seg / 2, 5), back.AsSpan(0, seg / 2).ToArray());
        Assert.All(back.AsSpan(seg / 2, 3 * seg - seg / 2).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(Pattern.For(3 * seg, seg, 5), back.AsSpan(3 * seg).ToArray());

        // TRIM of segment 3 plus a partial piece of segment 0: only the whole segment is released.
        Assert.Equal(IoStatus.Ok, await c.Volume.TrimAsync(100, 100, default));
        Assert.Equal(IoStatus.Ok, await c.Volume.TrimAsync(3 * seg, seg, default));
        Assert.Equal(new long[] { 0 }, c.Store.Keys.ToArray());
        // NO_HOLE keeps whole segments allocated: zeroed in place instead.
        await c.Volume.WriteAsync(seg, Pattern.For(seg, seg, 6), default);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteZeroesAsync(seg, seg, fastZero: false, noHole: true, default));
        Assert.True(c.Store.ContainsKey(1));
        // FAST_ZERO of whole segments is a table change, so it is allowed.
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteZeroesAsync(seg, seg, fastZero: true, noHole: false, default));
        Assert.False(c.Store.ContainsKey(1));
    }

    // Proves WaitForVolumeAsync completes exactly when the disk's table exists (what `tessera up` waits for before saying "serving").
    [Fact]
    public async Task Wait_for_volume_completes_when_the_table_arrives()
    {
        var c = new FakeController();
        await c.Core.WaitForVolumeAsync("d1", default).WaitAsync(Timeout); // already there
        var later = c.Core.WaitForVolumeAsync("d2", default);
        await Task.Delay(20);
        Assert.False(later.IsCompleted);
        await c.Command(new Command { DiskId = 43, CreateTable = new CreateTable { Name = "d2", SizeBytes = 1 << 20, SegmentSizeBytes = 64 << 10 } });
        await later.WaitAsync(Timeout);
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("condition not met");
            await Task.Delay(5);
        }
    }
}
