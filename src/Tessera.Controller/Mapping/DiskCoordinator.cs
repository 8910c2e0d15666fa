// Why the controller may act without an agent's acknowledgement: leases.
//
// The controller changes a disk's map in the store first and then in every agent that holds a table for the
// disk. The safety rule is that no agent's copy may be less restrictive than the store once the change is
// acknowledged to anyone: after host A's first write to a thin segment is acknowledged, host B must not read
// zeros from its stale Zero entry. So an allocation fault is answered only when every holder, the faulting one
// included, replied to a push that replaces the old entry with Invalid (they load the new one on their next
// fault). Pushing the new entry itself is not enough: one holder could apply it, write and acknowledge while
// another has not applied it yet.
//
// An agent may crash, hang or be partitioned, and waiting for it forever would stop every other host. The patent
// ([0027]) resolves this with a known state: an agent that loses its controller for long enough stops I/O on its
// own. Tessera makes "long enough" a lease: the agent stops I/O when lease_ms has passed since it SENT the last
// heartbeat that the controller acknowledged. The controller only knows when it RECEIVED that heartbeat, which is
// later, so "last acknowledged heartbeat received + lease_ms" is an upper bound on the moment the agent stopped.
// Once a session is closed the controller acknowledges nothing more, the bound stops moving, and after it passes
// the agent is fenced: it holds no usable table any more (it must fault, and re-register, before more I/O).
//
// Hence the rule used everywhere below: send the command, then wait for the reply, but at most one lease from the
// send and never past the session's lease bound. No reply (or a refusal) closes the session, then we wait for
// the bound, then proceed as though the agent had acknowledged. Closed sessions whose bound has not passed yet are
// still holders (SessionRegistry keeps them) and are waited for in the same way. A replaced session (same host
// re-registered) is such a closed session too. The argument assumes clocks whose rates agree to well within a
// lease, not synchronised clocks: only durations measured on one machine are compared.
//
// Controller restarts: a previous controller process acknowledged heartbeats up to the moment it ended, which is
// no later than this process's start. So for one lease after start, a host to which a disk is presented may still
// serve I/O from a table that this process never saw, unless it has registered here (registration replaces its
// tables with all-Invalid ones, queued before anything else). Changes that need every holder therefore also wait,
// during that first lease, for presented hosts that have not registered yet (UnregisteredHolderGrace).
//
// Ordering: every change to one disk's map, and every fault on it, runs under that disk's lock, and fault
// responses and commands are enqueued on each agent's single ordered send queue while the lock is held. An agent
// therefore sees a disk's changes in the order the store made them.

using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.Logging;
using Tessera.Controller.Agents;
using Tessera.Controller.Allocation;
using Tessera.Controller.Store;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Mapping;

/// <summary>
/// The ordered slow path of each disk: map faults, thin allocation, presenting and unpresenting, releasing
/// segments. Holds one lock per disk; different disks proceed in parallel.
/// </summary>
public sealed partial class DiskCoordinator
{
    /// <summary>Fault responses carry the entries of this many aligned segments around the fault.</summary>
    public const int ResponseWindowSegments = 256;

    /// <summary>Faults an agent may have outstanding before more are refused (it coalesces per segment, so this is generous).</summary>
    public const int MaxOutstandingFaultsPerSession = 4096;

    private static readonly Meter s_meter = new("Tessera.Controller");
    private static readonly Counter<long> s_faults = s_meter.CreateCounter<long>("tessera.controller.faults", description: "map faults received");
    private static readonly Counter<long> s_allocations = s_meter.CreateCounter<long>("tessera.controller.allocations", description: "segments allocated by thin provisioning");
    private static readonly Counter<long> s_noSpace = s_meter.CreateCounter<long>("tessera.controller.no_space", description: "write faults refused because the pool is full");
    private static readonly Counter<long> s_fenced = s_meter.CreateCounter<long>("tessera.controller.fenced", description: "agents that did not acknowledge a change and were waited out");

