namespace Tessera.Agent;

// A table kept across a registration must be confirmed by the new session. The controller sends one CreateTable per
// disk presented to the host right after Registered and before any HeartbeatAck (AgentChannelService). A disk that was
// unpresented while this process was disconnected gets none: the controller already counts that table as gone once
// the old session's lease ran out, but this process renewed its lease through the new session, so without this it
// would keep serving the disk from stale mappings (and, after the disk's space is reused, write into another disk).
public sealed partial class AgentCore
{
    private HashSet<ulong>? _unconfirmedTables;

    /// <summary>At registration: every table this process holds is invalid until the new session re-creates it.</summary>
    private void ExpectTablesReconfirmed()
    {
        var held = new HashSet<ulong>(_volumesById.Keys);
        foreach (var volume in _volumesById.Values) volume.Table.InvalidateAll(); // faults, answered by the new session
        lock (_linkLock) _unconfirmedTables = held.Count > 0 ? held : null;
    }

    private void TableReconfirmed(ulong diskId)
    {
        lock (_linkLock) _unconfirmedTables?.Remove(diskId);
    }

    /// <summary>At the first HeartbeatAck of a session: the tables it did not re-create are no longer presented here.</summary>
    private void DropUnconfirmedTables()
    {
        HashSet<ulong>? stale;
        lock (_linkLock)
        {
            stale = _unconfirmedTables;
            _unconfirmedTables = null;
        }
        if (stale is null) return;
        foreach (var diskId in stale.Order())
            if (_volumesById.ContainsKey(diskId))
            {
                Log.TableDroppedAtRegistration(_logger, diskId);
                DeleteTable(diskId);
            }
    }
}
