namespace Tessera.Controller.Agents;

/// <summary>
/// The registered agents: at most one open session per host, plus the closed sessions whose lease has not lapsed
/// yet. Those still matter: a closed session's agent may keep serving I/O from its tables until its lease runs
/// out, so every change that needs all holders of a disk to agree must wait for them too.
/// </summary>
public sealed class SessionRegistry
{
    public const int MaxSessions = 1024;

    private readonly Dictionary<string, AgentSession> _open = new(StringComparer.Ordinal);
    private readonly List<AgentSession> _lapsing = new();
    private readonly HashSet<string> _tablesSent = new(StringComparer.Ordinal);
    private readonly object _lock = new();

    /// <summary>Notes that a session of <paramref name="host"/> was sent CreateTable for every disk presented to it.</summary>
    public void MarkTablesSent(string host)
    {
        lock (_lock)
            if (_tablesSent.Count < 4 * MaxSessions) _tablesSent.Add(host); // past the bound: treated as unknown, which only waits longer
    }

    /// <summary>
    /// True once a session of <paramref name="host"/> registered with this controller process and was sent its
    /// tables: from then on whatever the host held from before (under a previous controller) is replaced.
    /// </summary>
    public bool TablesSent(string host)
    {
        lock (_lock) return _tablesSent.Contains(host);
    }

    /// <summary>Adds a session, closing any older session of the same host. False when too many hosts are connected.</summary>
    public bool TryAdd(AgentSession session)
    {
        AgentSession? old;
        lock (_lock)
        {
            Prune();
            _open.TryGetValue(session.Host, out old);
            if (old is null && _open.Count >= MaxSessions) return false;
            // A flapping host leaves one closed session per reconnect, each gone within one lease; refusing new
            // registrations is the safe way to bound that, forgetting a session that may still do I/O is not.
            if (_lapsing.Count >= 4 * MaxSessions) return false;
            if (old is not null) _lapsing.Add(old);
            _open[session.Host] = session;
        }
        old?.Close("replaced by a newer registration of the same host");
        return true;
    }

    /// <summary>Moves a session that ended to the lapsing list (no-op when a newer session replaced it already).</summary>
    public void Remove(AgentSession session)
    {
        lock (_lock)
        {
            if (_open.TryGetValue(session.Host, out var current) && ReferenceEquals(current, session))
            {
                _open.Remove(session.Host);
                _lapsing.Add(session);
            }
        }
    }

    /// <summary>The open session of a host that has been sent Registered, if any.</summary>
    public AgentSession? Get(string host)
    {
        lock (_lock) return _open.TryGetValue(host, out var s) && s.Ready && !s.IsClosed ? s : null;
    }

    public List<AgentSession> Open()
    {
        lock (_lock) return _open.Values.Where(s => s.Ready && !s.IsClosed).ToList();
    }

    /// <summary>Every session, open or closed-but-not-lapsed, that holds a table for <paramref name="diskId"/>.</summary>
    public List<AgentSession> Holding(ulong diskId, string? host = null)
    {
        lock (_lock)
        {
            Prune();
            var list = new List<AgentSession>();
            foreach (var s in _open.Values)
                if (s.HasTable(diskId) && (host is null || s.Host == host)) list.Add(s);
            foreach (var s in _lapsing)
                if (s.HasTable(diskId) && (host is null || s.Host == host) && !Subsumed(s, diskId)) list.Add(s);
            return list;
        }
    }

    /// <summary>
    /// A closed session is no longer a holder of a disk once the same agent process (same host and incarnation)
    /// has an open session that was sent CreateTable for that disk: the agent replaced its one table for the disk
    /// with the new session's before it reads anything else from the new stream, so everything pushed to the new
    /// session reaches every table that process has. A different incarnation gets no such credit: the old process
    /// may still be running until its lease lapses.
    /// </summary>
    private bool Subsumed(AgentSession closed, ulong diskId) =>
        _open.TryGetValue(closed.Host, out var current) && !current.IsClosed
        && current.Incarnation == closed.Incarnation && current.HasTable(diskId);

    public void CloseAll(string reason)
    {
        List<AgentSession> all;
        lock (_lock) all = _open.Values.ToList();
        foreach (var s in all) s.Close(reason);
    }

    private void Prune()
    {
        _lapsing.RemoveAll(s => s.LeaseLapsed);
        foreach (var (host, s) in _open.ToList())
            if (s.IsClosed)
            {
                _open.Remove(host);
                if (!s.LeaseLapsed) _lapsing.Add(s);
            }
    }
}
