using System.Numerics;
using System.Reflection;
using System.Text.RegularExpressions;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Tessera.Controller.Store;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Admin;

/// <summary>
/// The admin API for the CLI. Every request is validated completely before anything changes, so invalid input
/// leaves the store as it was. Errors are RpcExceptions with a one-line message.
/// </summary>
public sealed partial class AdminService : Tessera.Core.Protocol.Admin.AdminBase
{
    public const int DefaultSegmentSizeBytes = 1 << 20;
    public const int MinSegmentSizeBytes = MapEntry.PhysicalUnitBytes;
    public const int MaxSegmentSizeBytes = 64 << 20;
    public const long MaxDiskSizeBytes = 1L << 60;

    [GeneratedRegex("^[A-Za-z0-9._-]{1,64}$")]
    private static partial Regex NameRegex();

    private readonly ControllerCore _core;
    private readonly ILogger _log;

    public AdminService(ControllerCore core, ILoggerFactory loggerFactory)
    {
        _core = core;
        _log = loggerFactory.CreateLogger<AdminService>();
    }

    private ControllerStore Store => _core.Store;

    // ---------------------------------------------------------------- containers

    public override Task<ContainerView> AddContainer(AddContainerRequest request, ServerCallContext context)
    {
        CheckName(request.Name, "container");
        if (!ContainerUri.TryValidate(request.Uri, out var uriError)) throw Error(StatusCode.InvalidArgument, uriError);
        if (request.SizeBytes > (ulong)long.MaxValue) throw Error(StatusCode.InvalidArgument, "size is too large");
        var existing = Store.ListContainers();
        if (existing.Any(c => c.Name == request.Name)) throw Error(StatusCode.AlreadyExists, $"container '{request.Name}' already exists");
        if (existing.Any(c => c.Uri == request.Uri)) throw Error(StatusCode.AlreadyExists, $"container URI {request.Uri} is already in the pool");
        if (existing.Count >= MapEntry.MaxContainerId) throw Error(StatusCode.FailedPrecondition, "the pool already has the most containers possible");

        bool created = false;
        if (request.SizeBytes > 0 && ContainerUri.TryParseFile(request.Uri, out var path, out _) && !File.Exists(path))
        {
            if (request.SizeBytes < MapEntry.PhysicalUnitBytes) throw Error(StatusCode.InvalidArgument, $"a container must hold at least {MapEntry.PhysicalUnitBytes} bytes");
            try
            {
                FileContainer.CreateSparse(request.Uri, (long)request.SizeBytes);
                created = true;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw Error(StatusCode.FailedPrecondition, $"cannot create {path}: {e.Message}");
            }
        }

        long sizeBytes;
        try
        {
            sizeBytes = ContainerRegistry.Shared.Open(request.Uri).SizeBytes;
        }
        catch (Exception e) when (e is not OperationCanceledException) // any opener (file, NBD client) may fail its own way
        {
            throw Error(StatusCode.FailedPrecondition, $"cannot open {request.Uri}: {e.Message.ReplaceLineEndings(" ")}");
        }
        if (sizeBytes < MapEntry.PhysicalUnitBytes)
        {
            ContainerRegistry.Shared.Close(request.Uri);
            if (created && ContainerUri.TryParseFile(request.Uri, out var p, out _)) File.Delete(p);
            throw Error(StatusCode.InvalidArgument, $"{request.Uri} holds {sizeBytes} bytes; a container needs at least {MapEntry.PhysicalUnitBytes}");
        }

        ContainerRow row;
        lock (_core.ContainerLock)
        {
            try
            {
                // Only a file this call created sparse is known to read as zeros everywhere; anything else has an unknown past.
                row = Store.AddContainer(request.Name, request.Uri, sizeBytes, created ? 0 : -1) ?? throw Error(StatusCode.FailedPrecondition, "no container id left");
            }
            catch (Microsoft.Data.Sqlite.SqliteException e) when (e.SqliteErrorCode == 19) // constraint: a concurrent add won
            {
                throw Error(StatusCode.AlreadyExists, $"container '{request.Name}' or URI {request.Uri} already exists");
            }
            _core.Pool.AddContainer(row.Id, sizeBytes / MapEntry.PhysicalUnitBytes, highWaterUnit: Store.GetHighWater(row.Id));
            foreach (var session in _core.Sessions.Open())
                _ = session.SendCommand(new Command { UpsertContainer = new UpsertContainer { Container = Info(row) } });
        }
        LogContainerAdded(_log, row.Name, row.Uri, sizeBytes);
        return Task.FromResult(View(row));
    }

