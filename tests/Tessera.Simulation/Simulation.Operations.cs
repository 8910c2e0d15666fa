using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Controller.Admin;
using Tessera.Controller.Store;
using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Simulation;

/// <summary>
/// The operations and faults added after the first simulator build: migration and evacuation jobs, resize (grow),
/// unpresent/re-present, deletion of snapshots and clones, whole-container loss and I/O errors on the controller's
/// own container handles. All their choices come from a second <see cref="Random"/> derived from the seed, and none
/// is drawn with <see cref="SimOptions.Classic"/>: then a seed makes exactly the run (and trace) it made before.
/// </summary>
public sealed partial class Simulation
{
    private Random _r2 = null!;
    // Per 10,000 steps (the classic events are per mille), so a 3,000-step seed sees a handful of each.
    private int _wMigrate, _wEvacuate, _wResize, _wPresent, _wDelete, _wContainerLoss;
    private double _controllerIoErrorRate;
    private int _extendedTotal;
    private readonly List<long> _jobs = new();
    private readonly HashSet<string> _presentationBusy = new(StringComparer.Ordinal);
    private bool Extended => !_options.Classic;
    private readonly Dictionary<string, int> _unpresentsRunning = new(StringComparer.Ordinal);

    /// <summary>
    /// Invariant 4 while an unpresent is running: the controller stops listing the host as a holder when it sends
    /// DeleteTable, but it acts on nothing until the host answered or its lease lapsed (it holds the disk's lock until
    /// then), so the host may still write under its lease.
    /// </summary>
    internal bool UnpresentRunning(string host) => _unpresentsRunning.GetValueOrDefault(host) > 0;

    private async Task UnpresentCallAsync(AdminService admin, string disk, string host)
    {
        _unpresentsRunning[host] = _unpresentsRunning.GetValueOrDefault(host) + 1;
        try { await admin.UnpresentDisk(new UnpresentRequest { Disk = disk, Host = host }, Ctx()); }
        finally { _unpresentsRunning[host]--; }
    }

    /// <summary>Called at the end of the constructor; draws only from its own Random.</summary>
    private void InitExtended(string[] disabled)
    {
        _r2 = new Random(unchecked((int)(_options.Seed * 0x9E3779B1L) ^ 0x5EED));
        if (!Extended) return;
        _wMigrate = _r2.Next(0, 30);
        _wEvacuate = _r2.Next(0, 15);
        _wResize = _r2.Next(0, 30);
        _wPresent = _r2.Next(0, 40);
        _wDelete = _r2.Next(0, 30);
        _wContainerLoss = _r2.Next(3) == 0 ? 10 : 0;
        _controllerIoErrorRate = _r2.Next(3) == 0 ? _r2.NextDouble() * 0.02 : 0;
        if (disabled.Contains("migrate")) _wMigrate = 0;
        if (disabled.Contains("evacuate")) _wEvacuate = 0;
        if (disabled.Contains("resize")) _wResize = 0;
        if (disabled.Contains("present")) _wPresent = 0;
        if (disabled.Contains("delete")) _wDelete = 0;
        if (disabled.Contains("container_loss")) _wContainerLoss = 0;
        if (disabled.Contains("controller_errors")) _controllerIoErrorRate = 0;
        _extendedTotal = _wMigrate + _wEvacuate + _wResize + _wPresent + _wDelete + _wContainerLoss;
        TraceLine($"extended: migrate {_wMigrate} evacuate {_wEvacuate} resize {_wResize} present {_wPresent} delete {_wDelete} container loss {_wContainerLoss} controller errors {_controllerIoErrorRate:F4}");
    }

    /// <summary>Takes the step for one of the new events, or returns false (always with Classic) so the classic step runs.</summary>
    private bool ExtendedStep()
    {
        if (_extendedTotal == 0 || !_faultsOn) return false;
        int pick = _r2.Next(10_000);
        if (pick >= _extendedTotal) return false;
        if ((pick -= _wMigrate) < 0) Migrate();
        else if ((pick -= _wEvacuate) < 0) Evacuate();
        else if ((pick -= _wResize) < 0) Resize();
        else if ((pick -= _wPresent) < 0) Unpresent();
        else if ((pick -= _wDelete) < 0) Delete();
        else LoseContainer();
        return true;
    }

    /// <summary>Controller-side container I/O errors (zeroing, copy-on-write and migration copies, probes).</summary>
    private bool ControllerIoError(SimContainerHandle handle, ContainerOpKind kind)
    {
        if (_controllerIoErrorRate == 0 || !_faultsOn || handle.Owner.AgentHost != null || kind == ContainerOpKind.Flush) return false;
        if (_r2.NextDouble() >= _controllerIoErrorRate) return false;
        Fault("controller_container_io_error");
        return true;
    }

