using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Tessera.Controller.Mapping;
using Tessera.Controller.Store;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Operations;

/// <summary>Live progress of a job: the persisted row plus what only this process measured (pause times, speed).</summary>
public sealed class JobProgress
{
    private readonly List<double> _pausesMs = new();
    private readonly Stopwatch _running = new();
    private long _bytesThisRun;

    public JobProgress(MigrationJobRow row) => Row = row;

    public MigrationJobRow Row { get; internal set; }

    internal void Started() => _running.Start();

    internal void Stopped() => _running.Stop();

    internal void AddMove(TimeSpan pause, long bytes)
    {
        lock (_pausesMs) _pausesMs.Add(pause.TotalMilliseconds);
        Interlocked.Add(ref _bytesThisRun, bytes);
    }

    public double ElapsedSeconds => _running.Elapsed.TotalSeconds;

    /// <summary>Bytes moved per second of this process's run of the job.</summary>
    public double BytesPerSecond => ElapsedSeconds > 0 ? Interlocked.Read(ref _bytesThisRun) / ElapsedSeconds : 0;

    /// <summary>p50, p99 and max of the per-segment pause (NoWrite push to new-entry acknowledged), in ms.</summary>
    public (double P50, double P99, double Max, int Count) Pauses()
    {
        double[] sorted;
        lock (_pausesMs) sorted = _pausesMs.Order().ToArray();
        if (sorted.Length == 0) return (0, 0, 0, 0);
        double At(double q) => sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
        return (At(0.50), At(0.99), sorted[^1], sorted.Length);
    }
}

/// <summary>
/// Runs migration jobs (disk migration, container evacuation) one at a time in the background, from the store:
/// a job survives a controller restart because its row and its one-segment cursor are persisted; see
/// docs/architecture.md ("Migration") for why a half-moved segment is rolled back or forward.
/// </summary>
public sealed partial class MigrationRunner
{
    private const int Batch = 64;

    private readonly ControllerCore _core;
    private readonly ILogger _log;
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Dictionary<long, JobProgress> _progress = new();
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task _loop;

    public MigrationRunner(ControllerCore core, ILogger logger)
    {
        _core = core;
        _log = logger;
        // A move whose new location was persisted but maybe not pushed: agents may still read the old units, so
        // they stay reserved until the move is finished (the rebuilt pool thinks they are free).
        foreach (var job in Store.ListMigrationJobs(unfinishedOnly: true))
        {
            if (job.CurPhase == "persisted" && Store.GetDisk(job.CurDiskId) is { } disk)
            {
                try
                {
                    _core.Pool.MarkUsed(job.CurOldContainer, job.CurOldIndex, disk.UnitsPerSegment);
                }
                catch (InvalidOperationException e)
                {
                    // The map uses them again: the cursor is stale (cannot happen with the cursor-before-free order).
                    LogStaleCursor(_log, e, job.Id);
                    Store.ClearJobCursor(job.Id, 0);
                }
            }
        }
        _loop = Task.Run(LoopAsync);
    }

    private ControllerStore Store => _core.Store;

    /// <summary>Completes when any job's progress changes next.</summary>
    public Task Changed
    {
        get { lock (_progress) return _changed.Task; }
    }

