using Tessera.Controller.Store;

namespace Tessera.Controller.Mapping;

/// <summary>
/// Releases a previous controller committed but may not have completed (ControllerStore.Releasing.cs): their units
/// stay taken for this controller's first lease, by when every lease that controller granted has lapsed, and only
/// then go back to the pool. Without this, a restarted controller rebuilt its free space from the map alone and
/// could hand such a unit to another disk while an agent that had not heard of the release still read and wrote it
/// (found by the deterministic simulation: seed 7000199 read another disk's data).
/// </summary>
public sealed partial class DiskCoordinator
{
    private Task _inheritedReleasesFreed = Task.CompletedTask;

    /// <summary>Takes the units of unfinished releases out of the free space; frees them after the first lease. Call once, before any fault.</summary>
    private void HoldBackInheritedReleases()
    {
        var held = new List<(PhysicalLocation Location, int Units)>();
        foreach (var (location, units) in _store.ListReleasing())
        {
            if (units <= 0 || !_pool.TryMarkUsed(location.ContainerId, location.PhysicalIndex, units)) continue; // container gone, or mapped again
            held.Add((location, units));
        }
        if (held.Count > 0) _inheritedReleasesFreed = FreeAfterFirstLeaseAsync(held);
    }

    private async Task FreeAfterFirstLeaseAsync(List<(PhysicalLocation Location, int Units)> held)
    {
        try
        {
            await WaitAsync(FirstLeaseRemaining).ConfigureAwait(false);
            _store.ForgetReleasing(held.Select(h => h.Location).ToList());
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or Microsoft.Data.Sqlite.SqliteException)
        {
            return; // stopping: the next controller holds them back again
        }
        foreach (var (location, units) in held) _pool.Free(location.ContainerId, location.PhysicalIndex, units);
    }

    /// <summary>
    /// When an allocation found no space while units of an unfinished release are held back: waits until they are
    /// free and returns true (the caller tries again), rather than failing a write with ENOSPC for one lease.
    /// </summary>
    private async Task<bool> WaitForHeldBackSpaceAsync()
    {
        if (_inheritedReleasesFreed.IsCompleted) return false;
        await _inheritedReleasesFreed.ConfigureAwait(false);
        return true;
    }
}
