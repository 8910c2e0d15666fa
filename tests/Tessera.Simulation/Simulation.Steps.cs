using Tessera.Agent;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;

namespace Tessera.Simulation;

public sealed partial class Simulation
{
    private sealed class PendingOp(string description, SimAgentNode agent, int incarnation)
    {
        public string Description { get; } = description;
        public SimAgentNode Agent { get; } = agent;
        public int Incarnation { get; } = incarnation;
        public bool Done { get; set; }
        public WriteRec? Write { get; set; }
        public ReadRec? Read { get; set; }
        public DiskModel? Disk { get; set; }
    }

    // ------------------------------------------------------------------ the scheduler

    private void Step()
    {
        if (ExtendedStep()) return;
        var deliverable = Deliverable();
        int wDeliver = deliverable.Count > 0 ? 600 : 0;
        int wTimer = 80;
        int wOp = _ops.Count(o => !o.Done) < MaxInflightOps ? 250 : 0;
        int total = wDeliver + wTimer + wOp + _wAdmin + _wBreak + _wPartition + _wSilent + _wCrashAgent + _wCrashController + _wPowerLoss;
        int pick = _r.Next(total);
        if ((pick -= _wAdmin) < 0) { StartAdminOp(); return; }
        if ((pick -= wDeliver) < 0) { Deliver(deliverable[_r.Next(deliverable.Count)]); return; }
        if ((pick -= wTimer) < 0) { AdvanceTime(); return; }
        if ((pick -= wOp) < 0) { StartClientOp(); return; }
        if ((pick -= _wBreak) < 0) { BreakStream(); return; }
        if ((pick -= _wPartition) < 0) { Partition(); return; }
        if ((pick -= _wSilent) < 0) { SilentPartition(); return; }
        if ((pick -= _wCrashAgent) < 0) { CrashAgent(); return; }
        if ((pick -= _wCrashController) < 0) { CrashController(); return; }
        PowerLoss();
    }

    private List<(SimStream Stream, bool ToController)> Deliverable()
    {
        _streams.RemoveAll(s => s.IsBroken);
        var list = new List<(SimStream, bool)>();
        foreach (var s in _streams)
        {
            if (s.HeldUntilNs > Clock.NowNs) continue;
            if (s.ToControllerCount > 0) list.Add((s, true));
            if (s.ToAgentCount > 0) list.Add((s, false));
        }
        return list;
    }

    private void Deliver((SimStream Stream, bool ToController) pick)
    {
        var (stream, toController) = pick;
        PoolDriver.Run(() =>
        {
            if (toController)
            {
                var m = stream.DeliverToController();
                if (m != null) TraceLine($"s{stream.Id} a->c {m.BodyCase}");
                if (m != null && Verbose) Console.WriteLine($"      {m}");
            }
            else
            {
                var m = stream.DeliverToAgent();
                if (m?.Command is not null && Extended) ProbeCommandToFencedAgent(stream);
                if (m != null) TraceLine($"s{stream.Id} c->a {m.BodyCase}{(m.Command is { } c ? " " + c.OpCase + (c.Blocking ? " blocking" : "") : "")}");
                if (m != null && Verbose) Console.WriteLine($"      {m}");
            }
        });
    }

    /// <summary>Jumps to the next timer or driver action and runs it.</summary>
    private bool AdvanceTime()
    {
        long? timerDue = Clock.NextDueNs;
        long? driverDue = _driverQueue.Count > 0 ? _driverQueue.Min.DueNs : null;
        if (timerDue is null && driverDue is null) return false;
        if (driverDue is { } dd && (timerDue is null || dd <= timerDue))
        {
            var first = _driverQueue.Min;
            _driverQueue.Remove(first);
            Clock.AdvanceTo(first.DueNs);
            ExpireLingering();
            _driverActions.Remove(first.Seq, out var action);
            action!();
            return true;
        }
        var timer = Clock.TakeNext(notAfterNs: driverDue); // a dead node's timers are skipped; never skip past a driver action
        ExpireLingering();
        if (timer is null) return true;
        _checker.Trace.Add(Clock.NowNs);
        PoolDriver.Run(timer.Fire);
        return true;
    }