    private void Signal()
    {
        TaskCompletionSource old;
        lock (_progress)
        {
            old = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        old.TrySetResult();
    }

    public JobProgress? Get(long id)
    {
        lock (_progress)
        {
            if (_progress.TryGetValue(id, out var p)) return p;
        }
        var row = Store.GetMigrationJob(id);
        if (row is null) return null;
        lock (_progress) return _progress.TryGetValue(id, out var p) ? p : _progress[id] = new JobProgress(row);
    }

    public MigrationJobRow Enqueue(string kind, ulong diskId, ushort source, ushort target, long totalSegments)
    {
        var row = Store.AddMigrationJob(kind, diskId, source, target, totalSegments, _core.Time.GetUtcNow().ToString("O"));
        lock (_progress) _progress[row.Id] = new JobProgress(row);
        _wake.Release();
        Signal();
        return row;
    }

    /// <summary>Waits for the loop to notice the stop (the core's token was cancelled).</summary>
    public void WaitStopped()
    {
        try { _loop.Wait(TimeSpan.FromMilliseconds(_core.Options.StopWaitForJobsMs)); }
        catch (AggregateException) { }
    }

    private async Task LoopAsync()
    {
        var stopping = _core.Stopping;
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                var job = Store.ListMigrationJobs(unfinishedOnly: true).FirstOrDefault();
                if (job is null)
                {
                    await _wake.WaitAsync(stopping).ConfigureAwait(false);
                    continue;
                }
                try
                {
                    await RunAsync(job, stopping).ConfigureAwait(false);
                }
                catch (Exception e) when (!stopping.IsCancellationRequested)
                {
                    // A bug or a store error: fail this job visibly rather than leave it "running" forever.
                    LogJobCrashed(_log, e, job.Id);
                    Finish(job.Id, "failed", "internal error: " + e.Message.ReplaceLineEndings(" "));
                }
            }
        }
        catch (Exception) when (stopping.IsCancellationRequested)
        {
            // stopping: the job stays "running" with its cursor, and resumes at the next start
        }
        catch (Exception e)
        {
            LogLoopFailed(_log, e);
        }
    }

    private async Task RunAsync(MigrationJobRow job, CancellationToken stopping)
    {
        var progress = Get(job.Id)!;
        progress.Started();
        try
        {
            var disk = job.Kind == MigrationJobRow.KindDisk ? Store.GetDisk(job.DiskId) : null;
            if (job.Kind == MigrationJobRow.KindDisk && disk is null)
            {
                Finish(job.Id, "failed", "the disk was deleted");
                return;
            }
            // A half-moved segment from a previous process: forward when the map already names the new place,
            // back (nothing to undo but the cursor: the new units are unreferenced, hence free) otherwise.
            if (job.CurPhase == "persisted" && Store.GetDisk(job.CurDiskId) is { } curDisk)
            {
                await _core.Coordinator.FinishPersistedMoveAsync(job, curDisk.UnitsPerSegment).ConfigureAwait(false);
                LogResumed(_log, job.Id, "forward");
            }
            else if (job.CurPhase != "")
            {
                Store.ClearJobCursor(job.Id, 0);
                LogResumed(_log, job.Id, "back");
            }

            Func<MapEntry, bool> needsMove = job.Kind == MigrationJobRow.KindDisk
                ? e => e.ContainerId != job.TargetContainer
                : e => e.ContainerId == job.SourceContainer;
            DiskCoordinator.AllocateFunc allocate = job.TargetContainer != 0
                ? (int units, out ushort c, out long first) => { c = job.TargetContainer; return _core.Pool.TryAllocateOn(job.TargetContainer, units, out first); }
                : (int units, out ushort c, out long first) => _core.Pool.TryAllocateExcept(job.SourceContainer, units, out c, out first);

            while (true)
            {
                stopping.ThrowIfCancellationRequested();
                var remaining = Remaining(job);
                var current = Store.GetMigrationJob(job.Id)!;
                if (current.TotalSegments != current.MovedSegments + remaining.Count)
                    Store.SetJobTotal(job.Id, current.MovedSegments + remaining.Count);
                Update(progress);
                if (remaining.Count == 0) break;
                int moved = 0;
                foreach (var row in remaining.Take(Batch))
                {
                    var result = await _core.Coordinator.MoveSegmentAsync(job.Id, row.DiskId, row.Segment, needsMove, allocate).ConfigureAwait(false);
                    if (result.Moved)
                    {
                        moved++;
                        progress.AddMove(result.Pause, result.Bytes);
                        Update(progress);
                    }
                    else if (result.Error is not null)
                    {
                        // Probe before marking it failed, as for every other error report: one transient error in a copy
                        // must not fail a container (every segment on it would answer EIO for good).
                        if (result.FailedContainer != 0)
                            await _core.Coordinator.OnContainerErrorReported(result.FailedContainer, $"migration job {job.Id}", result.Error).ConfigureAwait(false);
                        Finish(job.Id, "failed", result.Error);
                        return;
                    }
                }
                if (moved == 0 && Remaining(job).Count == remaining.Count)
                {
                    Finish(job.Id, "failed", "no progress: the remaining segments could not be moved");
                    return;
                }
            }
            var (p50, p99, max, n) = progress.Pauses();
            Finish(job.Id, "done", $"moved {n} segments in this run; pause p50 {p50:F1} ms, p99 {p99:F1} ms, max {max:F1} ms");
        }
        finally
        {
            progress.Stopped();
            Signal();
        }
    }

    private List<SegmentRow> Remaining(MigrationJobRow job) => job.Kind == MigrationJobRow.KindDisk
        ? Store.RowsOfDiskNotOn(job.DiskId, job.TargetContainer)
        : Store.RowsOnContainer(job.SourceContainer);

    private void Update(JobProgress progress)
    {
        progress.Row = Store.GetMigrationJob(progress.Row.Id)!;
        Signal();
    }

    private void Finish(long id, string state, string message)
    {
        Store.FinishJob(id, state, message, _core.Time.GetUtcNow().ToString("O"));
        if (Get(id) is { } p) p.Row = Store.GetMigrationJob(id)!;
        LogFinished(_log, id, state, message);
        Signal();
    }

    [LoggerMessage(EventId = 400, Level = LogLevel.Information, Message = "migration job {Id} {State}: {Message}")]
    private static partial void LogFinished(ILogger logger, long id, string state, string message);

    [LoggerMessage(EventId = 401, Level = LogLevel.Information, Message = "migration job {Id}: a half-moved segment was rolled {Direction}")]
    private static partial void LogResumed(ILogger logger, long id, string direction);

    [LoggerMessage(EventId = 403, Level = LogLevel.Error, Message = "migration job {Id} failed unexpectedly")]
    private static partial void LogJobCrashed(ILogger logger, Exception e, long id);

    [LoggerMessage(EventId = 404, Level = LogLevel.Error, Message = "migration job {Id}: the old units of its persisted cursor are mapped again; cursor dropped")]
    private static partial void LogStaleCursor(ILogger logger, Exception e, long id);

    [LoggerMessage(EventId = 402, Level = LogLevel.Error, Message = "the migration runner stopped")]
    private static partial void LogLoopFailed(ILogger logger, Exception e);
}
