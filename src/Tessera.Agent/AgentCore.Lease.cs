using Tessera.Core.Protocol;

namespace Tessera.Agent;

// The lease is enforced where the agent acts, not only by the periodic check (simulation seed 40000643 of the
// 0a2b85e run). A stream silent for longer than the lease later delivered a heartbeat ack and fault answers: the late
// ack cleared the lapse although the heartbeat it acknowledged was sent more than a lease ago, and the answers were
// installed and used for writes, while the controller had already counted the session as lapsed and dropped it when
// the host reconnected. So:
// - a renewal counts only if the acknowledged heartbeat was sent less than a lease ago (ExtendLease);
// - a fault answer that arrives while the lease is lapsed is not installed; the fault stays pending and is asked
//   again once the lease is renewed (or at the next registration, which sends every pending fault again);
// - table changes pushed while lapsed are skipped: every entry is already Invalid, which is stricter than any push;
// - the data path checks the lease before each lookup, so I/O stops at the lapse itself rather than at the next tick
//   of the lease loop.
// The check and the install happen under _leaseGate, as do the lapse and its invalidation, so no entry can be
// installed between the moment the lease runs out and the moment the tables are invalidated.
public sealed partial class AgentCore
{
    private readonly object _leaseGate = new();

    /// <summary>Extends the lease to a heartbeat sent at <paramref name="sentTimestamp"/>; true when this ended a lapse.</summary>
    private bool ExtendLease(long sentTimestamp)
    {
        long expires = sentTimestamp + (long)(LeaseMs * LeaseSafetyFraction * _time.TimestampFrequency / 1000);
        lock (_leaseGate)
        {
            // A lease that ran out unnoticed is lapsed first (tables invalidated), so a renewal never revives entries
            // that were loaded under the lease that ran out.
            CheckLease();
            if (expires > _leaseExpiresAtTicks) Volatile.Write(ref _leaseExpiresAtTicks, expires);
            // An ack that arrives after the lease ran out may be for a heartbeat sent long ago: it proves nothing about now.
            if (!_leaseLapsed || _time.GetTimestamp() >= _leaseExpiresAtTicks) return false;
            Volatile.Write(ref _leaseLapsed, false);
            return true;
        }
    }

    /// <summary>Checks the lease; on lapse invalidates every table. Returns true while the lease holds.</summary>
    public bool CheckLease()
    {
        lock (_leaseGate)
        {
            if (_leaseLapsed) return false;
            if (_time.GetTimestamp() < _leaseExpiresAtTicks) return true;
            Volatile.Write(ref _leaseLapsed, true);
            foreach (var v in _volumesById.Values) v.Table.InvalidateAll();
        }
        Log.LeaseLapsed(_logger, LeaseMs);
        return false;
    }

    /// <summary>
    /// The data path's check, before each table lookup: lock-free while the lease holds; once it ran out, lapses it
    /// (invalidating every table) so nothing looked up from then on can be used.
    /// </summary>
    public bool LeaseHolds()
    {
        if (Volatile.Read(ref _leaseLapsed)) return false;
        if (_time.GetTimestamp() < Volatile.Read(ref _leaseExpiresAtTicks)) return true;
        return CheckLease();
    }

    /// <summary>Under _leaseGate, during a lapse: drops a map fault's answer; the fault is asked again after the renewal.</summary>
    private void HoldAnswer(PendingFault pending)
    {
        pending.AnswerHeld = true;
        Interlocked.Increment(ref Counters.AnswersHeldWhileLapsed);
    }

    /// <summary>After a renewal: asks again for the faults whose answers were dropped during the lapse.</summary>
    private void ResendHeldFaults()
    {
        IControllerLink? link;
        lock (_linkLock) link = _link;
        if (link is null) return; // the next registration sends every pending fault
        lock (_leaseGate)
        {
            foreach (var pending in _faultsById.Values)
            {
                if (!pending.AnswerHeld) continue;
                pending.AnswerHeld = false;
                link.Send(new AgentMessage { Fault = pending.Message });
            }
        }
    }
}