    private void At(long delayMs, Action action)
    {
        long seq = ++_driverSeq;
        _driverQueue.Add((Clock.NowNs + delayMs * 1_000_000, seq));
        _driverActions[seq] = action;
    }

    // ------------------------------------------------------------------ faults

    private void BreakStream()
    {
        _streams.RemoveAll(s => s.IsBroken);
        if (_streams.Count == 0) return;
        var s = _streams[_r.Next(_streams.Count)];
        Fault(_r.Next(3) switch { 0 => "message_dropped", 1 => "message_duplicated", _ => "message_reordered" } + " (stream broken)");
        PoolDriver.Run(() => s.Break("injected: frame lost, duplicated or reordered"));
    }

    private void Partition()
    {
        var a = _agents[_r.Next(_agents.Count)];
        long ms = _r.Next(100, 30_000);
        _partitionedUntilNs[a.Host] = Clock.NowNs + ms * 1_000_000;
        Fault("partition");
        TraceLine($"partition {a.Host} for {ms} ms");
        if (a.Stream is { } s) PoolDriver.Run(() => s.Break("partition"));
    }

    /// <summary>The network stops delivering but neither end notices until HTTP/2 keepalive gives up.</summary>
    private void SilentPartition()
    {
        _streams.RemoveAll(s => s.IsBroken);
        if (_streams.Count == 0) return;
        var s = _streams[_r.Next(_streams.Count)];
        long ms = _r.Next(100, 20_000);
        s.HeldUntilNs = Clock.NowNs + ms * 1_000_000;
        Fault("silent_partition");
        TraceLine($"stream {s.Id} silent for {ms} ms");
        if (ms > KeepaliveMs) At(KeepaliveMs, () => PoolDriver.Run(() => s.Break("keepalive timeout")));
    }

    private void CrashAgent()
    {
        var alive = _agents.Where(a => a.Alive).ToList();
        if (alive.Count == 0) return;
        var a = alive[_r.Next(alive.Count)];
        Fault("agent_crash");
        TraceLine($"crash {a.Owner}");
        PoolDriver.Run(a.Crash);
        foreach (var op in _ops.Where(o => !o.Done && o.Agent == a && o.Incarnation == a.Incarnation)) AbandonOp(op);
        At(_r.Next(10, 20_000), () => RestartAgent(a));
    }

    private void RestartAgent(SimAgentNode a)
    {
        if (a.Alive) return;
        TraceLine($"restart {a.Host}");
        PoolDriver.Run(a.Start);
    }

    /// <summary>The op's process died: its write may or may not have landed; its read tells nothing.</summary>
    private void AbandonOp(PendingOp op)
    {
        op.Done = true;
        if (op.Write is { } w) EndFailedWrite(op.Disk!, w);
        if (op.Read is { } r) op.Disk!.EndRead(r, default, ok: false, "");
    }

    /// <summary>
    /// A write that failed or whose process died may have landed. Data the agent wrote itself can land no later
    /// than now (the process, and with it its container handles, is gone or gave up). A WRITE_ZEROES or TRIM of
    /// whole segments, though, is carried out by the controller: once its zero fault was accepted the controller
    /// commits Zero, then waits for every holder to acknowledge or lapse its lease before the change is complete,
    /// and none of that depends on the requester still listening. A holder that has not heard of it yet (its stream
    /// is partitioned) keeps writing to the old place under its valid lease, and those writes are acknowledged and
    /// then discarded with the old place. So such an op stays in flight for as long as the controller may still be
    /// carrying it out: its push waits at most one lease for each holder plus, in a controller's first lease, the
    /// unregistered-holder grace, i.e. two leases (skew margin added); a controller crash ends it sooner, but
    /// keeping it open a little longer only widens what a read may return.
    /// </summary>
    private void EndFailedWrite(DiskModel disk, WriteRec w)
    {
        if (w.Kind is WriteKind.Zeroes or WriteKind.Trim)
            disk.Linger(w, Clock.NowNs + ControllerZeroingBoundMs * 1_000_000);
        else
            disk.EndWrite(w, ok: false);
    }

    /// <summary>Ends lingering zeroings whose bound passed. Checked whenever time moves, with no step of its own, so the schedule a seed makes is unchanged.</summary>
    private void ExpireLingering()
    {
        foreach (var d in _disks) d.ExpireLingering(Clock.NowNs);
    }