    public override Task<ListContainersReply> ListContainers(ListContainersRequest request, ServerCallContext context)
    {
        var reply = new ListContainersReply();
        foreach (var c in Store.ListContainers()) reply.Containers.Add(View(c));
        return Task.FromResult(reply);
    }

    private ContainerView View(ContainerRow c)
    {
        var (total, used) = _core.Pool.Usage(c.Id);
        return new ContainerView
        {
            Id = c.Id,
            Name = c.Name,
            Uri = c.Uri,
            SizeBytes = (ulong)c.SizeBytes,
            SegmentSizeBytes = MapEntry.PhysicalUnitBytes,
            TotalSegments = (ulong)total,
            UsedSegments = (ulong)used,
            UsedBytes = (ulong)(used * MapEntry.PhysicalUnitBytes),
            FreeBytes = (ulong)((total - used) * MapEntry.PhysicalUnitBytes),
            Health = c.Failed ? "failed" : "ok",
            FailureReason = c.FailureReason,
        };
    }

    private static ContainerInfo Info(ContainerRow c) => new() { Id = c.Id, Name = c.Name, Uri = c.Uri, Failed = c.Failed };

    // ---------------------------------------------------------------- disks

    public override Task<DiskView> CreateDisk(CreateDiskRequest request, ServerCallContext context)
    {
        CheckName(request.Name, "disk");
        if (request.SizeBytes == 0 || request.SizeBytes % 512 != 0)
            throw Error(StatusCode.InvalidArgument, "disk size must be a positive multiple of 512 bytes");
        if (request.SizeBytes > MaxDiskSizeBytes) throw Error(StatusCode.InvalidArgument, $"disk size must be at most {MaxDiskSizeBytes} bytes");
        uint segmentSize = request.SegmentSizeBytes == 0 ? DefaultSegmentSizeBytes : request.SegmentSizeBytes;
        if (!BitOperations.IsPow2(segmentSize) || segmentSize < MinSegmentSizeBytes || segmentSize > MaxSegmentSizeBytes)
            throw Error(StatusCode.InvalidArgument, $"segment size must be a power of two from {MinSegmentSizeBytes} to {MaxSegmentSizeBytes} bytes");
        var disk = Store.CreateDisk(request.Name, (long)request.SizeBytes, (int)segmentSize, _core.Time.GetUtcNow().ToString("O"))
            ?? throw Error(StatusCode.AlreadyExists, $"disk '{request.Name}' already exists");
        LogDiskCreated(_log, disk.Name, disk.SizeBytes, disk.SegmentSizeBytes);
        return Task.FromResult(View(disk));
    }

    public override Task<ListDisksReply> ListDisks(ListDisksRequest request, ServerCallContext context)
    {
        var reply = new ListDisksReply();
        foreach (var d in Store.ListDisks())
            if (!d.Name.Contains(ControllerStore.SnapshotSeparator)) reply.Disks.Add(View(d)); // snapshots: tessera snapshot list
        return Task.FromResult(reply);
    }

    public override Task<DiskView> GetDisk(DiskRef request, ServerCallContext context) => Task.FromResult(View(FindDisk(request.Name)));

    public override async Task<Empty> DeleteDisk(DiskRef request, ServerCallContext context)
    {
        var disk = FindDisk(request.Name);
        if (!await _core.Coordinator.DeleteDiskAsync(disk).ConfigureAwait(false))
            throw Error(StatusCode.FailedPrecondition, $"disk '{disk.Name}' is presented; unpresent it first");
        LogDiskDeleted(_log, disk.Name);
        return new Empty();
    }

