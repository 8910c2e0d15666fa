using Grpc.Core;
using Microsoft.Extensions.Logging;
using Tessera.Controller.Operations;
using Tessera.Controller.Store;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Admin;

/// <summary>The Operations API (operations.proto): migration jobs and the container lifecycle.</summary>
public sealed partial class OperationsService : Tessera.Core.Protocol.Operations.OperationsBase
{
    private readonly ControllerCore _core;
    private readonly ILogger _log;

    public OperationsService(ControllerCore core, ILoggerFactory loggerFactory)
    {
        _core = core;
        _log = loggerFactory.CreateLogger<OperationsService>();
    }

    private ControllerStore Store => _core.Store;

    public override Task<JobView> MigrateDisk(MigrateDiskRequest request, ServerCallContext context)
    {
        if (string.IsNullOrEmpty(request.Disk)) throw Error(StatusCode.InvalidArgument, "a disk name is required");
        var disk = Store.GetDisk(request.Disk) ?? throw Error(StatusCode.NotFound, $"disk '{request.Disk}' does not exist");
        var target = FindContainer(request.To);
        if (target.Failed) throw Error(StatusCode.FailedPrecondition, $"container '{target.Name}' is failed: {target.FailureReason}");
        long count = Store.RowsOfDiskNotOn(disk.Id, target.Id).Count;
        var (total, used) = _core.Pool.Usage(target.Id);
        if ((total - used) < count * disk.UnitsPerSegment)
            throw Error(StatusCode.FailedPrecondition, $"container '{target.Name}' has {(total - used) * MapEntry.PhysicalUnitBytes} bytes free; the disk needs {count * disk.SegmentSizeBytes}");
        var job = _core.Migrations.Enqueue(MigrationJobRow.KindDisk, disk.Id, 0, target.Id, count);
        LogStarted(_log, job.Id, $"migrate disk {disk.Name} to {target.Name}");
        return Task.FromResult(View(_core.Migrations.Get(job.Id)!));
    }

    public override Task<JobView> EvacuateContainer(EvacuateRequest request, ServerCallContext context)
    {
        var source = FindContainer(request.Container);
        ushort target = 0;
        if (!string.IsNullOrEmpty(request.To))
        {
            var t = FindContainer(request.To);
            if (t.Id == source.Id) throw Error(StatusCode.InvalidArgument, "cannot evacuate a container into itself");
            if (t.Failed) throw Error(StatusCode.FailedPrecondition, $"container '{t.Name}' is failed: {t.FailureReason}");
            target = t.Id;
        }
        long count = Store.RowsOnContainer(source.Id).Count;
        var job = _core.Migrations.Enqueue(MigrationJobRow.KindEvacuate, 0, source.Id, target, count);
        LogStarted(_log, job.Id, $"evacuate container {source.Name}");
        return Task.FromResult(View(_core.Migrations.Get(job.Id)!));
    }

    public override Task<JobView> GetJob(JobRef request, ServerCallContext context) => Task.FromResult(View(FindJob(request.Id)));

    public override Task<ListJobsReply> ListJobs(ListJobsRequest request, ServerCallContext context)
    {
        var reply = new ListJobsReply();
        foreach (var row in Store.ListMigrationJobs()) reply.Jobs.Add(View(_core.Migrations.Get(row.Id)!));
        return Task.FromResult(reply);
    }