    private const long ControllerZeroingBoundMs = 2 * LeaseMs + LeaseMs / 5;

    private void CrashController(bool injected = true)
    {
        if (Controller is null) return;
        if (injected) Fault("controller_crash");
        var core = Controller;
        ControllerOwner.Dead = true;
        _controllerTime.Dead = true;
        Controller = null;
        _channel = null;
        _admin = null;
        foreach (var c in _containers.Values) ContainerRegistry.Shared.Close(c.Uri);
        foreach (var s in _streams.ToList()) PoolDriver.Run(() => s.Break("controller crashed"));
        // Not a clean shutdown: nothing is flushed or handed over; Dispose only releases the store file so the next
        // incarnation can open it (SQLite commits are durable, so the store is what a crash would leave). The stop's
        // continuations run first, on the one worker, so whatever they do happens before the store closes, in seed order.
        core.Stop();
        PoolDriver.WaitIdle();
        core.Dispose();
        PoolDriver.WaitIdle();
        At(_r.Next(10, 15_000), () => { if (Controller is null) PoolDriver.Run(StartController); });
    }

    /// <summary>
    /// The whole site loses power: every process dies with it (so no I/O in flight completes, and no FLUSH can
    /// later claim success for bytes the device forgot) and each container keeps or loses, per 512-byte sector,
    /// whatever was not flushed.
    /// </summary>
    private void PowerLoss()
    {
        if (_wPowerLoss == 0) return;
        Fault("power_loss");
        foreach (var a in _agents.Where(a => a.Alive))
        {
            PoolDriver.Run(a.Crash);
            foreach (var op in _ops.Where(o => !o.Done && o.Agent == a && o.Incarnation == a.Incarnation)) AbandonOp(op);
            var agent = a;
            At(_r.Next(10, 20_000), () => RestartAgent(agent));
        }
        if (Controller is not null) CrashController(injected: false);
        int reverted = 0;
        foreach (var c in _containers.Values) reverted += c.PowerLoss(_r);
        foreach (var d in _disks.Union(_snapshotModels).Union(AmbiguousModels())) d.PowerLoss(); // snapshots share the parent's unflushed sectors
        TraceLine($"power loss: {reverted} unflushed sectors reverted");
    }

    // ------------------------------------------------------------------ client ops

    private void StartClientOp()
    {
        var candidates = new List<(SimAgentNode, DiskVolume, DiskModel)>();
        foreach (var a in _agents)
        {
            if (!a.Alive) continue;
            foreach (var d in _disks)
                if (a.Core.FindVolume(d.Name) is { IsClosed: false } v) candidates.Add((a, v, d));
        }
        if (candidates.Count == 0) { AdvanceTime(); return; }
        var (agent, volume, disk) = candidates[_r.Next(candidates.Count)];
        int kind = _r.Next(100);
        if (disk.ReadOnly) kind = 40 + kind % 40; // reads only
        long sectors = Math.Min(disk.Sectors, volume.SizeBytes / 512);
        int count = (int)Math.Min(sectors, _r.Next(4) == 0 ? _r.Next(1, 257) : _r.Next(1, 17));
        long first = _r.NextInt64(0, sectors - count + 1);
        if (_r.Next(4) == 0) first = Math.Max(0, Math.Min(sectors - count, (first / 128) * 128 + 128 - count / 2)); // straddle a segment boundary
        if (kind < 40) first = StreamWriteStart(agent, disk, first, ref count, sectors); // Simulation.Streams.cs
        var op = new PendingOp($"{agent.Owner} {kind} {disk.Name} [{first},+{count})", agent, agent.Incarnation) { Disk = disk };
        if (Verbose) Console.WriteLine($"[{Clock.NowNs / 1_000_000,9} ms]   start op {op.Description} (next write id w{_checker.PeekNextWriteId})");
        _ops.Add(op);
        _result.ClientOps++;
        string owner = agent.Owner.Name;
        PoolDriver.Run(() =>
        {
            if (kind < 40) _ = WriteOpAsync(op, owner, agent.Core, volume, disk, first, count, kind < 8 ? WriteKind.Fua : WriteKind.Write);
            else if (kind < 80) _ = ReadOpAsync(op, owner, volume, disk, first, count);
            else if (kind < 90) _ = FlushOpAsync(op, owner, agent.Core);
            else if (kind < 96) _ = WriteOpAsync(op, owner, agent.Core, volume, disk, first, count, WriteKind.Zeroes);
            else _ = WriteOpAsync(op, owner, agent.Core, volume, disk, first, count, WriteKind.Trim);
        });
    }

