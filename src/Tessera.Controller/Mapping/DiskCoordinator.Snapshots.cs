// Snapshots, copy-on-write, clones and resize, as sequences of table commands. Why each ordering is safe is argued in
// docs/architecture.md ("Snapshots and copy-on-write"); in short, every step keeps the rule "no agent's copy is less
// restrictive than the store":
//
//  * snapshot: persist (snapshot rows + NoWrite on the disk's rows, one transaction) → ChangeStates(set NoWrite) over
//    the whole disk, blocking, to every holder → mark ready → answer. When the holders answer, no write that could
//    still change a shared segment is running, and every later write faults.
//  * copy-on-write fault: allocate → copy → persist the new location (dropping this disk's reference to the old) →
//    push the new entry, blocking, to every holder (including the faulting one) → free the old location only if no
//    row names it any more → answer retry. If nothing else names the location, just clear NoWrite (persist, push).
//  * shrink: persist (size, tail rows gone) → ResizeTable, blocking → free the unreferenced tail. Grow: persist → push.

using System.Diagnostics;
using System.Diagnostics.Metrics;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Tessera.Controller.Agents;
using Tessera.Controller.Store;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Mapping;

public sealed partial class DiskCoordinator
{
    private static readonly Counter<long> s_copies = s_meter.CreateCounter<long>("tessera.controller.cow_copies", description: "shared segments copied on write");
    private static readonly Counter<long> s_unshared = s_meter.CreateCounter<long>("tessera.controller.cow_unshared", description: "NoWrite cleared on a segment no one else references");

    // ------------------------------------------------------------------ snapshots

    /// <summary>
    /// Takes a crash-consistent snapshot of a disk: metadata only. Returns the snapshot's disk row. Throws RpcException
    /// (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION) with a one-line message.
    /// </summary>
    public async Task<DiskRow> CreateSnapshotAsync(ulong diskId, string name)
    {
        using var _ = await LockDiskAsync(diskId).ConfigureAwait(false);
        var disk = _store.GetDisk(diskId) ?? throw Rpc(StatusCode.NotFound, $"disk {diskId} does not exist");
        if (_store.GetSnapshot(disk.Id) is not null) throw Rpc(StatusCode.FailedPrecondition, $"'{disk.Name}' is a snapshot; clone it to snapshot the clone");
        var snapshot = _store.CreateSnapshot(disk, name, _time.GetUtcNow().ToString("O"))
            ?? throw Rpc(StatusCode.AlreadyExists, $"disk '{disk.Name}' already has a snapshot '{name}'");
        // One range command per holder over the whole disk, blocking: answered once every write that might have seen a
        // writable entry has completed. Table chunks never loaded are skipped by the agent, so this is cheap for any size.
        await PushToHoldersAsync(disk.Id, _ => new Command
        {
            Blocking = true,
            DiskId = disk.Id,
            ChangeStates = new ChangeStates { FirstSegment = 0, Count = (ulong)disk.SegmentCount, Set = (uint)EntryStates.NoWrite },
        }, except: null).ConfigureAwait(false);
        _store.MarkSnapshotReady(snapshot.Id);
        LogSnapshotCreated(_log, snapshot.Name);
        return snapshot;
    }

    /// <summary>Deletes a snapshot that is not presented; frees the physical segments nothing else references.</summary>
    public async Task DeleteSnapshotAsync(SnapshotRow snapshot)
    {
        using var parentLock = await LockDiskAsync(snapshot.ParentDiskId).ConfigureAwait(false);
        using var snapshotLock = await LockDiskAsync(snapshot.Disk.Id).ConfigureAwait(false);
        // An unpresent a previous controller did not finish is waited out first (its host may still read, for one lease).
        await WaitAsync(UnregisteredHolderGrace(snapshot.Disk.Id, host: null)).ConfigureAwait(false);
        if (_store.GetSnapshot(snapshot.Disk.Id) is null) throw Rpc(StatusCode.NotFound, $"snapshot '{snapshot.Disk.Name}' does not exist");
        if (_store.ListPresentations(snapshot.Disk.Id).Count > 0)
            throw Rpc(StatusCode.FailedPrecondition, $"snapshot '{snapshot.Disk.Name}' is presented; unpresent it first");
        // No agent holds the snapshot's table (unpresenting deleted it, blocking), and every agent entry that named one
        // of its locations for a disk was replaced by a blocking push: what no row names now, no agent uses.
        Free(_store.DeleteSnapshot(snapshot.Disk.Id), snapshot.Disk.UnitsPerSegment);
        LogSnapshotDeleted(_log, snapshot.Disk.Name);
    }