    private OperationsService? Operations => Controller is { } core ? new OperationsService(core, ControllerLogs) : null;

    private void Count(string what) => _result.Outcomes[what] = _result.Outcomes.GetValueOrDefault(what) + 1;

    private static string Describe(Exception e) => e is RpcException r ? $"{r.StatusCode}: {r.Status.Detail}" : e.GetType().Name + ": " + e.Message;

    // ------------------------------------------------------------------ migration

    private void Migrate()
    {
        if (Operations is not { } ops || _disks.Count == 0) return;
        var disk = _disks[_r2.Next(_disks.Count)];
        var target = _containers.Values.ElementAt(_r2.Next(_containers.Count));
        RunJobRequest($"migrate {disk.Name} to {target.Name}", () => ops.MigrateDisk(new MigrateDiskRequest { Disk = disk.Name, To = target.Name }, Ctx()).GetAwaiter().GetResult());
    }

    private void Evacuate()
    {
        if (Operations is not { } ops) return;
        var source = _containers.Values.ElementAt(_r2.Next(_containers.Count));
        RunJobRequest($"evacuate {source.Name}", () => ops.EvacuateContainer(new EvacuateRequest { Container = source.Name }, Ctx()).GetAwaiter().GetResult());
    }

    private void RunJobRequest(string what, Func<JobView> request)
    {
        string outcome = "";
        PoolDriver.Run(() =>
        {
            try
            {
                var job = request();
                _jobs.Add((long)job.Id);
                outcome = $"job {job.Id}";
            }
            catch (Exception e) { outcome = Describe(e); }
        });
        Count(what.Split(' ')[0] + (outcome.StartsWith("job", StringComparison.Ordinal) ? ":Started" : ":Refused"));
        TraceLine($"admin: {what} -> {outcome}");
    }

    /// <summary>Once a job ran under a crash: the runner resumes (or rolls back) its half-moved segment.</summary>
    private void ProbeResumedJobs()
    {
        if (Controller is null || !Extended) return;
        int unfinished = Controller.Store.ListMigrationJobs(unfinishedOnly: true).Count;
        if (unfinished > 0) Probe("sim.migration_jobs_resumed_after_controller_start", unfinished);
    }

    /// <summary>A copy-on-write copy while a migration job runs (the meter callback calls this).</summary>
    private void ProbeCopyOnWriteDuringMigration()
    {
        try
        {
            if (Controller is { } core && core.Store.ListMigrationJobs(unfinishedOnly: true).Count > 0) Probe("sim.cow_during_migration");
        }
        catch (ObjectDisposedException) { }
    }

    private bool JobsFinished() => Controller is null || Controller.Store.ListMigrationJobs(unfinishedOnly: true).Count == 0;

    private void CountJobOutcomes()
    {
        if (Controller is null) return;
        foreach (var id in _jobs)
            if (Controller.Store.GetMigrationJob(id) is { } job) Count($"Job:{job.Kind}:{job.State}");
    }

    /// <summary>Probes named by the issue, from the product's own meters.</summary>
    private void ProbeExtended(string instrument, long value)
    {
        if (instrument == "tessera.controller.cow_copies") ProbeCopyOnWriteDuringMigration();
        // The controller waited out an agent that did not answer a blocking command: its lease expired meanwhile.
        if (instrument == "tessera.controller.fenced") Probe("sim.lease_expired_during_blocking_command", value);
    }

    /// <summary>A command reached an agent the controller already treats as fenced (it must not act on it unsafely).</summary>
    private void ProbeCommandToFencedAgent(SimStream stream)
    {
        if (Controller is not { } core || stream.ControllerIncarnation != ControllerIncarnation) return;
        var host = stream.Agent.Host;
        if (!stream.Agent.Alive) return;
        // Fenced as the controller sees it: no open session of this incarnation, or its lease lapsed (the agent missed
        // heartbeats, e.g. a silent partition) while a command was still queued to it.
        bool fenced = core.Sessions.Get(host) is not { } open || open.Incarnation != AgentIncarnation(host) || open.LeaseLapsed;
        if (fenced) Probe("sim.command_reached_fenced_agent");
    }

    // ------------------------------------------------------------------ resize