    private void Outcome(string what, IoStatus status) => _result.Outcomes[$"{what}:{status}"] = _result.Outcomes.GetValueOrDefault($"{what}:{status}") + 1;

    private async Task WriteOpAsync(PendingOp op, string owner, AgentCore core, DiskVolume volume, DiskModel disk, long first, int count, WriteKind kind)
    {
        var w = disk.StartWrite(owner, first, count, kind);
        op.Write = w;
        IoStatus status;
        long fuaFlushIssued = 0;
        switch (kind)
        {
            case WriteKind.Write or WriteKind.Fua:
                var data = new byte[count * 512];
                for (int i = 0; i < count; i++) DiskModel.Encode(data.AsSpan(i * 512, 512), disk.DiskId, first + i, w.Id);
                status = await volume.WriteAsync(first * 512, data, CancellationToken.None);
                if (status == IoStatus.Ok && kind == WriteKind.Fua)
                {
                    fuaFlushIssued = _checker.CurrentSeq; // what the flush covers: writes ended before it began
                    status = await core.Containers.FlushDirtyAsync(CancellationToken.None);
                }
                break;
            case WriteKind.Zeroes:
                status = await volume.WriteZeroesAsync(first * 512, count * 512L, fastZero: false, noHole: _r.Next(2) == 0, CancellationToken.None);
                break;
            default:
                status = await volume.TrimAsync(first * 512, count * 512L, CancellationToken.None);
                break;
        }
        if (op.Done) return; // the agent crashed meanwhile; the op was abandoned
        op.Done = true;
        Outcome(kind.ToString(), status);
        TraceLine($"{w} -> {status}");
        if (status == IoStatus.Ok) disk.EndWrite(w, ok: true);
        else EndFailedWrite(disk, w);
        if (status == IoStatus.Ok && kind == WriteKind.Fua) disk.FlushCompleted(owner, fuaFlushIssued, first, count, fua: w);
    }

    private async Task ReadOpAsync(PendingOp op, string owner, DiskVolume volume, DiskModel disk, long first, int count)
    {
        var r = disk.StartRead(owner, first, count);
        op.Read = r;
        var buffer = new byte[count * 512];
        var status = await volume.ReadAsync(first * 512, buffer, null, CancellationToken.None);
        if (op.Done) return;
        op.Done = true;
        Outcome("Read", status);
        TraceLine($"read {owner} {disk.Name} [{first},+{count}) -> {status}");
        disk.EndRead(r, buffer, status == IoStatus.Ok, $"read by {owner} [{first},+{count})");
    }

    private async Task FlushOpAsync(PendingOp op, string owner, AgentCore core)
    {
        long issued = _checker.NextSeq();
        var status = await core.Containers.FlushDirtyAsync(CancellationToken.None);
        if (op.Done) return;
        op.Done = true;
        Outcome("Flush", status);
        TraceLine($"flush {owner} -> {status}");
        if (status == IoStatus.Ok) foreach (var d in _disks) d.FlushCompleted(owner, issued);
    }

    // ------------------------------------------------------------------ liveness and final checks

    private void Liveness()
    {
        _faultsOn = false;
        _partitionedUntilNs.Clear();
        foreach (var s in _streams) s.HeldUntilNs = 0;
        long start = Clock.NowNs;
        ResyncPresentations();
        SettleWithin(600_000, "faults stopped");
        if (_checker.Violations.Count == 0 && _snapshotModels.Count > 0)
        {
            PresentSnapshotsForFinalRead();
            SettleWithin(120_000, "snapshots were presented for reading back");
        }
        TraceLine($"liveness phase took {(Clock.NowNs - start) / 1_000_000} ms");
    }

