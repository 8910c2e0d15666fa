// Migration of one physical segment, and container failure, as sequences of table commands.
//
// Moving a segment (all under the locks of every disk that maps it, so faults on it queue behind the move):
//   1. allocate the new units; persist the intent (job cursor: old and new location, phase "copying");
//   2. push the old entry + NoWrite with the blocking flag to every holder: when it returns no agent writes the old
//      place any more, and every write acknowledged before has completed there;
//   3. copy old -> new through the controller's own container handles, flush the destination;
//   4. persist the new location for every row that maps the old one (snapshots and clones may share it), with the
//      cursor phase "persisted", in one transaction;
//   5. push the new entries with NoWrite and the blocking flag: when it returns no agent reads the old place any
//      more; only then (6) push the stored entries, which may allow writes again. One push of the writable entries
//      would let the first holder to apply it write the new place while a slower holder still read the old one;
//   6. clear the cursor, free the old units, push the stored entries (a relaxation: same place, writes allowed).
// A failure before 4 rolls back: the store never changed, so re-pushing the stored entries (a relaxation of what
// the agents hold, persisted already) restores writes, and the new units are freed. A source or target marked failed
// during the copy is such a failure too (step 4 checks it in its transaction): the segment was on the source when
// the source failed, so it is lost with the rest of it, like every other segment there.
//
// Container failure: persist (container failed, every row on it Error), tell every agent the container is failed,
// then, under each disk's lock in turn, mark again whatever row is on the container now and push Error for it with the
// blocking flag to every holder (a change in flight may have added or released a row in between).

using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Tessera.Controller.Store;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Mapping;

/// <summary>What happened to one segment move.</summary>
public readonly record struct SegmentMove(bool Moved, long Bytes, TimeSpan Pause, string? Error, ushort FailedContainer, bool NoSpace)
{
    public static SegmentMove Skipped => new(false, 0, TimeSpan.Zero, null, 0, false);
}

public sealed partial class DiskCoordinator
{
    private const int CopyChunkBytes = 1 << 20;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<ushort, Task> _probes = new();

    /// <summary>Takes several disks' locks in id order (no deadlock between two multi-disk holders).</summary>
    private async Task<IDisposable> LockDisksAsync(IEnumerable<ulong> diskIds)
    {
        var held = new List<IDisposable>();
        try
        {
            foreach (var id in diskIds.Distinct().Order()) held.Add(await LockDiskAsync(id).ConfigureAwait(false));
        }
        catch
        {
            foreach (var h in held) h.Dispose();
            throw;
        }
        return new Many(held);
    }

    private sealed class Many(List<IDisposable> held) : IDisposable
    {
        public void Dispose()
        {
            for (int i = held.Count - 1; i >= 0; i--) held[i].Dispose();
        }
    }

    /// <summary>
    /// Moves the physical segment that <paramref name="diskId"/>/<paramref name="segment"/> maps, if
    /// <paramref name="needsMove"/> still says so under the lock, to units chosen by <paramref name="allocate"/>.
    /// </summary>
    public async Task<SegmentMove> MoveSegmentAsync(long jobId, ulong diskId, long segment, Func<MapEntry, bool> needsMove,
        AllocateFunc allocate)
    {
        var disk = _store.GetDisk(diskId);
        if (disk is null) return SegmentMove.Skipped;
        int units = disk.UnitsPerSegment;
        while (true)
        {
            var first = _store.GetEntry(diskId, segment);
            if (!first.HasLocation || !needsMove(first)) return SegmentMove.Skipped;
            var lockedDisks = _store.RowsAt(first.ContainerId, first.PhysicalIndex).Select(r => r.DiskId).Append(diskId).Distinct().ToList();
            using var locks = await LockDisksAsync(lockedDisks).ConfigureAwait(false);
            var old = _store.GetEntry(diskId, segment);
            if (!old.HasLocation || !needsMove(old)) return SegmentMove.Skipped;
            var refs = _store.RowsAt(old.ContainerId, old.PhysicalIndex);
            if (refs.Any(r => !lockedDisks.Contains(r.DiskId))) continue; // sharing changed while we waited: lock again
            return await MoveLockedAsync(jobId, disk, units, old, refs, allocate).ConfigureAwait(false);
        }
    }

