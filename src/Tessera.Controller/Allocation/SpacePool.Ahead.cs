namespace Tessera.Controller.Allocation;

/// <summary>Space for sequential allocate-ahead (docs/architecture.md, "Sequential allocate-ahead").</summary>
public sealed partial class SpacePool
{
    /// <summary>
    /// Allocate-ahead stops while the healthy containers' free space is below this fraction of their size
    /// (1/ReserveDivisor), so the last stretch of a filling pool is allocated exactly, one written segment at a time.
    /// </summary>
    public const int AheadReserveDivisor = 16;

    /// <summary>
    /// Takes <paramref name="units"/> aligned units for a segment mapped ahead of a sequential writer: only units
    /// that never held data (at or above a container's high-water mark, so they read as zeros with no zeroing and
    /// no flush), and only while the healthy containers keep at least 1/<see cref="AheadReserveDivisor"/> of their
    /// size free after this allocation. False otherwise: the caller simply maps less ahead.
    /// </summary>
    public bool TryAllocateAhead(int units, out ushort containerId, out long firstUnit)
    {
        lock (_lock)
        {
            containerId = 0;
            firstUnit = -1;
            long total = 0, free = 0;
            foreach (var (id, space) in _spaces)
            {
                if (_failed.Contains(id)) continue;
                total += space.TotalUnits;
                free += space.FreeUnits;
            }
            if (free - units < total / AheadReserveDivisor) return false;
            ContainerSpace? best = null;
            foreach (var (id, space) in _spaces)
            {
                if (_failed.Contains(id) || !space.FitsAboveHighWater(units)) continue;
                if (best is null || space.FreeUnits > best.FreeUnits || (space.FreeUnits == best.FreeUnits && id < containerId))
                {
                    best = space;
                    containerId = id;
                }
            }
            if (best is null) return false;
            firstUnit = best.Allocate(units, out bool neverUsed);
            if (firstUnit >= 0 && neverUsed) return true;
            // FitsAboveHighWater said the units above the mark fit, and Allocate prefers them: this is a bug.
            if (firstUnit >= 0) best.Free(firstUnit, units);
            throw new InvalidOperationException($"container {containerId} had never-used units but handed out others");
        }
    }
}