    public override async Task WatchJob(JobRef request, IServerStreamWriter<JobView> responseStream, ServerCallContext context)
    {
        var progress = FindJob(request.Id);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, _core.Stopping);
        while (true)
        {
            var changed = _core.Migrations.Changed; // before reading, so no change is missed
            var view = View(progress);
            await responseStream.WriteAsync(view, linked.Token).ConfigureAwait(false);
            if (view.State != "running") return;
            // At most ~20 views a second: a fast job changes far more often than a terminal can show.
            await Task.WhenAll(changed, Task.Delay(50, linked.Token)).WaitAsync(linked.Token).ConfigureAwait(false);
        }
    }

    public override Task<Empty> RemoveContainer(ContainerRef request, ServerCallContext context)
    {
        var c = FindContainer(request.Name);
        lock (_core.ContainerLock)
        {
            long rows = Store.CountRowsOnContainer(c.Id);
            if (rows > 0) throw Error(StatusCode.FailedPrecondition, $"container '{c.Name}' still holds {rows} segments; evacuate it first (tessera container evacuate {c.Name})");
            if (!Store.RemoveContainer(c.Id)) throw Error(StatusCode.FailedPrecondition, $"container '{c.Name}' is in use (a segment or a running migration job references it)");
            _core.Pool.RemoveContainer(c.Id);
            // Agents keep the slot (ids are never reused while any entry could name them: max(id)+1 allocation
            // only reuses the top id, whose entries are all gone). The controller closes its own handle.
            ContainerRegistry.Shared.Close(c.Uri);
        }
        LogRemoved(_log, c.Name);
        return Task.FromResult(new Empty());
    }

    public override async Task<ContainerView> FailContainer(FailContainerRequest request, ServerCallContext context)
    {
        var c = FindContainer(request.Name);
        string reason = string.IsNullOrWhiteSpace(request.Reason) ? "marked failed by an operator" : request.Reason.Trim();
        await _core.Coordinator.MarkContainerFailedAsync(c.Id, reason).ConfigureAwait(false);
        return ContainerView(FindContainer(c.Name));
    }

    public override async Task<ContainerView> RepairContainer(ContainerRef request, ServerCallContext context)
    {
        var c = FindContainer(request.Name);
        if (!c.Failed) return ContainerView(c);
        var probe = await _core.Coordinator.ProbeContainerAsync(c).ConfigureAwait(false);
        if (probe is not null) throw Error(StatusCode.FailedPrecondition, $"container '{c.Name}' still fails: {probe}");
        lock (_core.ContainerLock)
        {
            // What happened to a failed container meanwhile is unknown (replaced, restored, rewritten): trust no unit as never used.
            _core.Pool.ForgetNeverUsed(c.Id);
            Store.ForgetNeverUsed(c.Id, c.SizeBytes / Tessera.Core.Mapping.MapEntry.PhysicalUnitBytes);
            Store.ClearContainerFailed(c.Id);
            _core.Pool.SetFailed(c.Id, false);
            var info = new ContainerInfo { Id = c.Id, Name = c.Name, Uri = c.Uri, Failed = false };
            foreach (var session in _core.Sessions.Open())
                _ = session.SendCommand(new Command { UpsertContainer = new UpsertContainer { Container = info } });
        }
        LogRepaired(_log, c.Name);
        return ContainerView(FindContainer(c.Name));
    }

    public override Task<DiskLocationsReply> GetDiskLocations(DiskRef request, ServerCallContext context)
    {
        if (string.IsNullOrEmpty(request.Name)) throw Error(StatusCode.InvalidArgument, "a disk name is required");
        var disk = Store.GetDisk(request.Name) ?? throw Error(StatusCode.NotFound, $"disk '{request.Name}' does not exist");
        var containers = Store.ListContainers().ToDictionary(c => c.Id);
        var rows = Store.GetSegments(disk.Id, 0, disk.SegmentCount);
        var reply = new DiskLocationsReply { Disk = disk.Name, ZeroSegments = (ulong)(disk.SegmentCount - rows.Count) };
        foreach (var g in rows.Where(r => r.Entry.ContainerId != 0).GroupBy(r => r.Entry.ContainerId).OrderBy(g => g.Key))
        {
            containers.TryGetValue(g.Key, out var c);
            long errors = g.Count(r => (r.Entry.States & EntryStates.Error) != 0);
            long live = g.Count() - errors;
            reply.Containers.Add(new ContainerLocation
            {
                Container = c?.Name ?? "?",
                ContainerId = g.Key,
                Segments = (ulong)live,
                Bytes = (ulong)(live * disk.SegmentSizeBytes),
                ErrorSegments = (ulong)errors,
                Health = c is null ? "removed" : c.Failed ? "failed" : "ok",
            });
        }
        return Task.FromResult(reply);
    }

    // ---------------------------------------------------------------- helpers

    private JobProgress FindJob(ulong id) =>
        _core.Migrations.Get((long)id) ?? throw Error(StatusCode.NotFound, $"job {id} does not exist");

    private ContainerRow FindContainer(string name)
    {
        if (string.IsNullOrEmpty(name)) throw Error(StatusCode.InvalidArgument, "a container name is required");
        return Store.ListContainers().FirstOrDefault(c => c.Name == name) ?? throw Error(StatusCode.NotFound, $"container '{name}' does not exist");
    }

    private JobView View(JobProgress p)
    {
        var row = p.Row;
        var names = Store.ListContainers().ToDictionary(c => c.Id, c => c.Name);
        string Name(ushort id) => id == 0 ? "" : names.GetValueOrDefault(id, $"#{id}");
        var (p50, p99, max, n) = p.Pauses();
        return new JobView
        {
            Id = (ulong)row.Id,
            Kind = row.Kind,
            Disk = row.Kind == MigrationJobRow.KindDisk ? Store.GetDisk(row.DiskId)?.Name ?? $"#{row.DiskId}" : "",
            Source = Name(row.SourceContainer),
            Target = Name(row.TargetContainer),
            State = row.State,
            Message = row.Message,
            TotalSegments = (ulong)row.TotalSegments,
            MovedSegments = (ulong)row.MovedSegments,
            MovedBytes = (ulong)row.MovedBytes,
            PauseP50Ms = p50,
            PauseP99Ms = p99,
            PauseMaxMs = max,
            PauseSamples = (uint)n,
            ElapsedSeconds = p.ElapsedSeconds,
            BytesPerSecond = p.BytesPerSecond,
            CreatedAt = row.CreatedAt,
            FinishedAt = row.FinishedAt,
        };
    }

    private ContainerView ContainerView(ContainerRow c)
    {
        var (total, used) = _core.Pool.Usage(c.Id);
        return new ContainerView
        {
            Id = c.Id, Name = c.Name, Uri = c.Uri, SizeBytes = (ulong)c.SizeBytes, SegmentSizeBytes = MapEntry.PhysicalUnitBytes,
            TotalSegments = (ulong)total, UsedSegments = (ulong)used, UsedBytes = (ulong)(used * MapEntry.PhysicalUnitBytes),
            FreeBytes = (ulong)((total - used) * MapEntry.PhysicalUnitBytes), Health = c.Failed ? "failed" : "ok", FailureReason = c.FailureReason,
        };
    }

    private static RpcException Error(StatusCode code, string message) => AdminViews.Error(code, message);

    [LoggerMessage(EventId = 310, Level = LogLevel.Information, Message = "job {Id} started: {What}")]
    private static partial void LogStarted(ILogger logger, long id, string what);

    [LoggerMessage(EventId = 311, Level = LogLevel.Information, Message = "container {Name} removed")]
    private static partial void LogRemoved(ILogger logger, string name);

    [LoggerMessage(EventId = 312, Level = LogLevel.Information, Message = "container {Name} repaired: the probe succeeded")]
    private static partial void LogRepaired(ILogger logger, string name);
}
