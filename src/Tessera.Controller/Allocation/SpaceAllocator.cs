using System.Numerics;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Allocation;

/// <summary>
/// Free space of one container as a bitmap of 64 KiB units (<see cref="MapEntry.PhysicalUnitBytes"/>); a set bit is
/// a used unit. 1 TiB is 16 Mi bits = 2 MiB of memory. A segment of n units takes n contiguous units aligned to n
/// (n is a power of two), so segments of different disks never straddle each other and a freed segment leaves a
/// hole that the next segment of the same size fits exactly.
///
/// Not thread-safe: <see cref="SpacePool"/> serialises access. Not persisted: rebuilt from the segment map at start.
/// </summary>
public sealed class ContainerSpace
{
    private readonly ulong[] _bits;
    private long _cursor; // next-fit hint in units, so filling a container is not quadratic

    public ContainerSpace(long totalUnits) : this(totalUnits, totalUnits)
    {
    }

    /// <param name="totalUnits">The container's size in units.</param>
    /// <param name="highWaterUnit">Units at or above it never held data (the persisted mark; the size when unknown).</param>
    public ContainerSpace(long totalUnits, long highWaterUnit)
    {
        if (totalUnits < 0) throw new ArgumentOutOfRangeException(nameof(totalUnits));
        TotalUnits = totalUnits;
        HighWaterUnit = Math.Clamp(highWaterUnit, 0, totalUnits);
        _bits = new ulong[(totalUnits + 63) / 64];
    }

    /// <summary>
    /// Units at or above this were never handed out by this process nor held data before it started: they read as
    /// zeros. Only grows (a freed unit stays below it, so its reuse is zeroed). Every unit at or above it is free.
    /// </summary>
    public long HighWaterUnit { get; private set; }

    /// <summary>Raises the mark (a repair: the container's past became unknown).</summary>
    public void RaiseHighWater(long unit) => HighWaterUnit = Math.Clamp(Math.Max(HighWaterUnit, unit), 0, TotalUnits);

    public long TotalUnits { get; }

    public long UsedUnits { get; private set; }

    public long FreeUnits => TotalUnits - UsedUnits;

    public bool IsUsed(long unit) => (_bits[unit >> 6] & (1UL << (int)(unit & 63))) != 0;

    /// <summary>Finds and takes <paramref name="units"/> free units aligned to <paramref name="units"/>; -1 when none fits.</summary>
    public long Allocate(int units) => Allocate(units, out _);

    /// <summary>
    /// Like <see cref="Allocate(int)"/>, preferring never-used units (above the mark): <paramref name="neverUsed"/>
    /// says the units read as zeros already, so the caller need not zero them. Freed units are reused only when no
    /// never-used ones fit.
    /// </summary>
    public long Allocate(int units, out bool neverUsed)
    {
        if (units <= 0 || !BitOperations.IsPow2(units)) throw new ArgumentOutOfRangeException(nameof(units));
        neverUsed = false;
        if (units > FreeUnits) return -1;
        long fresh = (HighWaterUnit + units - 1) / units * units;
        if (fresh + units <= TotalUnits)
        {
            // Every unit at or above the mark is free, so no bitmap search is needed.
            SetRange(fresh, units, true);
            UsedUnits += units;
            HighWaterUnit = fresh + units;
            neverUsed = true;
            return fresh;
        }
        long slots = TotalUnits / units;
        if (slots == 0) return -1;
        long start = (_cursor / units) % slots;
        for (long i = 0; i < slots; i++)
        {
            long slot = start + i;
            if (slot >= slots) slot -= slots;
            long first = slot * units;
            if (RangeFree(first, units))
            {
                SetRange(first, units, true);
                UsedUnits += units;
                _cursor = first + units;
                // Starts below the mark (nothing aligned fits above it) but may end above it: keep "every unit at or
                // above the mark is free" true, or a smaller segment could later be handed units in use.
                HighWaterUnit = Math.Max(HighWaterUnit, first + units);
                return first;
            }
        }
        return -1;
    }

    /// <summary>True when <paramref name="units"/> aligned units fit at or above the mark (they never held data).</summary>
    public bool FitsAboveHighWater(int units) => units > 0 && (HighWaterUnit + units - 1) / units * units + units <= TotalUnits;

    /// <summary>Marks a range used (rebuilding from the store). Throws when any unit is already used: a double mapping is a bug.</summary>
    public void MarkUsed(long first, int units)
    {
        CheckRange(first, units);
        if (!RangeFree(first, units)) throw new InvalidOperationException($"units {first}..{first + units - 1} are mapped twice");
        SetRange(first, units, true);
        UsedUnits += units;
        HighWaterUnit = Math.Max(HighWaterUnit, first + units); // a mapped unit has held data, whatever the store said
    }