    /// <summary>A new writable disk sharing the snapshot's segments (NoWrite) until written.</summary>
    public async Task<DiskRow> CloneAsync(SnapshotRow snapshot, string name)
    {
        using var _ = await LockDiskAsync(snapshot.Disk.Id).ConfigureAwait(false);
        var current = _store.GetSnapshot(snapshot.Disk.Id);
        if (current is null || !current.Ready) throw Rpc(StatusCode.NotFound, $"snapshot '{snapshot.Disk.Name}' does not exist");
        return _store.CloneSnapshot(current.Disk, name, _time.GetUtcNow().ToString("O"))
            ?? throw Rpc(StatusCode.AlreadyExists, $"disk '{name}' already exists");
    }

    /// <summary>Throws FAILED_PRECONDITION when the disk is a snapshot or has snapshots (for disk deletion).</summary>
    private void CheckNoSnapshots(DiskRow disk)
    {
        if (_store.GetSnapshot(disk.Id) is not null)
            throw Rpc(StatusCode.FailedPrecondition, $"'{disk.Name}' is a snapshot; delete it with: tessera snapshot delete");
        var snapshots = _store.ListSnapshots(disk.Id);
        if (snapshots.Count > 0)
            throw Rpc(StatusCode.FailedPrecondition, $"disk '{disk.Name}' has {snapshots.Count} snapshot(s) ({string.Join(", ", snapshots.Select(s => s.Name))}); delete them first");
    }

    // ------------------------------------------------------------------ copy-on-write

    /// <summary>
    /// A write to a NoWrite segment. If nothing else names its location (the snapshot was deleted, or it was rolled
    /// back), clear NoWrite: persist, push, retry. Otherwise copy it to new space, persist the disk's new mapping,
    /// push it blocking to every holder, free the old location if nothing names it any more, and answer retry.
    /// Runs under the disk's lock.
    /// </summary>
    private async Task<FaultResponse> WriteToSharedAsync(AgentSession session, MapFault fault, DiskRow disk, long segment, MapEntry entry)
    {
        if (_store.ClearNoWriteIfUnshared(disk.Id, segment) is { } cleared)
        {
            s_unshared.Add(1);
            await PushAsync(disk.Id, segment, 1, cleared, blocking: false, except: session).ConfigureAwait(false);
            return Retry(fault, disk, segment, false);
        }

        int units = disk.UnitsPerSegment;
        if (!_pool.TryAllocate(units, out ushort containerId, out long firstUnit))
        {
            if (await WaitForHeldBackSpaceAsync().ConfigureAwait(false)) return await WriteToSharedAsync(session, fault, disk, segment, entry).ConfigureAwait(false);
            s_noSpace.Add(1);
            return Fail(fault, IoStatus.NoSpace, "no container has a free segment for copy-on-write");
        }
        var target = MapEntry.Mapped(containerId, firstUnit);
        var containers = _store.ListContainers();
        var from = containers.First(c => c.Id == entry.ContainerId);
        var to = containers.First(c => c.Id == containerId);
        var status = IoStatus.IoError;
        List<PhysicalLocation> unreferenced = [];
        bool persisted = false;
        try
        {
            // The copy writes another disk's bytes into units that may be above the mark: the mark must be durable
            // first, or a crash before the mapping commits would leave them "never used" yet full (a leak between disks).
            _store.AdvanceHighWater(containerId, firstUnit + units);
            // Every holder has NoWrite here (the store says so, and no agent is less restrictive), so the source does not change while copied.
            (status, _, _) = await CopyAsync(from, to, entry.ContainerOffset, target.ContainerOffset, disk.SegmentSizeBytes).ConfigureAwait(false);
            if (status == IoStatus.Ok)
            {
                unreferenced = _store.SetEntriesReleasing(disk.Id, [(segment, target)]);
                persisted = true;
            }
        }
        finally
        {
            if (!persisted) _pool.Free(containerId, firstUnit, units);
        }
        if (status != IoStatus.Ok) return Fail(fault, IoStatus.IoError, $"copy-on-write of segment {segment} from {from.Name} to {to.Name} failed: {status}");

        s_copies.Add(1);
        // Blocking and to every holder, the faulting one too: reads of the old place drain before it may be freed
        // (now, if a snapshot deletion raced with us, or later, when the snapshot is deleted). Invalid rather than
        // the target: a holder that applied the target could write and acknowledge while another still read the
        // old place (same race as in AllocateAsync); holders load the target on their next fault.
        await PushAsync(disk.Id, segment, 1, MapEntry.Invalid, blocking: true, except: null).ConfigureAwait(false);
        Free(unreferenced, units);
        return Retry(fault, disk, segment, false);
    }

