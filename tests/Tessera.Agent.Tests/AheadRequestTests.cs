using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>Ahead-requests: when a volume asks for its next window, and when not (docs/architecture.md, "Ahead-requests").</summary>
public class AheadRequestTests
{
    private const int Seg = 64 << 10;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private static async Task WriteSegmentAsync(FakeController c, long segment, byte generation = 1) =>
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(segment * Seg, Pattern.For(segment * Seg, Seg, generation), default).AsTask().WaitAsync(Timeout));

    // Proves the first ahead-request goes out exactly when the writer has continued SequentialWritesBeforeAhead writes
    // (not one write earlier), for the first segment past the writer that a write would fault on, marked ahead and write;
    // that no second one is sent while it is in flight; that writes landing on its segment meanwhile fault on their own
    // (never waiting on it) and read back what they wrote, also after its answer is installed; and that the next one
    // goes out once it was answered.
    [Fact]
    public async Task Sequential_writer_asks_once_ahead_and_writes_under_it_stay_correct()
    {
        var c = new FakeController(sizeBytes: 128L * Seg) { HoldAhead = true };
        for (long s = 0; s < 5; s++) await WriteSegmentAsync(c, s);
        Assert.Empty(c.AheadFaults); // 1 write starting the stream + 4 continuing it: not yet
        await WriteSegmentAsync(c, 5);
        var ahead = Assert.Single(c.AheadFaults);
        Assert.True(ahead.Ahead && ahead.Write && !ahead.Zero);
        Assert.Equal(6ul, ahead.Segment);
        Assert.True(c.Volume.AheadInFlight);

        long realFaults = c.Core.Counters.FaultsSent;
        for (long s = 6; s < 12; s++) await WriteSegmentAsync(c, s, 2); // segment 6 is the one the held request asked for
        Assert.Single(c.AheadFaults); // bounded: one in flight
        Assert.Equal(realFaults + 6, c.Core.Counters.FaultsSent); // each write faulted itself; none waited on the held request

        c.Answer(ahead); // the store already maps segment 6 (the write's own fault): the answer installs the same entry
        await WaitUntil(() => !c.Volume.AheadInFlight);
        Assert.Equal(c.Store[6], c.Volume.Table.Get(6));
        var buffer = new byte[Seg];
        for (long s = 0; s < 12; s++)
        {
            Assert.Equal(IoStatus.Ok, await c.Volume.ReadAsync(s * Seg, buffer, null, default));
            Assert.Equal(Pattern.For(s * Seg, Seg, s < 6 ? (byte)1 : (byte)2), buffer);
        }
        await WriteSegmentAsync(c, 12, 2);
        Assert.Equal(2, c.AheadFaults.Count);
        Assert.Equal(2, c.Volume.AheadRequests);
    }

    // Proves a random writer never asks ahead: 400 4 KiB writes at random offsets over 1024 segments send none.
    [Fact]
    public async Task Random_writer_never_asks_ahead()
    {
        var c = new FakeController(sizeBytes: 1024L * Seg);
        var random = new Random(5);
        for (int i = 0; i < 400; i++)
        {
            long offset = random.NextInt64(0, 1024L * Seg / 4096) * 4096;
            Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(offset, new byte[4096], default));
        }
        Assert.Empty(c.AheadFaults);
        Assert.Equal(0, c.Volume.AheadRequests);
        // The same volume written sequentially does ask: the count above was not zero for want of a working detector.
        for (long s = 500; s < 510; s++) await WriteSegmentAsync(c, s);
        Assert.NotEmpty(c.AheadFaults);
    }

    // Proves no ahead-request is sent while the lease is lapsed (the writer is sequential and the entry ahead would fault),
    // and that one is sent again once a heartbeat renewed the lease.
    [Fact]
    public async Task No_ahead_request_during_a_lease_lapse()
    {
        var c = new FakeController(sizeBytes: 128L * Seg) { HoldAhead = true };
        for (long s = 0; s < 5; s++) await WriteSegmentAsync(c, s);
        c.Time.Advance(TimeSpan.FromMilliseconds(10_000 * AgentCore.LeaseSafetyFraction + 1));
        Assert.False(c.Core.CheckLease());
        var write = c.Volume.WriteAsync(5L * Seg, Pattern.For(5L * Seg, Seg, 1), default).AsTask(); // faults; its answer is held
        await WaitUntil(() => Interlocked.Read(ref c.Core.Counters.AnswersHeldWhileLapsed) >= 1);
        Assert.Empty(c.AheadFaults);
        Assert.Equal(0, c.Volume.AheadRequests);
        c.Core.RenewLease(c.Time.GetTimestamp());
        Assert.Equal(IoStatus.Ok, await write.WaitAsync(Timeout));
        await WriteSegmentAsync(c, 6);
        Assert.Single(c.AheadFaults);
    }

    // Proves an ahead-request's answer that arrives during a lapse is dropped, not held and asked again like a write's:
    // nothing is installed, nothing is resent after the renewal, and the volume may ask again.
    [Fact]
    public async Task Ahead_answer_during_a_lapse_is_dropped()
    {
        var c = new FakeController(sizeBytes: 128L * Seg) { HoldAhead = true };
        for (long s = 0; s < 6; s++) await WriteSegmentAsync(c, s);
        var ahead = Assert.Single(c.AheadFaults);
        c.Time.Advance(TimeSpan.FromMilliseconds(10_000 * AgentCore.LeaseSafetyFraction + 1));
        Assert.False(c.Core.CheckLease());
        c.Answer(ahead);
        await WaitUntil(() => !c.Volume.AheadInFlight);
        Assert.Equal(0, Interlocked.Read(ref c.Core.Counters.AnswersHeldWhileLapsed));
        c.Core.RenewLease(c.Time.GetTimestamp());
        Assert.Equal(MapEntry.Invalid, c.Volume.Table.Get((long)ahead.Segment));
        Assert.Single(c.AheadFaults); // not sent again
        await WriteSegmentAsync(c, 6);
        Assert.Equal(2, c.AheadFaults.Count);
    }

    // Proves a refusal (no never-used space above the reserve) holds the writer's ahead-requests back until it has passed
    // AheadPauseSegments beyond the refused segment, and that its writes are served normally meanwhile: over 101 segments,
    // exactly two requests (at segments 6 and 71), every write succeeding.
    [Fact]
    public async Task A_refusal_pauses_ahead_requests()
    {
        var c = new FakeController(sizeBytes: 256L * Seg) { RefuseAhead = true };
        for (long s = 0; s <= 100; s++)
        {
            await WriteSegmentAsync(c, s);
            await WaitUntil(() => !c.Volume.AheadInFlight);
        }
        Assert.Equal(new ulong[] { 6, 6 + DiskVolume.AheadPauseSegments + 1 }, c.AheadFaults.Select(f => f.Segment));
        Assert.Equal(2, Interlocked.Read(ref c.Core.Counters.AheadRequestsRefused));
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
