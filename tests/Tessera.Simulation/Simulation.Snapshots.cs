using Tessera.Controller.Admin;
using Tessera.Controller.Store;
using Tessera.Core.Protocol;

namespace Tessera.Simulation;

/// <summary>
/// Admin operations through the real SnapshotService/AdminService: snapshots (checked by reading them back at the
/// end, presented read-only) and clones (presented read-write and written to like any disk).
/// </summary>
public sealed partial class Simulation
{
    private SnapshotService? _snapshots;
    private int _nextSnapshot, _nextClone;
    private readonly List<DiskModel> _snapshotModels = new();
    private int _adminRunning;

    private void StartAdminOp()
    {
        if (Controller is null || _snapshots is null || _admin is null || _adminRunning > 1) return;
        var writable = _disks.Where(d => !d.ReadOnly).ToList();
        if (writable.Count == 0) return;
        var svc = _snapshots;
        var admin = _admin;
        var agentHost = _agents[_r.Next(_agents.Count)].Host;
        if (_snapshotModels.Count > 0 && _disks.Count < 6 && _r.Next(3) == 0)
        {
            var snapshot = _snapshotModels[_r.Next(_snapshotModels.Count)];
            string name = $"k{++_nextClone}";
            _adminRunning++;
            TraceLine($"admin: clone {snapshot.Name} as {name}, present to {agentHost}");
            PoolDriver.Run(() => _ = CloneAsync(svc, admin, snapshot, name, agentHost));
        }
        else if (_snapshotModels.Count < 4)
        {
            var parent = writable[_r.Next(writable.Count)];
            string name = $"s{++_nextSnapshot}";
            _adminRunning++;
            TraceLine($"admin: snapshot {parent.Name}@{name}");
            PoolDriver.Run(() => _ = SnapshotAsync(svc, parent, name));
        }
    }

    private async Task SnapshotAsync(SnapshotService svc, DiskModel parent, string name)
    {
        var span = parent.StartRead("snapshot", 0, (int)parent.Sectors);
        string outcome = "ok";
        try
        {
            await svc.CreateSnapshot(new CreateSnapshotRequest { Disk = parent.Name, Name = name }, Ctx());
        }
        catch (Exception e) { outcome = e.GetType().Name + ": " + e.Message; }
        var image = parent.SnapshotImage(span);
        _adminRunning--;
        _result.Outcomes["Snapshot:" + (outcome == "ok" ? "Ok" : "Failed")] = _result.Outcomes.GetValueOrDefault("Snapshot:" + (outcome == "ok" ? "Ok" : "Failed")) + 1;
        TraceLine($"admin: snapshot {parent.Name}@{name} -> {outcome}");
        if (outcome != "ok" || Controller?.Store.GetDisk(ControllerStore.SnapshotRef(parent.Name, name)) is not { } row)
        {
            // Cut off by a crash (or answered while the controller was dying): it may be ready or rolled back.
            Unresolved(new AmbiguousAdminOp(AmbiguousKind.Snapshot, ControllerStore.SnapshotRef(parent.Name, name), parent, image));
            return;
        }
        _checker.SetLineage(row.Id, parent.DiskId);
        _snapshotModels.Add(new DiskModel(_checker, row.Id, row.Name, image, readOnly: true));
    }

    private async Task CloneAsync(SnapshotService svc, AdminService admin, DiskModel snapshot, string name, string host)
    {
        string outcome = "ok";
        DiskView? view = null;
        try
        {
            view = await svc.CloneDisk(new CloneDiskRequest { Source = snapshot.Name, Name = name }, Ctx());
        }
        catch (Exception e) { outcome = e.GetType().Name + ": " + e.Message; }
        _result.Outcomes["Clone:" + (outcome == "ok" ? "Ok" : "Failed")] = _result.Outcomes.GetValueOrDefault("Clone:" + (outcome == "ok" ? "Ok" : "Failed")) + 1;
        TraceLine($"admin: clone {name} -> {outcome}");
        if (view is null)
        {
            Unresolved(new AmbiguousAdminOp(AmbiguousKind.Clone, name, snapshot, snapshot.CurrentImage()));
            _adminRunning--;
            return;
        }
        _checker.SetLineage(view.Id, snapshot.DiskId);
        // The clone's image is the snapshot's, including what a power loss could make the shared sectors fall back to.
        var model = new DiskModel(_checker, view.Id, name, snapshot.CurrentImage(), readOnly: false);
        _disks.Add(model);
        _presented[name] = [];
        try
        {
            await admin.PresentDisk(new PresentRequest { Disk = name, Host = host }, Ctx());
            _presented[name].Add(host);
            outcome = "ok";
        }
        catch (Exception e) { outcome = e.GetType().Name + ": " + e.Message; }
        _adminRunning--;
        TraceLine($"admin: present {name} to {host} -> {outcome}");
    }

    /// <summary>Presents every snapshot read-only to one host once the cluster settled, so the final checks read them back.</summary>
    private void PresentSnapshotsForFinalRead()
    {
        if (Controller is null || _admin is null) return;
        var admin = _admin;
        foreach (var snapshot in _snapshotModels.ToList())
        {
            if (Controller.Store.GetDisk(snapshot.Name) is null) continue; // deleted by a call a crash cut off
            var host = _agents[(int)(snapshot.DiskId % (ulong)_agents.Count)].Host;
            var name = snapshot.Name;
            PoolDriver.Run(() => _ = PresentReadOnlyAsync(admin, name, host, e => _checker.Violation("admin", $"presenting snapshot {name} to {host} failed: {e}")));
            _presented[snapshot.Name] = [host];
            _disks.Add(snapshot);
        }
    }

    private static async Task PresentReadOnlyAsync(AdminService admin, string name, string host, Action<string> failed)
    {
        try { await admin.PresentDisk(new PresentRequest { Disk = name, Host = host, ReadOnly = true }, Ctx()); }
        catch (Exception e) { failed(e.GetType().Name + ": " + e.Message); }
    }
}