    // ------------------------------------------------------------------ resize

    /// <summary>
    /// Grows (new segments Zero) or shrinks a disk online. A shrink whose cut-off tail holds data is refused unless
    /// <paramref name="force"/>. Returns the updated row.
    /// </summary>
    public async Task<DiskRow> ResizeAsync(ulong diskId, long sizeBytes, bool force)
    {
        using var _ = await LockDiskAsync(diskId).ConfigureAwait(false);
        var disk = _store.GetDisk(diskId) ?? throw Rpc(StatusCode.NotFound, $"disk {diskId} does not exist");
        if (_store.GetSnapshot(disk.Id) is not null) throw Rpc(StatusCode.FailedPrecondition, $"'{disk.Name}' is a snapshot; snapshots cannot be resized");
        if (sizeBytes == disk.SizeBytes) return disk;
        long segmentCount = (sizeBytes + disk.SegmentSizeBytes - 1) / disk.SegmentSizeBytes;
        bool shrink = sizeBytes < disk.SizeBytes;
        if (shrink)
        {
            // Bytes past the end inside a kept segment would reappear after a later grow, so shrink whole segments only.
            if (sizeBytes % disk.SegmentSizeBytes != 0)
                throw Rpc(StatusCode.InvalidArgument, $"a disk shrinks by whole segments: the size must be a multiple of {disk.SegmentSizeBytes} bytes");
            long mapped = _store.CountMappedFrom(disk.Id, segmentCount);
            if (mapped > 0 && !force)
                throw Rpc(StatusCode.FailedPrecondition, $"shrinking '{disk.Name}' to {sizeBytes} bytes would discard {mapped} segment(s) holding data; use --force to discard them");
        }
        // Persist first: for a grow this relaxes (new Zero segments), for a shrink it records the intent.
        var unreferenced = _store.ResizeDisk(disk.Id, sizeBytes, segmentCount);
        // A shrink is blocking: when every holder answered, no I/O to the tail is running and its space may be reused.
        await PushToHoldersAsync(disk.Id, _ => new Command
        {
            Blocking = shrink,
            DiskId = disk.Id,
            ResizeTable = new ResizeTable { SizeBytes = (ulong)sizeBytes },
        }, except: null).ConfigureAwait(false);
        Free(unreferenced, disk.UnitsPerSegment);
        LogResized(_log, disk.Name, disk.SizeBytes, sizeBytes);
        return disk with { SizeBytes = sizeBytes };
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>Like <see cref="PushAsync"/> for any command: send to every holder but <paramref name="except"/>, wait for each reply or lease lapse.</summary>
    private async Task PushToHoldersAsync(ulong diskId, Func<AgentSession, Command> make, AgentSession? except)
    {
        var unregistered = WaitAsync(UnregisteredHolderGrace(diskId, host: null));
        var holders = _sessions.Holding(diskId);
        var waits = new List<Task<AckOutcome>>(holders.Count);
        var names = new List<string>(holders.Count);
        foreach (var holder in holders)
        {
            if (ReferenceEquals(holder, except)) continue;
            waits.Add(holder.SendAndWaitAsync(make(holder), _stopping));
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

    private void Free(List<PhysicalLocation> locations, int units)
    {
        _store.ForgetReleasing(locations); // first: a crash before the pool frees them loses nothing, every holder has dropped them
        foreach (var l in locations) _pool.Free(l.ContainerId, l.PhysicalIndex, units);
    }

    private static RpcException Rpc(StatusCode code, string message) => new(new Status(code, message));

    [LoggerMessage(EventId = 210, Level = LogLevel.Information, Message = "snapshot {Name} created")]
    private static partial void LogSnapshotCreated(ILogger logger, string name);

    [LoggerMessage(EventId = 211, Level = LogLevel.Information, Message = "snapshot {Name} deleted")]
    private static partial void LogSnapshotDeleted(ILogger logger, string name);

    [LoggerMessage(EventId = 212, Level = LogLevel.Information, Message = "disk {Name} resized from {OldBytes} to {NewBytes} bytes")]
    private static partial void LogResized(ILogger logger, string name, long oldBytes, long newBytes);
}
