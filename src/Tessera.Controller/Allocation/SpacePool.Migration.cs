namespace Tessera.Controller.Allocation;

/// <summary>Placement choices for migration, failure marking and container removal.</summary>
public sealed partial class SpacePool
{
    /// <summary>Takes aligned units on one given container; false when it is failed, unknown or full.</summary>
    public bool TryAllocateOn(ushort containerId, int units, out long firstUnit)
    {
        lock (_lock)
        {
            firstUnit = -1;
            if (_failed.Contains(containerId) || !_spaces.TryGetValue(containerId, out var space) || space.FreeUnits < units) return false;
            firstUnit = space.Allocate(units);
            return firstUnit >= 0;
        }
    }

    /// <summary>Takes aligned units from the emptiest healthy container other than <paramref name="excluded"/>.</summary>
    public bool TryAllocateExcept(ushort excluded, int units, out ushort containerId, out long firstUnit) =>
        TryAllocateExcept(excluded, units, out containerId, out firstUnit, out _);

    private bool TryAllocateExcept(ushort excluded, int units, out ushort containerId, out long firstUnit, out bool neverUsed)
    {
        lock (_lock)
        {
            foreach (var (_, id) in _spaces.Where(s => s.Key != excluded && !_failed.Contains(s.Key) && s.Value.FreeUnits >= units)
                         .Select(s => (s.Value.FreeUnits, s.Key)).OrderByDescending(s => s.FreeUnits).ThenBy(s => s.Key).ToList())
            {
                long first = _spaces[id].Allocate(units, out neverUsed);
                if (first >= 0)
                {
                    containerId = id;
                    firstUnit = first;
                    return true;
                }
            }
            containerId = 0;
            firstUnit = -1;
            neverUsed = false;
            return false;
        }
    }

    /// <summary>A failed container gets no new segments (its used space stays accounted until its rows go).</summary>
    public void SetFailed(ushort containerId, bool failed)
    {
        lock (_lock)
        {
            if (failed) _failed.Add(containerId);
            else _failed.Remove(containerId);
        }
    }

    public bool IsFailed(ushort containerId)
    {
        lock (_lock) return _failed.Contains(containerId);
    }

    /// <summary>Forgets an empty container; false when any unit is still used.</summary>
    public bool RemoveContainer(ushort containerId)
    {
        lock (_lock)
        {
            if (_spaces.TryGetValue(containerId, out var space) && space.UsedUnits != 0) return false;
            _spaces.Remove(containerId);
            _failed.Remove(containerId);
            return true;
        }
    }
}