    public delegate bool AllocateFunc(int units, out ushort containerId, out long firstUnit);

    private async Task<SegmentMove> MoveLockedAsync(long jobId, DiskRow disk, int units, MapEntry old, List<SegmentRow> refs, AllocateFunc allocate)
    {
        if (!allocate(units, out ushort newContainer, out long newIndex))
            return new(false, 0, TimeSpan.Zero, "no healthy container has room for the segment", 0, true);
        var containers = _store.ListContainers().ToDictionary(c => c.Id);
        var source = containers[old.ContainerId];
        var target = containers[newContainer];
        try
        {
            // Durable before the copy writes there: see the copy-on-write path (DiskCoordinator.Snapshots.cs).
            _store.AdvanceHighWater(newContainer, newIndex + units);
        }
        catch
        {
            _pool.Free(newContainer, newIndex, units);
            throw;
        }
        _store.SetJobCursor(jobId, disk.Id, refs.First(r => r.DiskId == disk.Id).Segment, old, newContainer, newIndex);

        var pause = Stopwatch.StartNew();
        foreach (var r in refs)
            await PushAsync(r.DiskId, r.Segment, 1, r.Entry.WithStates(EntryStates.NoWrite, EntryStates.None), blocking: true, except: null).ConfigureAwait(false);

        var (status, failed, why) = await CopyAsync(source, target, old.ContainerOffset, MapEntry.Mapped(newContainer, newIndex).ContainerOffset, disk.SegmentSizeBytes).ConfigureAwait(false);
        if (status != IoStatus.Ok) return await RollBackMoveAsync(why, failed).ConfigureAwait(false);

        // Null when the source or the target was marked failed during the copy (bug 16): relocating would carry the
        // source's Error rows to units that no live row then names (leaked), or put the segment on a failed container.
        var moved = _store.RelocateSegment(jobId, old.ContainerId, old.PhysicalIndex, newContainer, newIndex);
        if (moved is null)
            return await RollBackMoveAsync($"container {source.Name} or {target.Name} was marked failed during the move", 0).ConfigureAwait(false);
        await PushNewPlaceFrozenAsync(moved).ConfigureAwait(false);
        // Cursor first, then free: once the units are free another disk may map them, and a restart must not find
        // a "persisted" cursor that would reserve them again.
        _store.ClearJobCursor(jobId, disk.SegmentSizeBytes);
        _pool.Free(old.ContainerId, old.PhysicalIndex, units);
        await PushRelaxedAsync(moved).ConfigureAwait(false);
        pause.Stop();
        LogMoved(_log, disk.Name, refs.Count, source.Name, target.Name, pause.Elapsed.TotalMilliseconds);
        return new(true, disk.SegmentSizeBytes, pause.Elapsed, null, 0, false);

        // The map never changed: give the agents the stored entries again (Error ones if the source failed meanwhile:
        // its marking persisted them and pushes them too once it has the lock) and free the new units.
        async Task<SegmentMove> RollBackMoveAsync(string? error, ushort failedContainer)
        {
            foreach (var r in refs)
                await PushAsync(r.DiskId, r.Segment, 1, _store.GetEntry(r.DiskId, r.Segment), blocking: false, except: null).ConfigureAwait(false);
            _pool.Free(newContainer, newIndex, units);
            _store.ClearJobCursor(jobId, 0);
            return new(false, 0, pause.Elapsed, error, failedContainer, false);
        }
    }