    private void SettleWithin(long limitMs, string after)
    {
        long limit = Clock.NowNs + limitMs * 1_000_000;
        while (Clock.NowNs < limit && PoolDriver.Fatal is null)
        {
            var deliverable = Deliverable();
            if (deliverable.Count > 0) { Deliver(deliverable[0]); continue; }
            if (_ops.All(o => o.Done) && _adminRunning == 0 && Settled() && (!Extended || JobsFinished())) return;
            if (!AdvanceTime()) break;
        }
        foreach (var op in _ops.Where(o => !o.Done))
            _checker.Violation("liveness", $"op {op.Description} did not complete within {limitMs / 1000} simulated s after {after}");
        if (_adminRunning > 0) _checker.Violation("liveness", $"{_adminRunning} admin operations did not complete within {limitMs / 1000} simulated s after {after}");
        if (!Settled()) _checker.Violation("liveness", $"the cluster did not settle (agents registered with every presented table) within {limitMs / 1000} simulated s after {after}");
        if (Extended && !JobsFinished()) _checker.Violation("liveness", $"migration jobs still running {limitMs / 1000} simulated s after {after}");
    }

    /// <summary>Controller up, every agent alive and registered with a table for each disk presented to it, nothing in flight.</summary>
    private bool Settled()
    {
        if (Controller is null || _driverQueue.Any(q => true) && _agents.Any(a => !a.Alive)) return false;
        foreach (var a in _agents)
        {
            if (!a.Alive || !a.Registered) return false;
            foreach (var (disk, hosts) in _presented)
                if (hosts.Contains(a.Host) && a.Core.FindVolume(disk) is null) return false;
        }
        return true;
    }

    private void FinalChecks()
    {
        if (Controller is null || PoolDriver.Fatal is not null) return;
        // Every host reads every presented disk completely: each sector must be allowed, and all hosts must agree.
        foreach (var d in _disks)
        {
            byte[]? first = null;
            string? firstHost = null;
            foreach (var a in _agents.Where(a => _presented[d.Name].Contains(a.Host)))
            {
                var volume = a.Core.FindVolume(d.Name);
                if (volume is null) continue;
                long sectors = Math.Min(d.Sectors, volume.SizeBytes / 512); // a grow cut off by a crash may not have happened
                var image = new byte[sectors * 512];
                var r = d.StartRead(a.Owner.Name, 0, (int)sectors);
                var status = IoStatus.Ok;
                var failedSegments = new HashSet<long>();
                PoolDriver.Run(() => _ = ReadAllAsync(volume, image, s => status = s, failedSegments));
                for (int i = 0; i < 1000 && status == IoStatus.Ok && PendingFinalRead; i++)
                {
                    DeliverOrAdvance();
                }
                // Segments on a failed container answer EIO (their data is lost): legal, and their sectors are not judged.
                if (status != IoStatus.Ok && !PendingFinalRead && failedSegments.Count > 0 && failedSegments.All(s => SegmentLost(d, s)))
                {
                    status = IoStatus.Ok;
                    Probe("sim.final_read_segments_lost", failedSegments.Count);
                }
                if (status != IoStatus.Ok || PendingFinalRead)
                {
                    var notLost = failedSegments.Where(s => !SegmentLost(d, s)).Order().Take(4)
                        .Select(s => $"{s} ({a.Host} holds {volume.Table.Get(s)}, the store {Controller.Store.GetEntry(d.DiskId, s)})").ToList();
                    _checker.Violation("liveness", $"final read of {d.Name} on {a.Host} failed: {(PendingFinalRead ? "did not complete" : status.ToString())}" +
                        (notLost.Count > 0 ? $"; segments not lost: {string.Join(", ", notLost)}" : ""));
                    continue;
                }
                d.EndRead(r, image, true, $"final read on {a.Owner}", failedSegments.Count == 0 ? null : sector => failedSegments.Contains(sector * 512 / SegmentBytes));
                if (first is null) { first = image; firstHost = a.Host; }
                else if (!first.AsSpan().SequenceEqual(image))
                {
                    long sector = first.AsSpan().CommonPrefixLength(image) / 512, segment = sector * 512 / SegmentBytes;
                    var firstVolume = _agents.First(x => x.Host == firstHost).Core.FindVolume(d.Name);
                    _checker.Violation("read", $"hosts {firstHost} and {a.Host} read different bytes from {d.Name} after the cluster settled, first at " +
                        $"sector {sector} (segment {segment}: {firstHost} holds {firstVolume?.Table.Get(segment)}, {a.Host} holds {volume.Table.Get(segment)}, " +
                        $"the store {Controller.Store.GetEntry(d.DiskId, segment)})");
                }
                _checker.Trace.Add(Fnv(image));
            }
        }
        CheckPhysicalSharing();
        if (Extended) CheckAllocatorEqualsMap();
    }

