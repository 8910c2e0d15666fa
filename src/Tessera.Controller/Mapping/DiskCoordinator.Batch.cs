// Group commit for thin allocation. Faults of one disk run one at a time under the disk's lock, and each thin
// allocation ends in a synchronous SQLite commit (an fsync). A sequential writer at queue depth 8 has 8 first
// writes outstanding, to 8 different segments, so 7 of them wait on the lock while the 8th commits. The fault that
// holds the lock therefore also allocates the segments of the write faults queued behind it for the same disk, and
// commits them all in one transaction; when the queued faults get the lock they find their segment mapped and are
// answered with the stored entry (the path of any stale fault). Every rule of a single allocation holds per
// segment: each new location reads zeros (never used, or zeroed and flushed) before the commit, the commit
// precedes every push and answer, and the pushes to other holders complete before the lock is released.

using System.Collections.Concurrent;
using Tessera.Controller.Agents;
using Tessera.Controller.Store;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Mapping;

public sealed partial class DiskCoordinator
{
    /// <summary>At most this many queued faults join one allocation's transaction.</summary>
    public const int MaxAllocationBatch = 64;

    // Write faults waiting for their disk's lock, per disk: candidates for the lock holder's batch.
    private readonly ConcurrentDictionary<ulong, ConcurrentDictionary<long, (AgentSession Session, MapFault Fault)>> _waitingWrites = new();
    private long _waitingSequence;

    /// <summary>Write faults of a disk waiting for its lock (for tests).</summary>
    internal int WaitingWrites(ulong diskId) => _waitingWrites.TryGetValue(diskId, out var w) ? w.Count : 0;

    private long EnterWaiting(AgentSession session, MapFault fault)
    {
        if (!fault.Write || fault.Zero || fault.Ahead) return 0; // an ahead-request's segment is never batched: it may not take reused units or the reserve
        long ticket = Interlocked.Increment(ref _waitingSequence);
        _waitingWrites.GetOrAdd(fault.DiskId, _ => new()).TryAdd(ticket, (session, fault));
        return ticket;
    }

    private void LeaveWaiting(ulong diskId, long ticket)
    {
        if (ticket != 0 && _waitingWrites.TryGetValue(diskId, out var waiting)) waiting.TryRemove(ticket, out _);
    }

    /// <summary>
    /// Segments (other than <paramref name="segment"/>) that write faults queued on this disk's lock will allocate:
    /// stored Zero, within the disk, from an open session with a writable presentation. Caller holds the disk lock.
    /// </summary>
    private List<long> QueuedZeroSegments(DiskRow disk, long segment)
    {
        var result = new List<long>();
        if (!_waitingWrites.TryGetValue(disk.Id, out var waiting) || waiting.IsEmpty) return result;
        var seen = new HashSet<long> { segment };
        var writable = new Dictionary<string, bool>();
        foreach (var (_, (session, fault)) in waiting)
        {
            if (result.Count >= MaxAllocationBatch - 1) break;
            if (session.IsClosed || fault.Segment >= (ulong)disk.SegmentCount) continue;
            long s = (long)fault.Segment;
            if (!seen.Add(s)) continue;
            if (!writable.TryGetValue(session.Host, out bool canWrite))
                writable[session.Host] = canWrite = _store.ListPresentations(disk.Id, session.Host).FirstOrDefault() is { ReadOnly: false };
            if (!canWrite) continue;
            var states = _store.GetEntry(disk.Id, s).States;
            if ((states & EntryStates.Zero) != 0 && (states & EntryStates.Error) == 0) result.Add(s);
        }
        result.Sort();
        return result;
    }
}