    private void Resize()
    {
        if (_admin is null || _snapshots is null || Controller is null) return;
        var candidates = _disks.Where(d => !d.ReadOnly && !d.Name.Contains(ControllerStore.SnapshotSeparator)).ToList();
        if (candidates.Count == 0) return;
        var disk = candidates[_r2.Next(candidates.Count)];
        long newSize = (disk.Sectors * 512 + (long)_r2.Next(1, 4) * SegmentBytes) / 512 * 512 - (_r2.Next(3) == 0 ? _r2.Next(1, 64) * 512 : 0);
        if (newSize <= disk.Sectors * 512) return;
        // Before the grow is even asked for, a read past the end must fail cleanly on every host that holds the disk.
        ReadPastEnd(disk);
        var svc = _snapshots;
        // The model grows first: nothing can write past the old end before an agent's table grew, which follows the store.
        disk.Grow(newSize);
        _adminRunning++;
        TraceLine($"admin: resize {disk.Name} to {newSize}");
        PoolDriver.Run(() => _ = ResizeAsync(svc, disk, newSize));
    }

    private async Task ResizeAsync(SnapshotService svc, DiskModel disk, long newSize)
    {
        string outcome = "ok";
        try { await svc.ResizeDisk(new ResizeDiskRequest { Name = disk.Name, SizeBytes = (ulong)newSize }, Ctx()); }
        catch (Exception e) { outcome = Describe(e); }
        _adminRunning--;
        Count("Resize:" + (outcome == "ok" ? "Ok" : "Failed"));
        TraceLine($"admin: resize {disk.Name} -> {outcome}");
    }

    private void ReadPastEnd(DiskModel disk)
    {
        foreach (var a in _agents.Where(a => a.Alive))
        {
            if (a.Core.FindVolume(disk.Name) is not { IsClosed: false } volume) continue;
            var status = IoStatus.Ok;
            bool done = false;
            PoolDriver.Run(() => _ = ReadPastEndAsync(volume, s => { status = s; done = true; }));
            if (!done) continue; // held by a slow container; judged by nothing (it only reads)
            if (status == IoStatus.Ok)
                _checker.Violation("read", $"{a.Host} read past the end of {disk.Name} ({volume.SizeBytes} bytes) and got Ok");
            else Probe("sim.read_past_end_refused");
        }
    }

    private static async Task ReadPastEndAsync(Tessera.Agent.DiskVolume volume, Action<IoStatus> done)
    {
        var buffer = new byte[4096];
        done(await volume.ReadAsync(volume.SizeBytes, buffer, null, CancellationToken.None));
    }

    // ------------------------------------------------------------------ presentation changes

    /// <summary>Unpresents a disk from one host, checks that the host's old volume refuses I/O, and presents it again later.</summary>
    private void Unpresent()
    {
        if (_admin is null) return;
        var choices = _disks.Where(d => !d.ReadOnly && !_presentationBusy.Contains(d.Name))
            .SelectMany(d => _presented[d.Name].Select(h => (Disk: d, Host: h))).ToList();
        if (choices.Count == 0) return;
        var (disk, host) = choices[_r2.Next(choices.Count)];
        var agent = _agents.First(a => a.Host == host);
        var oldVolume = agent.Alive ? agent.Core.FindVolume(disk.Name) : null;
        var admin = _admin;
        _presentationBusy.Add(disk.Name);
        _adminRunning++;
        TraceLine($"admin: unpresent {disk.Name} from {host}");
        PoolDriver.Run(() => _ = UnpresentAsync(admin, disk, host, agent, oldVolume));
    }

    private async Task UnpresentAsync(AdminService admin, DiskModel disk, string host, SimAgentNode agent, Tessera.Agent.DiskVolume? oldVolume)
    {
        string outcome = "ok";
        try { await UnpresentCallAsync(admin, disk.Name, host); }
        catch (Exception e) { outcome = Describe(e); }
        Count("Unpresent:" + (outcome == "ok" ? "Ok" : "Failed"));
        TraceLine($"admin: unpresent {disk.Name} from {host} -> {outcome}");
        Task probe = Task.CompletedTask;
        int incarnation = agent.Incarnation;
        if (outcome == "ok")
        {
            _presented[disk.Name].Remove(host);
            if (oldVolume is not null && agent.Alive) probe = WriteToUnpresentedAsync(disk, host, agent, oldVolume);
        }
        _adminRunning--;
        // Present again only once the probe write answered (a fenced host answers when it reconnects) or its process
        // died: a write that completed after the re-present could legally land.
        long delayMs = _r2.Next(10, 20_000);
        void Later() => At(delayMs, () =>
        {
            if (!probe.IsCompleted && agent.Incarnation == incarnation && agent.Alive) { delayMs = 1000; Later(); }
            else Represent(disk, host);
        });
        Later();
    }

