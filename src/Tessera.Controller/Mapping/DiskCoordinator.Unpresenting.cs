namespace Tessera.Controller.Mapping;

/// <summary>
/// Unpresents a previous controller started but may not have completed (ControllerStore.Unpresenting.cs): for this
/// controller's first lease, each such host counts as an unregistered holder of the disk (every change of the disk
/// waits for that lease to end unless the host registered here first), and then the records are forgotten. Without
/// this, a successor treated the host as having nothing to do with the disk while it still wrote it under its old
/// lease: a migration copied the disk's segments and freed the places the host went on writing, and its acknowledged,
/// flushed writes were lost (found by the deterministic simulation, seed 30003644).
/// </summary>
public sealed partial class DiskCoordinator
{
    private List<(ulong DiskId, string Host)> _inheritedUnpresents = [];

    /// <summary>Call once, before any fault or change.</summary>
    private void HoldInheritedUnpresents()
    {
        _inheritedUnpresents = _store.ListUnpresenting();
        if (_inheritedUnpresents.Count > 0) _ = ForgetInheritedUnpresentsAfterFirstLeaseAsync(_inheritedUnpresents);
    }

    private async Task ForgetInheritedUnpresentsAfterFirstLeaseAsync(List<(ulong DiskId, string Host)> inherited)
    {
        try
        {
            await WaitAsync(FirstLeaseRemaining).ConfigureAwait(false);
            foreach (var (diskId, host) in inherited) _store.ForgetUnpresenting(diskId, host);
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or Microsoft.Data.Sqlite.SqliteException)
        {
            // stopping: the next controller finds them again and waits its own first lease
        }
    }

    /// <summary>A host whose unpresent from this disk a previous controller did not finish, and that has not registered here.</summary>
    private string? InheritedUnpresentHolder(ulong diskId, string? host)
    {
        foreach (var (d, h) in _inheritedUnpresents)
            if (d == diskId && (host is null || h == host) && !_sessions.TablesSent(h)) return h;
        return null;
    }
}