    /// <summary>One step of a cluster left to itself: deliver the first deliverable message, else fire the next timer. False when neither is left.</summary>
    private bool DeliverOrAdvance()
    {
        var deliverable = Deliverable();
        if (deliverable.Count > 0)
        {
            Deliver(deliverable[0]);
            return true;
        }
        return AdvanceTime();
    }

    private bool PendingFinalRead;
    private static readonly bool Verbose = Environment.GetEnvironmentVariable("TESSERA_SIM_VERBOSE") == "1";

    private async Task ReadAllAsync(DiskVolume volume, byte[] image, Action<IoStatus> done, HashSet<long> failedSegments)
    {
        PendingFinalRead = true;
        var status = IoStatus.Ok;
        for (int offset = 0; offset < image.Length && (status == IoStatus.Ok || failedSegments.Count > 0); offset += SegmentBytes)
        {
            var chunk = image.AsMemory(offset, Math.Min(SegmentBytes, image.Length - offset));
            var s = await volume.ReadAsync(offset, chunk, null, CancellationToken.None);
            if (s == IoStatus.Ok) continue;
            // Keep reading past an EIO: the segments that failed are judged (lost container or not) by the caller.
            if (s == IoStatus.IoError) failedSegments.Add(offset / SegmentBytes);
            chunk.Span.Clear();
            status = s;
        }
        done(status);
        PendingFinalRead = false;
    }

    /// <summary>Invariant 3: no physical unit is mapped by two disks unless one is a snapshot or clone of the other's family; agents' tables agree with the store.</summary>
    private void CheckPhysicalSharing()
    {
        var store = Controller!.Store;
        var owners = new Dictionary<(ushort, long), (ulong Disk, long Segment)>();
        var disks = store.ListDisks().ToDictionary(d => d.Id);
        foreach (var row in store.AllSegments())
        {
            if (!row.Entry.HasLocation) continue;
            int units = disks[row.DiskId].UnitsPerSegment;
            for (int u = 0; u < units; u++)
            {
                var key = (row.Entry.ContainerId, row.Entry.PhysicalIndex + u);
                if (owners.TryGetValue(key, out var other) && _checker.Root(other.Disk) != _checker.Root(row.DiskId))
                    _checker.Violation("sharing", $"container {key.Item1} unit {key.Item2} is mapped by disk {other.Disk} segment {other.Segment} and disk {row.DiskId} segment {row.Segment}");
                else if (!owners.ContainsKey(key)) owners[key] = (row.DiskId, row.Segment);
            }
            _checker.Trace.Add($"{row.DiskId}/{row.Segment}={row.Entry}");
        }
        foreach (var a in _agents)
            foreach (var d in _disks)
                if (a.Core.FindVolume(d.Name) is { } v)
                    for (long s = 0; s < v.Table.SegmentCount; s++)
                    {
                        var e = v.Table.Get(s);
                        if (!e.HasLocation) continue;
                        var stored = store.GetEntry(d.DiskId, s);
                        if (stored.ContainerId != e.ContainerId || stored.PhysicalIndex != e.PhysicalIndex)
                            _checker.Violation("sharing", $"{a.Host} maps {d.Name} segment {s} to {e} but the store says {stored}");
                    }
    }

    private static long Fnv(byte[] data)
    {
        ulong h = 14695981039346656037UL;
        foreach (byte b in data) h = (h ^ b) * 1099511628211UL;
        return (long)h;
    }

    public void Dispose()
    {
        _meters.Dispose();
        try { Controller?.Dispose(); } catch (Exception) { }
        foreach (var c in _containers.Values) ContainerRegistry.Shared.Close(c.Uri);
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}
