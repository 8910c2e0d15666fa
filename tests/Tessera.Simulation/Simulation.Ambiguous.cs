using Tessera.Controller.Store;

namespace Tessera.Simulation;

public enum AmbiguousKind { Snapshot, Clone }

/// <summary>
/// An admin call whose outcome the caller could not learn: a crash cut it off, or it answered while the controller
/// was dying. The store decides: what it lists after the next controller start (which rolls back anything half done)
/// happened. <see cref="Image"/> is what the new disk may hold: for a snapshot, every write acknowledged before the
/// call plus any write concurrent with it, none issued after it ended; for a clone, its snapshot's image.
/// </summary>
public sealed class AmbiguousAdminOp
{
    public AmbiguousAdminOp(AmbiguousKind kind, string diskName, DiskModel source, (HashSet<long>[] Possible, HashSet<long>[] Durable) image)
    {
        Kind = kind;
        DiskName = diskName;
        Source = source;
        // A copy: the source keeps changing; the new disk's content was fixed when the call ended.
        Model = new DiskModel(source.Checker, 0, diskName, image, readOnly: kind == AmbiguousKind.Snapshot);
    }

    public AmbiguousKind Kind { get; }
    public string DiskName { get; }
    public DiskModel Source { get; }
    public DiskModel Model { get; }
    public int ControllerIncarnation { get; set; }
}

public sealed partial class Simulation
{
    private readonly List<AmbiguousAdminOp> _ambiguous = new();

    private void Unresolved(AmbiguousAdminOp op)
    {
        op.ControllerIncarnation = ControllerIncarnation;
        _ambiguous.Add(op);
        // Not hashed: a seed whose ambiguous ops all rolled back replays the trace it had before the model learned them.
        if (_options.Trace) Console.WriteLine($"[{Clock.NowNs / 1_000_000,9} ms] admin: {op.Kind} {op.DiskName} has an unknown outcome; the store decides after the next controller start");
    }

    /// <summary>Unflushed sectors of a maybe-created disk fall back on power loss like anyone's.</summary>
    private IEnumerable<DiskModel> AmbiguousModels() => _ambiguous.Select(a => a.Model);

    /// <summary>
    /// After a controller start (the store rolled back incomplete snapshots): adopt every ambiguous snapshot the store
    /// lists as ready and every ambiguous clone it lists, with its lineage, so the checker knows why it shares units.
    /// </summary>
    private void ResolveAmbiguousAdminOps()
    {
        if (_ambiguous.Count == 0 || Controller is null) return;
        var store = Controller.Store;
        foreach (var op in _ambiguous.Where(a => a.ControllerIncarnation < ControllerIncarnation).ToList())
        {
            _ambiguous.Remove(op);
            var row = store.GetDisk(op.DiskName);
            bool exists = row is not null && (op.Kind == AmbiguousKind.Clone || store.GetSnapshot(row.Id) is { Ready: true });
            Probe(exists ? "sim.ambiguous_admin_ops_adopted" : "sim.ambiguous_admin_ops_rolled_back");
            if (!exists)
            {
                if (_options.Trace) Console.WriteLine($"[{Clock.NowNs / 1_000_000,9} ms] admin: {op.Kind} {op.DiskName} resolved from the store: never happened");
                continue;
            }
            TraceLine($"admin: {op.Kind} {op.DiskName} resolved from the store: exists as disk {row!.Id}");
            _checker.SetLineage(row!.Id, op.Source.DiskId);
            var model = new DiskModel(_checker, row.Id, row.Name, op.Model.CurrentImage(), readOnly: op.Kind == AmbiguousKind.Snapshot);
            if (op.Kind == AmbiguousKind.Snapshot) _snapshotModels.Add(model);
            else
            {
                _disks.Add(model);
                _presented[row.Name] = [];
            }
        }
    }
}
