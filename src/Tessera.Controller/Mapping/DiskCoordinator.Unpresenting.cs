namespace Tessera.Controller.Mapping;

/// <summary>
/// Unpresents a previous controller committed but may not have completed (ControllerStore.Unpresenting.cs): the host
/// may not have answered its DeleteTable and may still serve I/O from the table under that controller's lease, yet no
/// presentation row names it. For this controller's first lease such a host counts as a holder that has not
/// registered, like a presented one (UnregisteredHolderGrace); afterwards every lease the predecessor granted has
/// lapsed and the records are forgotten. Without this a snapshot or a delete of the disk right after a restart
/// proceeded while the host still wrote in place.
/// </summary>
public sealed partial class DiskCoordinator
{
    private IReadOnlyList<(ulong DiskId, string Host)> _inheritedUnpresents = [];

    /// <summary>Loads the unfinished unpresents and forgets them after the first lease. Call once, before any fault.</summary>
    private void CountInheritedUnpresents()
    {
        var inherited = _store.ListUnpresenting();
        if (inherited.Count == 0) return;
        _inheritedUnpresents = inherited;
        _ = ForgetInheritedUnpresentsAfterFirstLeaseAsync(inherited);
    }

    /// <summary>A host an unfinished unpresent of <paramref name="diskId"/> left, that has not registered here yet.</summary>
    private string? UnregisteredUnpresentedHost(ulong diskId, string? host)
    {
        foreach (var (inheritedDisk, inheritedHost) in _inheritedUnpresents)
            if (inheritedDisk == diskId && (host is null || inheritedHost == host) && !_sessions.TablesSent(inheritedHost)) return inheritedHost;
        return null;
    }

    private async Task ForgetInheritedUnpresentsAfterFirstLeaseAsync(List<(ulong DiskId, string Host)> inherited)
    {
        try
        {
            await WaitAsync(FirstLeaseRemaining).ConfigureAwait(false);
            // Under the disk's lock: an unpresent of the same pair running in this process holds it and forgets its own
            // record when its host answered, so a record found here is the inherited one (or none).
            foreach (var (diskId, host) in inherited)
                using (await LockDiskAsync(diskId).ConfigureAwait(false))
                    _store.ForgetUnpresenting(diskId, host);
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or Microsoft.Data.Sqlite.SqliteException)
        {
            // stopping: the next controller counts them again
        }
    }
}
