using System.Diagnostics;
using System.Text.RegularExpressions;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Tessera.Controller.Store;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Admin;

/// <summary>
/// The snapshots admin API (snapshots.proto): snapshots, clones, resize, sharing. Validates requests completely before
/// anything changes; the ordered work is in <see cref="Mapping.DiskCoordinator"/>. Errors are one-line RpcExceptions.
/// </summary>
public sealed partial class SnapshotService : Tessera.Core.Protocol.Snapshots.SnapshotsBase
{
    [GeneratedRegex("^[A-Za-z0-9._-]{1,64}$")]
    private static partial Regex NameRegex();

    private readonly ControllerCore _core;

    public SnapshotService(ControllerCore core, ILoggerFactory loggerFactory)
    {
        _core = core;
        _ = loggerFactory;
    }

    private ControllerStore Store => _core.Store;

    public override async Task<SnapshotView> CreateSnapshot(CreateSnapshotRequest request, ServerCallContext context)
    {
        var disk = FindDisk(request.Disk);
        CheckName(request.Name, "snapshot");
        var watch = Stopwatch.StartNew();
        var snapshotDisk = await _core.Coordinator.CreateSnapshotAsync(disk.Id, request.Name).ConfigureAwait(false);
        long micros = (long)watch.Elapsed.TotalMicroseconds;
        var snapshot = Store.GetSnapshot(snapshotDisk.Id) ?? throw Error(StatusCode.Aborted, $"snapshot '{snapshotDisk.Name}' was deleted while being created");
        var view = View(snapshot, disk.Name);
        view.CreationMicros = (ulong)micros;
        return view;
    }

    public override Task<ListSnapshotsReply> ListSnapshots(ListSnapshotsRequest request, ServerCallContext context)
    {
        ulong? parent = string.IsNullOrEmpty(request.Disk) ? null : FindDisk(request.Disk).Id;
        var names = Store.ListDisks().ToDictionary(d => d.Id, d => d.Name);
        var reply = new ListSnapshotsReply();
        foreach (var s in Store.ListSnapshots(parent))
            if (s.Ready) reply.Snapshots.Add(View(s, names.GetValueOrDefault(s.ParentDiskId, "?")));
        return Task.FromResult(reply);
    }

    public override async Task<Empty> DeleteSnapshot(SnapshotRef request, ServerCallContext context)
    {
        var snapshot = FindSnapshot(request.Disk, request.Name);
        await _core.Coordinator.DeleteSnapshotAsync(snapshot).ConfigureAwait(false);
        return new Empty();
    }

    public override async Task<DiskView> CloneDisk(CloneDiskRequest request, ServerCallContext context)
    {
        int at = request.Source.IndexOf(ControllerStore.SnapshotSeparator, StringComparison.Ordinal);
        if (at <= 0) throw Error(StatusCode.InvalidArgument, $"clone source '{request.Source}' must name a snapshot as DISK@SNAPSHOT");
        var snapshot = FindSnapshot(request.Source[..at], request.Source[(at + 1)..]);
        CheckName(request.Name, "disk");
        var disk = await _core.Coordinator.CloneAsync(snapshot, request.Name).ConfigureAwait(false);
        return DiskView(disk);
    }

    public override async Task<DiskView> ResizeDisk(ResizeDiskRequest request, ServerCallContext context)
    {
        var disk = FindDisk(request.Name);
        if (request.SizeBytes == 0 || request.SizeBytes % 512 != 0)
            throw Error(StatusCode.InvalidArgument, "disk size must be a positive multiple of 512 bytes");
        if (request.SizeBytes > AdminService.MaxDiskSizeBytes) throw Error(StatusCode.InvalidArgument, $"disk size must be at most {AdminService.MaxDiskSizeBytes} bytes");
        var resized = await _core.Coordinator.ResizeAsync(disk.Id, (long)request.SizeBytes, request.Force).ConfigureAwait(false);
        return DiskView(resized);
    }

    public override Task<DiskSharingView> GetDiskSharing(DiskRef request, ServerCallContext context)
    {
        var disk = FindDisk(request.Name);
        var (mapped, shared) = Store.Sharing(disk.Id);
        var view = new DiskSharingView
        {
            Name = disk.Name,
            AllocatedBytes = (ulong)(mapped * disk.SegmentSizeBytes),
            SharedBytes = (ulong)(shared.Count * (long)disk.SegmentSizeBytes),
            UniqueBytes = (ulong)((mapped - shared.Count) * disk.SegmentSizeBytes),
        };
        foreach (var s in Store.ListSnapshots(disk.Id))
            if (s.Ready) view.Snapshots.Add(s.Disk.Name);
        if (Store.GetSnapshot(disk.Id) is { } self) view.SnapshotOf = Store.GetDisk(self.ParentDiskId)?.Name ?? "";
        SharedRange? run = null;
        foreach (long segment in shared)
        {
            if (run is not null && run.FirstSegment + run.Count == (ulong)segment)
            {
                run.Count++;
                continue;
            }
            run = new SharedRange { FirstSegment = (ulong)segment, Count = 1 };
            view.SharedRanges.Add(run);
        }
        return Task.FromResult(view);
    }

    // ---------------------------------------------------------------- helpers

    private SnapshotView View(SnapshotRow s, string parentName)
    {
        var (mapped, shared) = Store.Sharing(s.Disk.Id);
        var view = new SnapshotView
        {
            Disk = parentName,
            Name = s.Name,
            Ref = s.Disk.Name,
            SizeBytes = (ulong)s.Disk.SizeBytes,
            SegmentSizeBytes = (uint)s.Disk.SegmentSizeBytes,
            CreatedAt = s.Disk.CreatedAt,
            AllocatedBytes = (ulong)(mapped * s.Disk.SegmentSizeBytes),
            SharedBytes = (ulong)(shared.Count * (long)s.Disk.SegmentSizeBytes),
            UniqueBytes = (ulong)((mapped - shared.Count) * s.Disk.SegmentSizeBytes),
        };
        foreach (var p in Store.ListPresentations(s.Disk.Id)) view.Presentations.Add(new PresentationView { Host = p.Host, ReadOnly = p.ReadOnly });
        return view;
    }

    private DiskView DiskView(DiskRow d) => AdminViews.DiskView(Store, d);

    private DiskRow FindDisk(string name) => AdminViews.FindDisk(Store, name);

    private SnapshotRow FindSnapshot(string disk, string name)
    {
        var parent = FindDisk(disk);
        if (string.IsNullOrEmpty(name)) throw Error(StatusCode.InvalidArgument, "a snapshot name is required");
        return Store.ListSnapshots(parent.Id).FirstOrDefault(s => s.Name == name && s.Ready)
            ?? throw Error(StatusCode.NotFound, $"disk '{parent.Name}' has no snapshot '{name}'");
    }

    private static void CheckName(string name, string what)
    {
        if (!NameRegex().IsMatch(name))
            throw Error(StatusCode.InvalidArgument, $"{what} name '{name}' is invalid: use 1..64 of A-Z a-z 0-9 . _ -");
    }

    private static RpcException Error(StatusCode code, string message) => AdminViews.Error(code, message);
}