    /// <summary>
    /// Finishes a move that a previous controller process persisted (cursor phase "persisted") but may not have
    /// pushed: push the stored entries with the blocking flag to every holder, then free the old units, which the
    /// caller kept reserved since start.
    /// </summary>
    public async Task FinishPersistedMoveAsync(MigrationJobRow job, int units)
    {
        var refs = _store.RowsAt(job.CurNewContainer, job.CurNewIndex);
        using (await LockDisksAsync(refs.Select(r => r.DiskId).Append(job.CurDiskId)).ConfigureAwait(false))
        {
            var moved = _store.RowsAt(job.CurNewContainer, job.CurNewIndex);
            await PushNewPlaceFrozenAsync(moved).ConfigureAwait(false);
            _store.ClearJobCursor(job.Id, (long)units * MapEntry.PhysicalUnitBytes);
            _pool.Free(job.CurOldContainer, job.CurOldIndex, units);
            await PushRelaxedAsync(moved).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Step 5 of a move: every holder of every row that now names the new place gets that place with NoWrite, with
    /// the blocking flag, and this waits for each (reply or lease lapse). Until every holder has answered, some may
    /// still read the old place; as long as nobody may write the new one, they all read the same bytes (the old place
    /// has been frozen since step 2). Pushing the writable entries here instead let the first holder to apply them
    /// write and acknowledge in the new place while a slower holder (a silent stream) still read the old bytes there
    /// (found by the simulation, seed 40003509: a WRITE_ZEROES acknowledged on one host, the old data read on another).
    /// </summary>
    private async Task PushNewPlaceFrozenAsync(List<SegmentRow> moved)
    {
        foreach (var r in moved)
            await PushAsync(r.DiskId, r.Segment, 1, r.Entry.WithStates(EntryStates.NoWrite, EntryStates.None), blocking: true, except: null).ConfigureAwait(false);
    }

    /// <summary>
    /// After <see cref="PushNewPlaceFrozenAsync"/> answered: the stored entries, where they allow more than NoWrite (a
    /// relaxation, and every holder already names the new place). Sent under the disks' locks, so nothing pushed later
    /// can arrive before it; a holder that misses it faults on its next write and gets the same entry.
    /// </summary>
    private async Task PushRelaxedAsync(List<SegmentRow> moved)
    {
        foreach (var r in moved)
            if ((r.Entry.States & EntryStates.NoWrite) == 0)
                await PushAsync(r.DiskId, r.Segment, 1, r.Entry, blocking: false, except: null).ConfigureAwait(false);
    }

    /// <summary>
    /// Test seam: runs after a copy (copy-on-write or migration) reached its target durably and before the mapping
    /// naming it is persisted. A test makes it hang and restarts the controller: the crash the high-water rule guards.
    /// </summary>
    internal Func<CancellationToken, Task>? AfterCopyForTest { get; set; }

    /// <summary>Copies a range between containers and flushes the target; on failure names the container that failed.</summary>
    private async Task<(IoStatus Status, ushort FailedContainer, string? Why)> CopyAsync(ContainerRow source, ContainerRow target, long from, long to, int length)
    {
        IStorageContainer src, dst;
        try { src = ContainerRegistry.Shared.Open(source.Uri); }
        catch (Exception e) when (e is not OperationCanceledException) { return (IoStatus.IoError, source.Id, $"cannot open {source.Name}: {e.Message}"); }
        try { dst = ContainerRegistry.Shared.Open(target.Uri); }
        catch (Exception e) when (e is not OperationCanceledException) { return (IoStatus.IoError, target.Id, $"cannot open {target.Name}: {e.Message}"); }
        var buffer = new byte[Math.Min(length, CopyChunkBytes)];
        for (long done = 0; done < length; done += buffer.Length)
        {
            var s = await src.ReadAsync(from + done, buffer, _stopping).ConfigureAwait(false);
            if (s != IoStatus.Ok) return (s, s == IoStatus.IoError ? source.Id : (ushort)0, $"reading {source.Name} failed: {s}");
            s = await dst.WriteAsync(to + done, buffer, _stopping).ConfigureAwait(false);
            if (s != IoStatus.Ok) return (s, s == IoStatus.IoError ? target.Id : (ushort)0, $"writing {target.Name} failed: {s}");
        }
        var f = await dst.FlushAsync(_stopping).ConfigureAwait(false);
        if (f == IoStatus.Ok && AfterCopyForTest is { } hook) await hook(_stopping).ConfigureAwait(false);
        return f == IoStatus.Ok ? (f, (ushort)0, null) : (f, f == IoStatus.IoError ? target.Id : (ushort)0, $"flushing {target.Name} failed: {f}");
    }

    // ------------------------------------------------------------------ container failure

    /// <summary>
    /// Marks a container failed: persist (container failed, its rows Error), tell every agent, then push Error with
    /// the blocking flag to every holder of each affected segment. Only moves toward worse; idempotent.
    /// </summary>
    public async Task MarkContainerFailedAsync(ushort containerId, string reason)
    {
        _store.MarkContainerFailed(containerId, reason);
        _pool.SetFailed(containerId, true);
        var row = _store.ListContainers().FirstOrDefault(c => c.Id == containerId);
        if (row is null) return;
        LogContainerFailed(_log, row.Name, row.FailureReason);
        var info = new ContainerInfo { Id = row.Id, Name = row.Name, Uri = row.Uri, Failed = true };
        foreach (var session in _sessions.Open())
            _ = session.SendCommand(new Command { UpsertContainer = new UpsertContainer { Container = info } });
        // Mark and push under each disk's lock what is on the container then, not the rows marked above (bug 17): a
        // change holding the lock meanwhile may have committed a new row there (an allocation or copy-on-write that
        // took its units before the pool knew the container failed) or released one (a zeroing left it Zero, and an
        // Error pushed after that would stick in the agents). Every disk, not only those with rows there: the
        // allocation in flight may be a disk's first row on the container. Once a disk's lock is ours, every change
        // that took units before SetFailed has committed or given them back, and later ones cannot pick the container.
        foreach (var disk in _store.ListDisks())
        {
            using var _ = await LockDiskAsync(disk.Id).ConfigureAwait(false);
            // Consecutive segments become one range command: Error voids the location, so one entry fills the run.
            var segments = _store.MarkDiskRowsFailed(containerId, disk.Id);
            int i = 0;
            while (i < segments.Count)
            {
                int j = i;
                while (j + 1 < segments.Count && segments[j + 1] == segments[j] + 1) j++;
                await PushAsync(disk.Id, segments[i], j - i + 1, MapEntry.Error, blocking: true, except: null).ConfigureAwait(false);
                i = j + 1;
            }
        }
    }

    /// <summary>Reads a block and flushes: null when the container answers, else why not.</summary>
    public async Task<string?> ProbeContainerAsync(ContainerRow container)
    {
        try
        {
            var c = ContainerRegistry.Shared.Open(container.Uri);
            var buffer = new byte[4096];
            var s = await c.ReadAsync(0, buffer, _stopping).ConfigureAwait(false);
            if (s != IoStatus.Ok) return $"probe read failed: {s}";
            s = await c.FlushAsync(_stopping).ConfigureAwait(false);
            return s == IoStatus.Ok ? null : $"probe flush failed: {s}";
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return "probe could not open it: " + e.Message.ReplaceLineEndings(" ");
        }
    }

    /// <summary>
    /// An agent (or the controller itself) saw an I/O error on a container: probe it once (concurrent reports
    /// share the probe) and mark it failed when the probe fails too.
    /// </summary>
    public Task OnContainerErrorReported(ushort containerId, string who, string message)
    {
        Task Probe(ushort id) => Task.Run(async () =>
        {
            try
            {
                var row = _store.ListContainers().FirstOrDefault(c => c.Id == id);
                if (row is null || row.Failed) return;
                var probe = await ProbeContainerAsync(row).ConfigureAwait(false);
                if (probe is null)
                {
                    LogProbeOk(_log, row.Name, who, message);
                    return;
                }
                await MarkContainerFailedAsync(id, $"{who} saw I/O errors ({message}); {probe}").ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
            {
            }
            catch (Exception e)
            {
                LogProbeError(_log, e, id);
            }
        });
        // Concurrent reports share one probe; a finished probe is replaced by a new one.
        return _probes.AddOrUpdate(containerId, Probe, (id, running) => running.IsCompleted ? Probe(id) : running);
    }

    [LoggerMessage(EventId = 210, Level = LogLevel.Debug, Message = "disk {Disk}: moved a segment ({Refs} map rows) from {Source} to {Target}, paused {PauseMs:F1} ms")]
    private static partial void LogMoved(ILogger logger, string disk, int refs, string source, string target, double pauseMs);

    [LoggerMessage(EventId = 211, Level = LogLevel.Error, Message = "container {Name} marked failed: {Reason}")]
    private static partial void LogContainerFailed(ILogger logger, string name, string reason);

    [LoggerMessage(EventId = 212, Level = LogLevel.Warning, Message = "container {Name}: {Who} reported I/O errors ({Message}) but the probe succeeded; not marked failed")]
    private static partial void LogProbeOk(ILogger logger, string name, string who, string message);

    [LoggerMessage(EventId = 213, Level = LogLevel.Error, Message = "probing container {Id} failed")]
    private static partial void LogProbeError(ILogger logger, Exception e, ushort id);
}
