// Sequential allocate-ahead (docs/architecture.md, "Sequential allocate-ahead"). A thin disk's first writes each cost
// a fault round trip, a blocking Invalid push to every holder and a synchronous commit, serialised per disk; for a
// sequential writer that per-segment cost capped a fresh disk at a fraction of an allocated one. When a write fault
// continues the disk's last allocation, the lock holder also maps the next `window` segments (the window doubles
// from 1 on each sequential fault up to AllocateAheadSegments, and collapses to 0 on a fault elsewhere) in the same
// transaction, from never-used units only (they read as zeros without zeroing, so a mapped but unwritten segment still
// reads zeros), and pushes Invalid for them in the same pushes as the batch. The writer's next writes then find
// their segments mapped and never fault.

using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Tessera.Controller.Store;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Mapping;

public sealed partial class DiskCoordinator
{
    /// <summary>Default bound of the allocate-ahead window, in segments.</summary>
    public const int DefaultAllocateAheadSegments = 32;

    /// <summary>Largest window an option may ask for.</summary>
    public const int MaxAllocateAheadSegments = 256;

    private int _allocateAheadSegments = DefaultAllocateAheadSegments;

    // Its own Meter instance (same name): the order of static initialisers across partial files is not defined.
    private static readonly Counter<long> s_allocatedAhead = new Meter("Tessera.Controller").CreateCounter<long>(
        "tessera.controller.allocated_ahead", description: "segments mapped ahead of a sequential writer");

    /// <summary>Bound of the allocate-ahead window in segments; 0 disables allocate-ahead.</summary>
    public int AllocateAheadSegments
    {
        get => Volatile.Read(ref _allocateAheadSegments);
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, MaxAllocateAheadSegments);
            Volatile.Write(ref _allocateAheadSegments, value);
        }
    }

    // Per disk, read and written only under the disk's lock. Volatile memory on purpose: after a restart a writer
    // simply starts again at window 0.
    private readonly ConcurrentDictionary<ulong, SequentialState> _sequential = new();

    private sealed class SequentialState
    {
        public long NextSegment = -1; // one past the last segment the disk's last allocation mapped
        public int Window;
    }

    /// <summary>The disk's current allocate-ahead window (for tests).</summary>
    internal int AllocateAheadWindow(ulong diskId) => _sequential.TryGetValue(diskId, out var s) ? s.Window : 0;

    /// <summary>
    /// Adds to <paramref name="taken"/> the segments mapped ahead of a sequential writer, with their units. Caller holds
    /// the disk lock and has taken the batch (<paramref name="faultSegment"/> and the queued faults' segments) already.
    /// </summary>
    private void TakeAhead(DiskRow disk, long faultSegment, List<(long Segment, MapEntry Entry, bool NeverUsed)> taken)
    {
        var state = _sequential.GetOrAdd(disk.Id, _ => new SequentialState());
        int bound = AllocateAheadSegments;
        // Sequential: this allocation includes the segment right after the disk's last one — the fault's own, or that of
        // a fault queued behind it (a writer at queue depth n has up to n first writes in flight, and they need not
        // reach the lock in order). Anything looser took writes a few segments apart for a stream.
        bool sequential = state.NextSegment >= 0 && taken.Any(t => t.Segment == state.NextSegment);
        state.Window = !sequential || bound == 0 ? 0 : Math.Min(bound, Math.Max(1, state.Window * 2));
        if (state.Window == 0) return;

        long batchEnd = taken.Max(t => t.Segment) + 1;
        long from = state.NextSegment; // also fills the batch's gaps: in-flight writes whose faults have not arrived yet
        long end = Math.Min(disk.SegmentCount, batchEnd + state.Window);
        if (from >= end) return;
        var inBatch = taken.Select(t => t.Segment).ToHashSet();
        var stored = _store.GetSegments(disk.Id, from, end - from).ToDictionary(r => r.Segment, r => r.Entry.States);
        int units = disk.UnitsPerSegment;
        for (long s = from; s < end; s++)
        {
            if (inBatch.Contains(s)) continue;
            // Only segments the store calls Zero (no row is Zero too): never a mapped, shared or Error one.
            if (stored.TryGetValue(s, out var states) && ((states & EntryStates.Zero) == 0 || (states & EntryStates.Error) != 0)) continue;
            if (!_pool.TryAllocateAhead(units, out ushort container, out long first)) break; // short of space: map less ahead
            taken.Add((s, MapEntry.Mapped(container, first), true));
            s_allocatedAhead.Add(1);
        }
    }

    /// <summary>Remembers where the disk's allocation ended, after its commit. Caller holds the disk lock.</summary>
    private void RecordAllocated(ulong diskId, IEnumerable<long> segments)
    {
        var state = _sequential.GetOrAdd(diskId, _ => new SequentialState());
        state.NextSegment = segments.Max() + 1;
    }

    /// <summary>Pushes Invalid for the allocated segments, one range command per run of consecutive segments.</summary>
    private Task PushInvalidRunsAsync(ulong diskId, IEnumerable<long> segments)
    {
        var sorted = segments.Order().ToList();
        var pushes = new List<Task>();
        int i = 0;
        while (i < sorted.Count)
        {
            int j = i + 1;
            while (j < sorted.Count && sorted[j] == sorted[j - 1] + 1) j++;
            pushes.Add(PushAsync(diskId, sorted[i], j - i, MapEntry.Invalid, blocking: false, except: null));
            i = j;
        }
        return Task.WhenAll(pushes);
    }
}
