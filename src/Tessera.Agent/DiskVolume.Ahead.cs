using System.Runtime.CompilerServices;
using Tessera.Core;
using Tessera.Core.Mapping;

namespace Tessera.Agent;

// Ahead-requests (docs/architecture.md, "Ahead-requests"). The controller maps a window of segments ahead of a
// sequential writer (allocate-ahead), but when the writer reaches the window's end its in-flight writes all fault and
// wait for one commit and push: a stall per window. So while a writer is sequential, the volume looks
// AheadDistanceSegments past the segment it is writing; when that entry would make a write fault (Zero: not allocated
// yet; Invalid: not loaded), it sends a write fault for the first such segment past the writer, and nothing waits on
// it. The controller serves it like the writer's own fault would be served at the window's end — one commit maps the
// segment and the next window — so the writer finds its next segments mapped before it gets there.
//
// Bounded: at most one ahead-request in flight per volume; none while the lease is lapsed (AgentCore.Ahead.cs); none
// for a writer that is not sequential (SequentialWritesBeforeAhead writes in a row, each continuing the previous one);
// none for a while after the controller refused one for want of never-used space above the pool's reserve. What it can
// cost: the segment it allocates may never be written if the writer stops, at most AheadDistanceSegments past its last
// write, which is within the window allocate-ahead may map anyway.
public sealed partial class DiskVolume
{
    /// <summary>
    /// How far past the segment being written the volume looks: half the controller's default allocate-ahead window
    /// (32), so the next window is asked for when the writer is half-way through the current one.
    /// </summary>
    public const int AheadDistanceSegments = 16;

    /// <summary>Writes in a row, each starting within a segment of where the previous one ended, before a writer counts as sequential.</summary>
    public const int SequentialWritesBeforeAhead = 4;

    /// <summary>After a refusal, no ahead-request until the writer has passed this many segments beyond the refused one.</summary>
    public const int AheadPauseSegments = 64;

    // Racy on purpose: concurrent writes update these with plain loads and stores. A lost update only delays or skips an
    // ahead-request (a performance hint); what the controller does with one is safe whatever the agent sends.
    private long _aheadLastSegment = long.MinValue / 2;
    private int _sequentialWrites;
    private long _aheadPausedBelow = long.MinValue;
    private int _aheadInFlight;
    private long _aheadRequests;

    /// <summary>Ahead-requests this volume sent (for tests and diagnostics).</summary>
    public long AheadRequests => Interlocked.Read(ref _aheadRequests);

    /// <summary>True while an ahead-request of this volume waits for its answer (for tests).</summary>
    internal bool AheadInFlight => Volatile.Read(ref _aheadInFlight) != 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void NoteWrite(long offset, int length)
    {
        if (length <= 0) return;
        long first = offset >> SegmentShift, last = (offset + length - 1) >> SegmentShift;
        long previous = Volatile.Read(ref _aheadLastSegment);
        if (last != previous) Volatile.Write(ref _aheadLastSegment, last);
        if (first < previous - 1 || first > previous + 1)
        {
            // A new stream (or a random writer): start counting again; a refusal seen by an earlier stream no longer holds it back.
            if (_sequentialWrites != 0) _sequentialWrites = 0;
            if (_aheadPausedBelow != long.MinValue) _aheadPausedBelow = long.MinValue;
            return;
        }
        if (_sequentialWrites < SequentialWritesBeforeAhead)
        {
            _sequentialWrites++;
            return;
        }
        MaybeRequestAhead(last);
    }

    private void MaybeRequestAhead(long last)
    {
        if (Volatile.Read(ref _aheadInFlight) != 0 || last < Volatile.Read(ref _aheadPausedBelow)) return;
        var table = _table;
        long probe = Math.Min(last + AheadDistanceSegments, table.SegmentCount - 1);
        if (probe <= last || !_faults.LeaseHolds() || !AwaitsWriteFault(table.Get(probe))) return;
        long target = last + 1;
        while (target < probe && !AwaitsWriteFault(table.Get(target))) target++;
        if (Interlocked.CompareExchange(ref _aheadInFlight, 1, 0) != 0) return;
        _ = RequestAheadAsync(target);
    }

    /// <summary>Entries a write would fault on to allocate (Zero) or to load (Invalid). Not NoWrite: an ahead-request copies nothing.</summary>
    private static bool AwaitsWriteFault(MapEntry entry)
    {
        var states = entry.States;
        return (states & EntryStates.Invalid) != 0 || (states & (EntryStates.Zero | EntryStates.Error)) == EntryStates.Zero;
    }

    private async Task RequestAheadAsync(long segment)
    {
        try
        {
            Interlocked.Increment(ref _aheadRequests);
            var result = await _faults.AheadFaultAsync(this, segment, CancellationToken.None);
            if (!result.Retry && result.Status == IoStatus.NoSpace) Volatile.Write(ref _aheadPausedBelow, segment + AheadPauseSegments);
            else if (!result.Retry && result.Status == IoStatus.NotSupported) Volatile.Write(ref _aheadPausedBelow, long.MaxValue);
        }
        catch (OperationCanceledException)
        {
            // The volume closed or the agent is stopping: nothing waited on it.
        }
        finally
        {
            Volatile.Write(ref _aheadInFlight, 0);
        }
    }
}