    private DiskView View(DiskRow d) => AdminViews.DiskView(Store, d);

    private DiskRow FindDisk(string name) => AdminViews.FindDisk(Store, name);

    // ---------------------------------------------------------------- presentations

    public override async Task<Empty> PresentDisk(PresentRequest request, ServerCallContext context)
    {
        var disk = FindDisk(request.Disk);
        CheckHost(request.Host);
        if (Store.GetSnapshot(disk.Id) is { } snapshot && (!request.ReadOnly || !snapshot.Ready))
            throw Error(StatusCode.FailedPrecondition, $"'{disk.Name}' is a snapshot: present it with --read-only");
        if (!Store.AddPresentation(disk.Id, request.Host, request.ReadOnly))
            throw Error(StatusCode.AlreadyExists, $"disk '{disk.Name}' is already presented to {request.Host}");
        if (_core.Sessions.Get(request.Host) is { } session)
            await _core.Coordinator.PresentAsync(session, disk).ConfigureAwait(false);
        LogPresented(_log, disk.Name, request.Host, request.ReadOnly);
        return new Empty();
    }

    public override async Task<Empty> UnpresentDisk(UnpresentRequest request, ServerCallContext context)
    {
        var disk = FindDisk(request.Disk);
        CheckHost(request.Host);
        if (!await _core.Coordinator.UnpresentAsync(disk, request.Host).ConfigureAwait(false))
            throw Error(StatusCode.NotFound, $"disk '{disk.Name}' is not presented to {request.Host}");
        LogUnpresented(_log, disk.Name, request.Host);
        return new Empty();
    }

    // ---------------------------------------------------------------- map, hosts, status

    public override Task<DiskMapReply> GetDiskMap(DiskRef request, ServerCallContext context)
    {
        var disk = FindDisk(request.Name);
        var names = Store.ListContainers().ToDictionary(c => c.Id, c => c.Name);
        var reply = new DiskMapReply { Disk = View(disk) };
        MapRange? run = null;
        long next = 0;
        void Emit(MapRange r)
        {
            if (run is not null && run.State == r.State && run.ContainerId == r.ContainerId && run.FirstSegment + run.Count == r.FirstSegment
                && (r.State is "zero" or "error" || run.FirstPhysicalSegment + run.Count * (ulong)disk.UnitsPerSegment == r.FirstPhysicalSegment))
            {
                run.Count += r.Count;
                return;
            }
            if (run is not null) reply.Ranges.Add(run);
            run = r;
        }
        foreach (var row in Store.GetSegments(disk.Id, 0, disk.SegmentCount))
        {
            if (row.Segment > next) Emit(new MapRange { FirstSegment = (ulong)next, Count = (ulong)(row.Segment - next), State = "zero" });
            var e = row.Entry;
            var r = new MapRange { FirstSegment = (ulong)row.Segment, Count = 1, State = StateName(e.States) };
            if (e.ContainerId != 0)
            {
                r.ContainerId = e.ContainerId;
                r.Container = names.GetValueOrDefault(e.ContainerId, "?");
                r.FirstPhysicalSegment = (ulong)e.PhysicalIndex;
            }
            Emit(r);
            next = row.Segment + 1;
        }
        if (next < disk.SegmentCount) Emit(new MapRange { FirstSegment = (ulong)next, Count = (ulong)(disk.SegmentCount - next), State = "zero" });
        if (run is not null) reply.Ranges.Add(run);
        return Task.FromResult(reply);
    }

    private static string StateName(EntryStates s) =>
        (s & EntryStates.Invalid) != 0 ? "invalid"
        : (s & EntryStates.Error) != 0 ? "error"
        : (s & EntryStates.Zero) != 0 ? "zero"
        : (s & EntryStates.NoWrite) != 0 ? "nowrite"
        : "mapped";