    public void Free(long first, int units)
    {
        CheckRange(first, units);
        for (long u = first; u < first + units; u++)
            if (!IsUsed(u)) throw new InvalidOperationException($"unit {u} freed twice");
        SetRange(first, units, false);
        UsedUnits -= units;
    }

    private void CheckRange(long first, int units)
    {
        if (first < 0 || units <= 0 || first + units > TotalUnits) throw new ArgumentOutOfRangeException(nameof(first), $"{first}+{units} outside 0..{TotalUnits}");
    }

    private bool RangeFree(long first, int units)
    {
        long u = first, end = first + units;
        while (u < end)
        {
            int bit = (int)(u & 63);
            int n = (int)Math.Min(64 - bit, end - u);
            ulong mask = (n == 64 ? ulong.MaxValue : ((1UL << n) - 1)) << bit;
            if ((_bits[u >> 6] & mask) != 0) return false;
            u += n;
        }
        return true;
    }

    private void SetRange(long first, int units, bool used)
    {
        long u = first, end = first + units;
        while (u < end)
        {
            int bit = (int)(u & 63);
            int n = (int)Math.Min(64 - bit, end - u);
            ulong mask = (n == 64 ? ulong.MaxValue : ((1UL << n) - 1)) << bit;
            if (used) _bits[u >> 6] |= mask;
            else _bits[u >> 6] &= ~mask;
            u += n;
        }
    }
}

/// <summary>
/// The pool: every healthy container's free space. New segments go to the container with the most free units
/// that can fit them, which spreads a fresh pool's load evenly and fills the emptiest container first later.
/// </summary>
public sealed partial class SpacePool
{
    private readonly Dictionary<ushort, ContainerSpace> _spaces = new();
    private readonly HashSet<ushort> _failed = new();
    private readonly object _lock = new();

    /// <param name="highWaterUnit">Units at or above it never held data; null (the default) when unknown: then none is trusted.</param>
    public void AddContainer(ushort id, long totalUnits, bool failed = false, long? highWaterUnit = null)
    {
        lock (_lock)
        {
            _spaces.Add(id, new ContainerSpace(totalUnits, highWaterUnit ?? totalUnits));
            if (failed) _failed.Add(id);
        }
    }

    /// <summary>Marks a location used while rebuilding from the store.</summary>
    public void MarkUsed(ushort containerId, long firstUnit, int units)
    {
        lock (_lock)
        {
            if (!_spaces.TryGetValue(containerId, out var space)) throw new InvalidOperationException($"segment map names unknown container {containerId}");
            space.MarkUsed(firstUnit, units);
        }
    }

    /// <summary>Marks a location used if its container exists and the range is free; false otherwise.</summary>
    public bool TryMarkUsed(ushort containerId, long firstUnit, int units)
    {
        lock (_lock)
        {
            if (!_spaces.TryGetValue(containerId, out var space) || firstUnit < 0 || firstUnit + units > space.TotalUnits) return false;
            for (long u = firstUnit; u < firstUnit + units; u++) if (space.IsUsed(u)) return false;
            space.MarkUsed(firstUnit, units);
            return true;
        }
    }

    /// <summary>Takes <paramref name="units"/> aligned units from the emptiest container that fits them; false when none does (ENOSPC).</summary>
    public bool TryAllocate(int units, out ushort containerId, out long firstUnit) =>
        TryAllocateExcept(NoContainer, units, out containerId, out firstUnit, out _); // container ids start at 1

    /// <summary>
    /// <see cref="TryAllocate(int, out ushort, out long)"/> that also says whether the units never held data (read as
    /// zeros already). The caller must persist the container's mark past them before anything writes there.
    /// </summary>
    public bool TryAllocate(int units, out ushort containerId, out long firstUnit, out bool neverUsed) =>
        TryAllocateExcept(NoContainer, units, out containerId, out firstUnit, out neverUsed);

    /// <summary>The in-memory mark of a container (0 when unknown).</summary>
    public long HighWaterUnit(ushort containerId)
    {
        lock (_lock) return _spaces.TryGetValue(containerId, out var s) ? s.HighWaterUnit : 0;
    }

    /// <summary>Trusts none of a container's units as never used any more (after a repair).</summary>
    public void ForgetNeverUsed(ushort containerId)
    {
        lock (_lock)
            if (_spaces.TryGetValue(containerId, out var s)) s.RaiseHighWater(s.TotalUnits);
    }

    /// <summary>No container has id 0.</summary>
    private const ushort NoContainer = 0;

    public void Free(ushort containerId, long firstUnit, int units)
    {
        lock (_lock) _spaces[containerId].Free(firstUnit, units);
    }

    public (long TotalUnits, long UsedUnits) Usage(ushort containerId)
    {
        lock (_lock)
            return _spaces.TryGetValue(containerId, out var s) ? (s.TotalUnits, s.UsedUnits) : (0, 0);
    }
}