    private readonly ControllerStore _store;
    private readonly SpacePool _pool;
    private readonly SessionRegistry _sessions;
    private readonly ILogger _log;
    private readonly CancellationToken _stopping;
    private readonly ConcurrentDictionary<ulong, SemaphoreSlim> _diskLocks = new();
    private readonly ConcurrentDictionary<AgentSession, int> _outstanding = new();

    private readonly TimeProvider _time;
    private readonly TimeSpan _lease;
    private readonly long _startedTimestamp;

    public DiskCoordinator(ControllerStore store, SpacePool pool, SessionRegistry sessions, ILogger logger, CancellationToken stopping, TimeProvider time, TimeSpan lease)
    {
        _time = time;
        _lease = lease;
        _startedTimestamp = time.GetTimestamp();
        _store = store;
        _pool = pool;
        _sessions = sessions;
        _log = logger;
        _stopping = stopping;
        HoldBackInheritedReleases();
        CountInheritedUnpresents();
    }

    /// <summary>Takes a disk's lock. Waiters are queued in call order, so faults are handled in arrival order.</summary>
    public async Task<IDisposable> LockDiskAsync(ulong diskId)
    {
        var gate = _diskLocks.GetOrAdd(diskId, _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(_stopping).ConfigureAwait(false);
        if (_stopping.IsCancellationRequested)
        {
            // A stopping controller starts nothing new. The gate can be handed over after the stop was requested (the
            // holder ended with the cancellation and released it before this waiter saw the cancellation), and the
            // holder may have been cut off half-way (an unpresent whose host never answered): acting now would build on
            // that half-done change (simulation seed 20000706: a snapshot marked ready during the stop while the host
            // of the cut-off unpresent still wrote in place).
            gate.Release();
            _stopping.ThrowIfCancellationRequested();
        }
        return new Releaser(gate);
    }

    private sealed class Releaser(SemaphoreSlim gate) : IDisposable
    {
        private int _done;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) gate.Release();
        }
    }

    // ------------------------------------------------------------------ faults

    /// <summary>
    /// Called by the session's reader for each MapFault. Runs synchronously up to the disk-lock wait, so the
    /// faults of one disk queue in arrival order, and never blocks the reader (replies arrive on the same stream).
    /// </summary>
    public void OnFault(AgentSession session, MapFault fault)
    {
        s_faults.Add(1);
        int n = _outstanding.AddOrUpdate(session, 1, (_, v) => v + 1);
        if (n > MaxOutstandingFaultsPerSession)
        {
            Done(session);
            Respond(session, Fail(fault, IoStatus.InvalidArgument, "too many outstanding faults"));
            return;
        }
        _ = HandleFaultAsync(session, fault);
    }

    private void Done(AgentSession session)
    {
        if (_outstanding.AddOrUpdate(session, 0, (_, v) => v - 1) <= 0) _outstanding.TryRemove(session, out _);
    }

    private async Task HandleFaultAsync(AgentSession session, MapFault fault)
    {
        long ticket = EnterWaiting(session, fault); // lets the lock holder allocate this fault's segment in its batch
        try
        {
            using var _ = await LockDiskAsync(fault.DiskId).ConfigureAwait(false);
            LeaveWaiting(fault.DiskId, ticket);
            // The lock is taken in arrival order; now leave the session's reader. Store calls are synchronous, and a
            // write fault may commit (an fsync) before its first real await: run on the reader, it kept the next
            // faults unread, so they never queued behind this one and group commit never had anything to batch.
            if (fault.Write) await Task.Yield();
            var response = await DecideAsync(session, fault).ConfigureAwait(false);
            Respond(session, response); // still under the disk lock: ordered before any later change of this disk
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            LogFaultFailed(_log, e, session.Host, fault.DiskId, fault.Segment);
            Respond(session, Fail(fault, IoStatus.IoError, "controller error: " + e.Message));
        }
        finally
        {
            LeaveWaiting(fault.DiskId, ticket);
            Done(session);
        }
    }

    private async Task<FaultResponse> DecideAsync(AgentSession session, MapFault fault)
    {
        // From memory, not SQLite; kept equal to the committed store (ControllerStore.DiskCache.cs).
        var cached = _store.GetCachedDisk(fault.DiskId);
        var disk = cached?.Disk;
        var presentation = cached?.PresentationFor(session.Host);
        if (disk is null || presentation is null || session.IsClosed)
            return Fail(fault, IoStatus.Shutdown, "disk is not presented to this host");
        if (fault.Segment >= (ulong)disk.SegmentCount)
            return Fail(fault, IoStatus.InvalidArgument, $"segment {fault.Segment} is beyond the disk's {disk.SegmentCount} segments");
        long segment = (long)fault.Segment;
        if (fault.Zero)
        {
            if (presentation.ReadOnly) return Fail(fault, IoStatus.NotPermitted, "the disk is presented read-only to this host");
            if (fault.Count == 0 || fault.Count > (ulong)(disk.SegmentCount - segment))
                return Fail(fault, IoStatus.InvalidArgument, $"zeroing range of {fault.Count} segments from {segment} is outside the disk");
            await ReleaseLockedAsync(disk, segment, (long)fault.Count).ConfigureAwait(false);
            // Every holder, the requester included, got Invalid through the blocking push; the answer carries Zero.
            return Retry(fault, disk, segment, false);
        }
        // In the first lease after a start, a host that has not registered yet may still serve I/O from the previous
        // controller's table, which may predate a change that controller persisted but had not finished pushing (an
        // allocation: that host still reads Zero). Until the lease is over, hand out entries without write permission
        // and make write faults wait, so no write is acknowledged while a stale reader may exist.
        var unregistered = UnregisteredHolderGrace(cached!);
        if (!fault.Write) return Retry(fault, disk, segment, presentation.ReadOnly || unregistered > TimeSpan.Zero);
        var entry = _store.GetEntry(disk.Id, segment);
        if (presentation.ReadOnly) return Fail(fault, IoStatus.NotPermitted, "the disk is presented read-only to this host");

        var states = entry.States;
        if (states == EntryStates.None || (states & EntryStates.Error) != 0)
        {
            await WaitAsync(unregistered).ConfigureAwait(false);
            return Retry(fault, disk, segment, false); // stale agent entry, or Error: the agent fails the write with EIO
        }
        if ((states & EntryStates.Zero) != 0)
            return await AllocateAsync(session, fault, disk, segment).ConfigureAwait(false);
        if ((states & EntryStates.NoWrite) != 0)
            return fault.Ahead ? Retry(fault, disk, segment, false) // an ahead-request copies nothing: it only loads
                : await WriteToSharedAsync(session, fault, disk, segment, entry).ConfigureAwait(false);
        throw new InvalidOperationException($"stored entry {entry} of disk {disk.Name} segment {segment} has an impossible state");
    }

    /// <summary>
    /// Thin allocation: take space, make it read as zeros, persist, push to every other holder and wait, then
    /// answer. The order is the safety rule: no host may read zeros after a write elsewhere was acknowledged.
    /// Segments that write faults queued behind this one will need are allocated in the same transaction
    /// (DiskCoordinator.Batch.cs); their faults then find them mapped.
    /// </summary>
    private async Task<FaultResponse> AllocateAsync(AgentSession session, MapFault fault, DiskRow disk, long segment)
    {
        int units = disk.UnitsPerSegment;
        var segments = QueuedZeroSegments(disk, segment);
        segments.Insert(0, segment);
        var taken = new List<(long Segment, MapEntry Entry, bool NeverUsed)>(segments.Count);
        // An ahead-request's own segment: never-used units above the reserve, or nothing (DiskCoordinator.AheadRequests.cs).
        if (fault.Ahead && !TakeRequestedAhead(segment, units, segments, taken)) return RefuseAhead(fault);
        foreach (long s in segments)
        {
            if (!_pool.TryAllocate(units, out ushort c, out long first, out bool neverUsed)) break;
            taken.Add((s, MapEntry.Mapped(c, first), neverUsed));
        }
        if (taken.Count == 0)
        {
            if (await WaitForHeldBackSpaceAsync().ConfigureAwait(false)) return await AllocateAsync(session, fault, disk, segment).ConfigureAwait(false);
            s_noSpace.Add(1);
            return Fail(fault, IoStatus.NoSpace, "no container has a free segment");
        }
        TakeAhead(disk, segment, taken); // a sequential writer's next segments, never-used units only (DiskCoordinator.Ahead.cs)

        var containers = _store.ListContainers().ToDictionary(c => c.Id);
        var status = IoStatus.Ok;
        ushort failedContainer = 0;
        bool persisted = false;
        try
        {
            // A freed segment may hold another disk's old bytes; a new segment must read as zeros, durably. Units above
            // the container's high-water mark never held data, so they read as zeros already (docs/architecture.md,
            // "Never-used units"); the mark advances in the mapping's own transaction, before any agent can write there.
            var zeroed = new HashSet<ushort>();
            foreach (var (_, entry, neverUsed) in taken)
            {
                if (neverUsed) continue;
                var storage = ContainerRegistry.Shared.Open(containers[entry.ContainerId].Uri);
                status = await storage.ZeroAsync(entry.ContainerOffset, disk.SegmentSizeBytes, _stopping).ConfigureAwait(false);
                if (status != IoStatus.Ok) { failedContainer = entry.ContainerId; break; }
                zeroed.Add(entry.ContainerId);
            }
            foreach (ushort id in zeroed)
            {
                if (status != IoStatus.Ok) break;
                status = await ContainerRegistry.Shared.Open(containers[id].Uri).FlushAsync(_stopping).ConfigureAwait(false);
                if (status != IoStatus.Ok) failedContainer = id;
            }
            if (status == IoStatus.Ok)
            {
                _store.SetEntriesAdvancingHighWater(disk.Id, taken.Select(t => (t.Segment, t.Entry)).ToList(), units);
                persisted = true;
                RecordAllocated(disk.Id, taken.Select(t => t.Segment));
            }
        }
        finally
        {
            if (!persisted)
                foreach (var (_, entry, _) in taken) _pool.Free(entry.ContainerId, entry.PhysicalIndex, units);
        }
        if (status != IoStatus.Ok)
        {
            var name = containers.TryGetValue(failedContainer, out var row) ? row.Name : failedContainer.ToString(System.Globalization.CultureInfo.InvariantCulture);
            if (status == IoStatus.IoError && failedContainer != 0) _ = OnContainerErrorReported(failedContainer, "the controller", "zeroing a new segment failed"); // probe; mark failed
            return Fail(fault, IoStatus.IoError, $"container {name} failed to zero a new segment");
        }

        s_allocations.Add(taken.Count);
        foreach (var (s, entry, _) in taken) LogAllocated(_log, disk.Name, s, entry.ToString());
        // Every holder, the faulting ones too, first stops reading the old Zero entry (Invalid: it faults and
        // waits for this disk's lock); only then may anyone write the new segment. Pushing the new entry instead
        // let a holder that applied it write and acknowledge while another, or the faulting host itself, still
        // read zeros (found by the deterministic simulation). Holders load the new entry on their next fault;
        // the faulting session gets it (and the window around it) in its answer. One command per run of segments.
        await PushInvalidRunsAsync(disk.Id, taken.Select(t => t.Segment)).ConfigureAwait(false);
        return Retry(fault, disk, segment, false);
    }

    // WriteToSharedAsync (copy-on-write) is in DiskCoordinator.Snapshots.cs.

    // ------------------------------------------------------------------ table changes

    /// <summary>
    /// Pushes entries [first, first+count) (one entry fills the range) to every holder of the disk but
    /// <paramref name="except"/>, and waits for each to acknowledge or be fenced. Caller holds the disk lock and
    /// has persisted the change.
    /// </summary>
    public async Task PushAsync(ulong diskId, long first, long count, MapEntry entry, bool blocking, AgentSession? except)
    {
        var unregistered = WaitAsync(UnregisteredHolderGrace(diskId, host: null));
        var holders = _sessions.Holding(diskId);
        var waits = new List<Task<AckOutcome>>(holders.Count);
        var names = new List<string>(holders.Count);
        foreach (var holder in holders)
        {
            if (ReferenceEquals(holder, except)) continue;
            var command = new Command
            {
                Blocking = blocking,
                DiskId = diskId,
                SetEntries = new SetEntries { FirstSegment = (ulong)first, Count = (ulong)count },
            };
            command.SetEntries.Entries.Add(holder.IsReadOnly(diskId) ? ReadOnlyView(entry).Raw : entry.Raw);
            waits.Add(holder.SendAndWaitAsync(command, _stopping));
            names.Add(holder.Host);
        }
        var outcomes = await Task.WhenAll(waits).ConfigureAwait(false);
        await unregistered.ConfigureAwait(false);
        for (int i = 0; i < outcomes.Length; i++)
            if (outcomes[i] == AckOutcome.Fenced)
            {
                s_fenced.Add(1);
                LogFenced(_log, names[i], diskId);
            }
    }

    /// <summary>
    /// During the first lease after this controller started: how long to wait for that lease to end, because a host
    /// to which the disk is presented (or was, by an unpresent the previous controller had not finished) has not
    /// registered here yet and may still serve I/O from a previous controller's table. Zero otherwise.
    /// </summary>
    private TimeSpan UnregisteredHolderGrace(ulong diskId, string? host)
    {
        var remaining = FirstLeaseRemaining;
        if (remaining <= TimeSpan.Zero) return TimeSpan.Zero;
        foreach (var p in _store.ListPresentations(diskId))
        {
            if ((host is null || p.Host == host) && !_sessions.TablesSent(p.Host))
            {
                LogWaitingForUnregistered(_log, p.Host, diskId, (long)remaining.TotalMilliseconds);
                return remaining;
            }
        }
        if (UnregisteredUnpresentedHost(diskId, host) is { } unpresented)
        {
            LogWaitingForUnregistered(_log, unpresented, diskId, (long)remaining.TotalMilliseconds);
            return remaining;
        }
        return TimeSpan.Zero;
    }

    /// <summary>
    /// <see cref="UnregisteredHolderGrace(ulong, string?)"/> for any host, from the disk's cached presentations (equal
    /// to the committed store) instead of a query: every fault in the first lease after a restart, when all agents
    /// reload their tables at once, asks it.
    /// </summary>
    private TimeSpan UnregisteredHolderGrace(CachedDisk cached)
    {
        var remaining = FirstLeaseRemaining;
        if (remaining <= TimeSpan.Zero) return TimeSpan.Zero;
        foreach (var host in cached.ReadOnlyByHost.Keys)
        {
            if (!_sessions.TablesSent(host))
            {
                LogWaitingForUnregistered(_log, host, cached.Disk.Id, (long)remaining.TotalMilliseconds);
                return remaining;
            }
        }
        if (UnregisteredUnpresentedHost(cached.Disk.Id, host: null) is { } unpresented)
        {
            LogWaitingForUnregistered(_log, unpresented, cached.Disk.Id, (long)remaining.TotalMilliseconds);
            return remaining;
        }
        return TimeSpan.Zero;
    }

    /// <summary>What is left of this controller's first lease, by when every lease a predecessor granted has lapsed.</summary>
    private TimeSpan FirstLeaseRemaining => _lease - _time.GetElapsedTime(_startedTimestamp);

    private Task WaitAsync(TimeSpan delay) => delay <= TimeSpan.Zero ? Task.CompletedTask : Task.Delay(AgentSession.RoundUpToMilliseconds(delay), _time, _stopping);

    /// <summary>
    /// Seam for WRITE_ZEROES/TRIM of whole segments: returns them to Zero and frees their space. Persist first,
    /// then push Invalid with the blocking flag to every holder (they load Zero on their next fault) (their in-flight I/O to the old place drains), and
    /// only then free the units, so no unit is handed out again while any agent may still use it.
    /// </summary>
    public async Task ReleaseSegmentsAsync(ulong diskId, long first, long count)
    {
        using var _ = await LockDiskAsync(diskId).ConfigureAwait(false);
        var disk = _store.GetDisk(diskId) ?? throw new InvalidOperationException($"disk {diskId} does not exist");
        await ReleaseLockedAsync(disk, first, count).ConfigureAwait(false);
    }

    /// <summary><see cref="ReleaseSegmentsAsync"/> for a caller that already holds the disk lock (a zeroing fault).</summary>
    private async Task ReleaseLockedAsync(DiskRow disk, long first, long count)
    {
        ulong diskId = disk.Id;
        var rows = _store.GetSegments(diskId, first, count);
        if (rows.Count == 0) return;
        // Only locations no snapshot or clone still names are freed (reference counting in the store).
        var unreferenced = _store.SetEntriesReleasing(diskId, rows.Select(r => (r.Segment, MapEntry.Zero)).ToList());
        // Invalid, not Zero, for the same reason as in AllocateAsync: a holder that applied Zero could act on it (a
        // second WRITE_ZEROES answered from its own table, a read of zeros) while another holder still used the old
        // place, whose writes then vanish. Invalid makes every holder fault, and that fault waits for this disk's
        // lock, i.e. until every holder dropped the old entry (found by the deterministic simulation, seed 4001285).
        await PushAsync(diskId, first, count, MapEntry.Invalid, blocking: true, except: null).ConfigureAwait(false);
        Free(unreferenced, disk.UnitsPerSegment);
    }

    /// <summary>
    /// Queues CreateTable for a disk on a session, then records that the session holds the table. In that order:
    /// a push that sees the table is queued after the CreateTable; a push that does not see it is harmless, because
    /// the new table is all Invalid and every fault on it reads the store, which the push's change already reached.
    /// Takes no disk lock, so a registration never waits behind a slow change of some disk.
    /// </summary>
    public Task<CommandReply> SendCreateTable(AgentSession session, DiskRow disk, bool readOnly)
    {
        var reply = session.SendCommand(new Command
        {
            DiskId = disk.Id,
            CreateTable = new CreateTable { Name = disk.Name, SizeBytes = (ulong)disk.SizeBytes, SegmentSizeBytes = (uint)disk.SegmentSizeBytes, ReadOnly = readOnly },
        });
        session.AddTable(disk.Id, readOnly);
        // The size is the one part of the table a later fault does not reload. A resize that persisted after `disk` was
        // read and looked for holders before AddTable did not reach this session: send the size the store has now.
        // (A resize persisting after this read sees the table and pushes its size itself; both orders end at the
        // store's size.) Found by the simulation: seed 10001833, a host kept a size two grows old.
        if (_store.GetDisk(disk.Id) is { } current && current.SizeBytes != disk.SizeBytes)
            session.SendCommand(new Command { DiskId = disk.Id, ResizeTable = new ResizeTable { SizeBytes = (ulong)current.SizeBytes } });
        return reply;
    }

    /// <summary>Creates the disk's table on a connected host after the presentation was persisted, and waits for the reply (or lease lapse).</summary>
    public async Task PresentAsync(AgentSession session, DiskRow disk)
    {
        Task<AckOutcome> wait;
        using (await LockDiskAsync(disk.Id).ConfigureAwait(false))
        {
            // Re-check under the lock: an unpresent may have raced with this.
            var presentation = _store.ListPresentations(disk.Id, session.Host).FirstOrDefault();
            if (presentation is null || session.IsClosed) return;
            disk = _store.GetDisk(disk.Id) ?? disk; // the row read before the lock may predate a resize that held it
            long sentAt = session.Timestamp;
            wait = session.WaitForReplyAsync(SendCreateTable(session, disk, presentation.ReadOnly), sentAt, _stopping);
        }
        if (await wait.ConfigureAwait(false) == AckOutcome.Fenced) LogFenced(_log, session.Host, disk.Id);
    }

    /// <summary>
    /// Removes a presentation: persist, then DeleteTable with the blocking flag on every session of that host
    /// holding the table, and wait (reply or lease lapse): when this returns the host does no more I/O to the disk.
    /// </summary>
    public async Task<bool> UnpresentAsync(DiskRow disk, string host)
    {
        using var _ = await LockDiskAsync(disk.Id).ConfigureAwait(false);
        var grace = UnregisteredHolderGrace(disk.Id, host); // before the presentation row goes
        if (!_store.RemovePresentation(disk.Id, host)) return false;
        var unregistered = WaitAsync(grace);
        var holders = _sessions.Holding(disk.Id, host);
        var waits = new List<Task<AckOutcome>>(holders.Count);
        foreach (var holder in holders)
            waits.Add(holder.SendAndWaitAsync(new Command { Blocking = true, DiskId = disk.Id, DeleteTable = new DeleteTable() }, _stopping));
        await Task.WhenAll(waits).ConfigureAwait(false);
        // Only now: until the host answered (or its lease lapsed) it may still do I/O with the table, so an unpresent
        // cut off on the way (a stop) must leave the session counted as a holder by whatever asks next.
        foreach (var holder in holders) holder.RemoveTable(disk.Id);
        await unregistered.ConfigureAwait(false);
        _store.ForgetUnpresenting(disk.Id, host); // only now may a restarted controller stop counting the host
        return true;
    }

    /// <summary>Deletes an unpresented disk and frees its space. False when it is still presented.</summary>
    public async Task<bool> DeleteDiskAsync(DiskRow disk)
    {
        using var _ = await LockDiskAsync(disk.Id).ConfigureAwait(false);
        // A host an unpresent of a previous controller left may still use the units for that controller's lease. Waited
        // out before the checks: a present may be persisted meanwhile (it takes no disk lock), and they must see it.
        await WaitAsync(UnregisteredHolderGrace(disk.Id, host: null)).ConfigureAwait(false);
        if (_store.ListPresentations(disk.Id).Count > 0) return false;
        CheckNoSnapshots(disk);
        Free(_store.DeleteDiskReleasing(disk.Id), disk.UnitsPerSegment);
        return true;
    }

    // ------------------------------------------------------------------ responses

    private FaultResponse Retry(MapFault fault, DiskRow disk, long segment, bool readOnly)
    {
        long first = segment & ~(long)(ResponseWindowSegments - 1);
        long count = Math.Min(ResponseWindowSegments, disk.SegmentCount - first);
        var entries = new ulong[count];
        Array.Fill(entries, MapEntry.Zero.Raw);
        foreach (var row in _store.GetWindow(disk.Id, first, count))
            entries[row.Segment - first] = (readOnly ? ReadOnlyView(row.Entry) : row.Entry).Raw;
        var response = new FaultResponse { FaultId = fault.FaultId, Outcome = FaultOutcome.Retry, FirstSegment = (ulong)first };
        response.Entries.Add(entries);
        return response;
    }

    /// <summary>What a read-only host gets: mapped entries also carry NoWrite, so a write faults even if the export allowed it.</summary>
    private static MapEntry ReadOnlyView(MapEntry entry) => entry.HasLocation ? entry.WithStates(EntryStates.NoWrite, EntryStates.None) : entry;

    private static FaultResponse Fail(MapFault fault, IoStatus status, string message) =>
        new() { FaultId = fault.FaultId, Outcome = FaultOutcome.Fail, Status = (uint)status, Message = message };

    private static void Respond(AgentSession session, FaultResponse response) =>
        session.Send(new ControllerMessage { FaultResponse = response });

    [LoggerMessage(EventId = 200, Level = LogLevel.Error, Message = "fault from {Host} on disk {DiskId} segment {Segment} failed")]
    private static partial void LogFaultFailed(ILogger logger, Exception e, string host, ulong diskId, ulong segment);

    [LoggerMessage(EventId = 201, Level = LogLevel.Debug, Message = "disk {Disk} segment {Segment} allocated at {Location}")]
    private static partial void LogAllocated(ILogger logger, string disk, long segment, string location);

    [LoggerMessage(EventId = 203, Level = LogLevel.Information, Message = "host {Host} has not registered since this controller started; a change of disk {DiskId} waits {RemainingMs} ms for its old lease to lapse")]
    private static partial void LogWaitingForUnregistered(ILogger logger, string host, ulong diskId, long remainingMs);

    [LoggerMessage(EventId = 202, Level = LogLevel.Warning, Message = "agent {Host} did not acknowledge a change of disk {DiskId}; proceeding after its lease lapsed")]
    private static partial void LogFenced(ILogger logger, string host, ulong diskId);
}
