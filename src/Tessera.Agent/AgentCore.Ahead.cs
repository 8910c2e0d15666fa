using Tessera.Core;
using Tessera.Core.Protocol;

namespace Tessera.Agent;

// Ahead-requests (docs/architecture.md, "Ahead-requests"): the write fault a sequential writer's volume sends for the
// end of its mapped window before any write needs it (DiskVolume.Ahead.cs decides when). It is an ordinary map fault
// on the wire (MapFault.ahead set) and its answer is installed like any other, under the lease gate; it differs only
// where nothing waits on it:
// - none is sent while the lease is lapsed, and an answer arriving during a lapse is dropped rather than held and asked
//   again (a held one would be resent after the renewal, for a writer that may be long gone);
// - it is never coalesced with a real write fault on the same segment, in either direction: the controller may refuse
//   an ahead-request (no never-used space above the reserve) where it would serve the write, so a write must never
//   wait on an ahead-request's answer. A write landing on the segment meanwhile sends its own fault, which the
//   controller serves after the ahead-request under the disk lock, from the store.
public sealed partial class AgentCore
{
    public async ValueTask<FaultResult> AheadFaultAsync(DiskVolume volume, long segment, CancellationToken cancellationToken)
    {
        if (!LeaseHolds()) return FaultResult.Fail(IoStatus.Shutdown);
        var pending = new PendingFault((volume.DiskId, segment, true), new MapFault
        {
            FaultId = (ulong)Interlocked.Increment(ref _nextFaultId),
            DiskId = volume.DiskId,
            Segment = (ulong)segment,
            Write = true,
            Ahead = true,
            SeenEntry = volume.Table.Get(segment).Raw,
        }, coalesced: false);
        _faultsById[pending.Message.FaultId] = pending;
        Interlocked.Increment(ref Counters.AheadRequestsSent);
        SendFault(pending);
        var result = await WaitForAnswerAsync(volume, segment, pending, cancellationToken);
        if (!result.Retry && result.Status == IoStatus.NoSpace) Interlocked.Increment(ref Counters.AheadRequestsRefused);
        return result;
    }

    /// <summary>Under _leaseGate, during a lapse: completes an ahead-request without installing its answer.</summary>
    private void DropAheadAnswer(PendingFault pending) => CompleteFault(pending.Message.FaultId, FaultResult.Fail(IoStatus.Shutdown));
}