    /// <summary>
    /// The host's old volume must refuse I/O now and touch nothing: a write carrying a fresh write id that the model
    /// never allows anywhere, so if it landed any later read of it is a violation. Its process may be fenced (the
    /// unpresent completed by waiting out its lease) and die before answering: nothing waits for this.
    /// </summary>
    private async Task WriteToUnpresentedAsync(DiskModel disk, string host, SimAgentNode agent, Tessera.Agent.DiskVolume oldVolume)
    {
        var w = _checker.NewWrite(disk, agent.Owner.Name + " (unpresented)", 0, 1, WriteKind.Write);
        var data = new byte[512];
        DiskModel.Encode(data, disk.DiskId, 0, w.Id);
        var status = await oldVolume.WriteAsync(0, data, CancellationToken.None);
        TraceLine($"write to the unpresented volume {disk.Name} on {host} -> {status}");
        if (status == IoStatus.Ok) _checker.Violation("presentation", $"{host} wrote to {disk.Name} after it was unpresented and got Ok");
        else Probe("sim.io_on_unpresented_refused");
    }

    private void Represent(DiskModel disk, string host)
    {
        if (_admin is not { } admin || !_disks.Contains(disk))
        {
            _presentationBusy.Remove(disk.Name);
            return;
        }
        _adminRunning++;
        TraceLine($"admin: present {disk.Name} to {host} again");
        PoolDriver.Run(() => _ = RepresentAsync(admin, disk, host));
    }

    private async Task RepresentAsync(AdminService admin, DiskModel disk, string host)
    {
        string outcome = "ok";
        try { await admin.PresentDisk(new PresentRequest { Disk = disk.Name, Host = host }, Ctx()); }
        catch (Exception e) { outcome = Describe(e); }
        Count("Represent:" + (outcome == "ok" ? "Ok" : "Failed"));
        TraceLine($"admin: present {disk.Name} to {host} again -> {outcome}");
        if (outcome == "ok" && !_presented[disk.Name].Contains(host)) _presented[disk.Name].Add(host);
        _presentationBusy.Remove(disk.Name);
        _adminRunning--;
    }

    /// <summary>
    /// After a crash cut off a presentation change, the store decides who holds what: the liveness phase waits for
    /// exactly the presentations the store lists.
    /// </summary>
    private void ResyncPresentations()
    {
        if (!Extended || Controller is null) return;
        var store = Controller.Store;
        foreach (var d in _disks)
        {
            var row = store.GetDisk(d.Name);
            _presented[d.Name] = row is null ? [] : store.ListPresentations(row.Id).Select(p => p.Host).Order(StringComparer.Ordinal).ToList();
        }
    }

    // ------------------------------------------------------------------ deletion

    private void Delete()
    {
        // Not beside another admin call: a clone being created and presented is not yet a deletion candidate.
        if (_admin is null || _snapshots is null || _adminRunning > 0) return;
        var admin = _admin;
        var svc = _snapshots;
        var clones = _disks.Where(d => !d.ReadOnly && d.Name.StartsWith('k') && !_presentationBusy.Contains(d.Name)).ToList();
        if (clones.Count > 0 && (_snapshotModels.Count == 0 || _r2.Next(2) == 0))
        {
            var clone = clones[_r2.Next(clones.Count)];
            _presentationBusy.Add(clone.Name);
            _adminRunning++;
            TraceLine($"admin: delete clone {clone.Name}");
            PoolDriver.Run(() => _ = DeleteCloneAsync(admin, clone));
        }
        else if (_snapshotModels.Count > 0)
        {
            var snapshot = _snapshotModels[_r2.Next(_snapshotModels.Count)];
            _adminRunning++;
            TraceLine($"admin: delete snapshot {snapshot.Name}");
            PoolDriver.Run(() => _ = DeleteSnapshotAsync(svc, snapshot));
        }
    }

    private async Task DeleteCloneAsync(AdminService admin, DiskModel clone)
    {
        string outcome = "ok";
        try
        {
            foreach (var host in _presented[clone.Name].ToList())
            {
                await UnpresentCallAsync(admin, clone.Name, host);
                _presented[clone.Name].Remove(host);
            }
            await admin.DeleteDisk(new DiskRef { Name = clone.Name }, Ctx());
        }
        catch (Exception e) { outcome = Describe(e); }
        Count("DeleteClone:" + (outcome == "ok" ? "Ok" : "Failed"));
        TraceLine($"admin: delete clone {clone.Name} -> {outcome}");
        if (outcome == "ok")
        {
            _disks.Remove(clone);
            _presented.Remove(clone.Name);
        }
        _presentationBusy.Remove(clone.Name);
        _adminRunning--;
    }

