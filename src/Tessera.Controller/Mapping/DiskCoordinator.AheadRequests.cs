// Ahead-requests (docs/architecture.md, "Ahead-requests"). Allocate-ahead maps a window of segments past a sequential
// writer, but the writer still stalls when it reaches the window's end: its in-flight writes all fault and wait for one
// commit and push. So the agent sends the write fault for the window's end itself when the writer is half-way through
// the window, with no I/O waiting on it (MapFault.ahead). The controller runs it through the ordinary write-fault path
// (disk lock, Invalid push to every holder before the answer, group commit, allocate-ahead window, lease waits); an
// ahead-request differs only in what it may not do, because no written byte needs it yet:
// - it takes only never-used units, and never the pool's reserve (SpacePool.TryAllocateAhead, the rule of every segment
//   mapped ahead): refused with NO_SPACE otherwise, so the writer's real fault later allocates exactly as before;
// - it never copies on write (a shared segment is only loaded) and never joins another fault's batch.

using System.Diagnostics.Metrics;
using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Mapping;

public sealed partial class DiskCoordinator
{
    private static readonly Counter<long> s_aheadRefused = new Meter("Tessera.Controller").CreateCounter<long>(
        "tessera.controller.ahead_requests_refused", description: "ahead-requests refused: no never-used units above the reserve");

    /// <summary>
    /// Takes never-used units above the reserve for an ahead-request's own segment (the first of
    /// <paramref name="segments"/>, removed from it). False, taking nothing, when there are none.
    /// </summary>
    private bool TakeRequestedAhead(long segment, int units, List<long> segments, List<(long Segment, MapEntry Entry, bool NeverUsed)> taken)
    {
        if (!_pool.TryAllocateAhead(units, out ushort container, out long first)) return false;
        segments.Remove(segment);
        taken.Add((segment, MapEntry.Mapped(container, first), true));
        return true;
    }

    private static FaultResponse RefuseAhead(MapFault fault)
    {
        s_aheadRefused.Add(1);
        return Fail(fault, IoStatus.NoSpace, "ahead-request refused: no never-used space above the pool's reserve");
    }
}