    public override Task<ListHostsReply> ListHosts(ListHostsRequest request, ServerCallContext context)
    {
        var now = _core.Time.GetUtcNow();
        var hosts = new SortedDictionary<string, HostView>(StringComparer.Ordinal);
        HostView Host(string name) => hosts.TryGetValue(name, out var h) ? h : hosts[name] = new HostView { Host = name };
        foreach (var a in Store.ListAgents())
        {
            var h = Host(a.Host);
            h.NbdAddress = a.NbdAddress;
            h.Incarnation = a.Incarnation;
            h.LastHeartbeatAt = a.LastSeen;
        }
        foreach (var s in _core.Sessions.Open())
        {
            var h = Host(s.Host);
            h.Connected = true;
            h.NbdAddress = s.NbdAddress;
            h.Incarnation = s.Incarnation;
            h.LastHeartbeatAt = s.LastHeartbeatAt.ToString("O");
            h.LeaseExpiresAt = (now + s.LeaseRemaining).ToString("O");
        }
        var diskNames = Store.ListDisks().ToDictionary(d => d.Id, d => d.Name);
        foreach (var p in Store.ListPresentations())
            Host(p.Host).Disks.Add(diskNames.GetValueOrDefault(p.DiskId, p.DiskId.ToString()));
        var reply = new ListHostsReply();
        reply.Hosts.Add(hosts.Values);
        return Task.FromResult(reply);
    }

    public override Task<StatusReply> GetStatus(StatusRequest request, ServerCallContext context)
    {
        var containers = Store.ListContainers();
        long size = 0, used = 0;
        foreach (var c in containers)
        {
            var (t, u) = _core.Pool.Usage(c.Id);
            size += t * MapEntry.PhysicalUnitBytes;
            used += u * MapEntry.PhysicalUnitBytes;
        }
        return Task.FromResult(new StatusReply
        {
            ControllerEpoch = Store.Epoch,
            StartedAt = _core.StartedAt.ToString("O"),
            Containers = (uint)containers.Count,
            Disks = (uint)Store.ListDisks().Count,
            HostsConnected = (uint)_core.Sessions.Open().Count,
            PoolSizeBytes = (ulong)size,
            PoolUsedBytes = (ulong)used,
            DataDir = Path.GetFullPath(_core.Options.DataDirectory),
            Version = typeof(AdminService).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "",
        });
    }

    // ---------------------------------------------------------------- helpers

    private static void CheckName(string name, string what)
    {
        if (!NameRegex().IsMatch(name))
            throw Error(StatusCode.InvalidArgument, $"{what} name '{name}' is invalid: use 1..64 of A-Z a-z 0-9 . _ -");
    }

    private static void CheckHost(string host)
    {
        if (host.Length is 0 or > Agents.AgentChannelService.MaxHostNameLength)
            throw Error(StatusCode.InvalidArgument, $"host name must be 1..{Agents.AgentChannelService.MaxHostNameLength} characters");
    }

    private static RpcException Error(StatusCode code, string message) => AdminViews.Error(code, message);

    [LoggerMessage(EventId = 300, Level = LogLevel.Information, Message = "container {Name} added: {Uri}, {SizeBytes} bytes")]
    private static partial void LogContainerAdded(ILogger logger, string name, string uri, long sizeBytes);

    [LoggerMessage(EventId = 301, Level = LogLevel.Information, Message = "disk {Name} created: {SizeBytes} bytes, {SegmentSizeBytes}-byte segments")]
    private static partial void LogDiskCreated(ILogger logger, string name, long sizeBytes, int segmentSizeBytes);

    [LoggerMessage(EventId = 302, Level = LogLevel.Information, Message = "disk {Name} deleted")]
    private static partial void LogDiskDeleted(ILogger logger, string name);

    [LoggerMessage(EventId = 303, Level = LogLevel.Information, Message = "disk {Name} presented to {Host} (read-only: {ReadOnly})")]
    private static partial void LogPresented(ILogger logger, string name, string host, bool readOnly);

    [LoggerMessage(EventId = 304, Level = LogLevel.Information, Message = "disk {Name} unpresented from {Host}")]
    private static partial void LogUnpresented(ILogger logger, string name, string host);
}