    private async Task DeleteSnapshotAsync(SnapshotService svc, DiskModel snapshot)
    {
        string outcome = "ok";
        int at = snapshot.Name.IndexOf(ControllerStore.SnapshotSeparator);
        try { await svc.DeleteSnapshot(new SnapshotRef { Disk = snapshot.Name[..at], Name = snapshot.Name[(at + 1)..] }, Ctx()); }
        catch (Exception e) { outcome = Describe(e); }
        Count("DeleteSnapshot:" + (outcome == "ok" ? "Ok" : "Failed"));
        TraceLine($"admin: delete snapshot {snapshot.Name} -> {outcome}");
        if (outcome == "ok") _snapshotModels.Remove(snapshot);
        _adminRunning--;
    }

    // ------------------------------------------------------------------ container loss

    private readonly HashSet<string> _lostContainers = new(StringComparer.Ordinal);

    /// <summary>A container fails for good: every I/O on it errors from now on. At most one per run, never the last.</summary>
    private void LoseContainer()
    {
        if (_lostContainers.Count > 0 || _containers.Count < 2) return;
        var c = _containers.Values.ElementAt(_r2.Next(_containers.Count));
        c.Lost = true;
        _lostContainers.Add(c.Name);
        Fault("container_loss");
        TraceLine($"container {c.Name} lost");
    }

    /// <summary>
    /// For the final read: a segment whose store entry is Error (its container was marked failed), or that is mapped on
    /// a lost container, may fail to read;
    /// its sectors are then not judged (an error is the right answer for lost data; no value was returned).
    /// </summary>
    private bool SegmentLost(DiskModel disk, long segment)
    {
        if (Controller is null) return false;
        var entry = Controller.Store.GetEntry(disk.DiskId, segment);
        if ((entry.States & EntryStates.Error) != 0) return true;
        // On a lost container the controller has not noticed yet (no I/O there since): EIO is the right answer too.
        return entry.HasLocation && Controller.Store.ListContainers().FirstOrDefault(c => c.Id == entry.ContainerId) is { } row
            && _containers.TryGetValue(row.Name, out var container) && container.Lost;
    }

    /// <summary>
    /// The allocator equals the map: for every healthy container, the units the pool counts as used are exactly the
    /// units some segment row maps (deleting snapshots and clones, releases and moves must not leak or double-free).
    /// </summary>
    private void CheckAllocatorEqualsMap()
    {
        CountJobOutcomes();
        if (Controller is not { } core) return;
        // Units of a release the previous controller left unfinished stay taken for this controller's first lease
        // (DiskCoordinator.Releasing.cs): until then the pool rightly counts more than the map names. Let it end.
        var firstLease = TimeSpan.FromMilliseconds(LeaseMs + 1);
        for (int i = 0; i < 100_000 && _controllerTime.GetElapsedTime(_controllerStartedTimestamp) <= firstLease && PoolDriver.Fatal is null; i++)
        {
            if (!DeliverOrAdvance()) break;
        }
        PoolDriver.WaitIdle();
        var store = core.Store;
        var disks = store.ListDisks().ToDictionary(d => d.Id);
        var mapped = new Dictionary<ushort, HashSet<long>>();
        foreach (var row in store.AllSegments())
        {
            if (!row.Entry.HasLocation) continue;
            var set = mapped.TryGetValue(row.Entry.ContainerId, out var s) ? s : mapped[row.Entry.ContainerId] = new();
            for (int u = 0; u < disks[row.DiskId].UnitsPerSegment; u++) set.Add(row.Entry.PhysicalIndex + u);
        }
        foreach (var c in store.ListContainers())
        {
            if (c.Failed) continue;
            long used = core.Pool.Usage(c.Id).UsedUnits;
            long inMap = mapped.TryGetValue(c.Id, out var units) ? units.Count : 0;
            if (used == inMap) continue;
            var total = core.Pool.Usage(c.Id).TotalUnits;
            var unmappedUsed = new List<long>();
            for (long u = 0; u < total && unmappedUsed.Count < 8; u++)
                if (core.Pool.IsUnitUsed(c.Id, u) && (units is null || !units.Contains(u))) unmappedUsed.Add(u);
            _checker.Violation("allocator", $"container {c.Name}: the pool counts {used} units used but the map names {inMap}" +
                (unmappedUsed.Count > 0 ? $"; used but unmapped: units {string.Join(", ", unmappedUsed)}" : ""));
        }
    }
}
