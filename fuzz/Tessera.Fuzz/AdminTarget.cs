using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Controller;
using Tessera.Controller.Admin;
using Tessera.Core.Containers;
using Tessera.Core.Protocol;

namespace Tessera.Fuzz;

/// <summary>
/// Target "admin": the controller's admin, operations and snapshot services called in-process with requests decoded
/// from the fuzz input, on a store that starts every input as the same small cluster (two file containers, two
/// disks, one snapshot, one presentation). Input: a sequence of calls, each [method byte][length byte][protobuf
/// bytes]; bytes that are not a valid message of the method's type are skipped, as gRPC would reject them.
/// Oracle: every call returns or throws an <see cref="RpcException"/> whose status is one of the documented codes;
/// afterwards the store re-opens, and the free-space pool rebuilt from it (which refuses a segment mapped twice or
/// on an unknown container) equals the pool the services kept in memory.
/// Sandbox: file:// URIs are moved into the work directory and nbd:// URIs point at a closed loopback port, so the
/// fuzzer can neither write files elsewhere nor reach the network.
/// </summary>
public sealed class AdminTarget : IDisposable
{
    public const int MaxCallsPerInput = 16;

    private static readonly StatusCode[] DocumentedCodes =
        [StatusCode.InvalidArgument, StatusCode.NotFound, StatusCode.AlreadyExists, StatusCode.FailedPrecondition];

    private readonly string _root;
    private readonly string _template;
    private readonly string _work;

    public AdminTarget(string? root = null)
    {
        // tmpfs when there is one: the store's fsyncs cost nothing there, and every input copies it.
        string baseDir = root ?? (Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath());
        _root = Path.Combine(baseDir, $"tessera-fuzz-admin-{Environment.ProcessId}-{Guid.NewGuid():N}");
        _template = Path.Combine(_root, "template");
        _work = Path.Combine(_root, "work");
    }

    private bool _templateBuilt;

    /// <summary>Names of the callable methods; the method byte of a call is an index into this list (modulo its length).</summary>
    public static readonly string[] Methods =
    [
        "AddContainer", "ListContainers", "CreateDisk", "ListDisks", "GetDisk", "DeleteDisk", "PresentDisk", "UnpresentDisk",
        "GetDiskMap", "ListHosts", "GetStatus", "MigrateDisk", "EvacuateContainer", "GetJob", "ListJobs", "RemoveContainer",
        "FailContainer", "RepairContainer", "GetDiskLocations", "CreateSnapshot", "ListSnapshots", "DeleteSnapshot", "CloneDisk",
        "ResizeDisk", "GetDiskSharing",
    ];

    private void BuildTemplate()
    {
        Directory.CreateDirectory(_template);
        Directory.CreateDirectory(_work);
        using var core = new ControllerCore(Options(_template), NullLoggerFactory.Instance);
        var (admin, _, snapshots) = Services(core);
        var ctx = new FuzzCallContext();
        admin.AddContainer(new AddContainerRequest { Name = "c1", Uri = "file://" + Path.Combine(_work, "c1.img"), SizeBytes = 64 << 20 }, ctx).GetAwaiter().GetResult();
        admin.AddContainer(new AddContainerRequest { Name = "c2", Uri = "file://" + Path.Combine(_work, "c2.img"), SizeBytes = 32 << 20 }, ctx).GetAwaiter().GetResult();
        admin.CreateDisk(new CreateDiskRequest { Name = "d1", SizeBytes = 8 << 20 }, ctx).GetAwaiter().GetResult();
        admin.CreateDisk(new CreateDiskRequest { Name = "d2", SizeBytes = 4 << 20, SegmentSizeBytes = 1 << 16 }, ctx).GetAwaiter().GetResult();
        admin.PresentDisk(new PresentRequest { Disk = "d1", Host = "h1" }, ctx).GetAwaiter().GetResult();
        snapshots.CreateSnapshot(new CreateSnapshotRequest { Disk = "d2", Name = "s1" }, ctx).GetAwaiter().GetResult();
        CloseContainers(core);
        // The container files were created in the work directory; keep them with the template.
        foreach (var f in Directory.GetFiles(_work)) File.Move(f, Path.Combine(_template, Path.GetFileName(f)));
    }

    /// <summary>The shortest lease: calls that must wait out the lease of a presented disk's (absent) agent wait 100 ms.</summary>
    private static ControllerOptions Options(string dir) => new() { DataDirectory = dir, ListenAddress = "127.0.0.1:0", LeaseMs = 100, HeartbeatIntervalMs = 20 };

    private static (AdminService, OperationsService, SnapshotService) Services(ControllerCore core) =>
        (new AdminService(core, NullLoggerFactory.Instance), new OperationsService(core, NullLoggerFactory.Instance), new SnapshotService(core, NullLoggerFactory.Instance));

    private static void CloseContainers(ControllerCore core)
    {
        foreach (var c in core.Store.ListContainers()) ContainerRegistry.Shared.Close(c.Uri);
    }

    /// <summary>Calls of the last input that succeeded (for the corpus tests).</summary>
    public int LastSucceeded { get; private set; }

    public void Run(byte[] input)
    {
        LastSucceeded = 0;
        if (!_templateBuilt)
        {
            // Built on the first input, not in the constructor: under AFL++ instrumented code may only run
            // inside SharpFuzz's loop, which sets up the coverage map first.
            BuildTemplate();
            _templateBuilt = true;
        }
        if (Directory.Exists(_work)) Directory.Delete(_work, recursive: true);
        Directory.CreateDirectory(_work);
        foreach (var f in Directory.GetFiles(_template))
        {
            string to = Path.Combine(_work, Path.GetFileName(f));
            if (f.EndsWith(".img", StringComparison.Ordinal))
            {
                // Container images hold no data in the template: a new sparse file of the same size is the same
                // container, where File.Copy would write all of it (96 MiB per input).
                using var image = new FileStream(to, FileMode.CreateNew, FileAccess.Write);
                image.SetLength(new FileInfo(f).Length);
            }
            else File.Copy(f, to);
        }

        var live = new Dictionary<ushort, (long, long)>();
        using (var core = new ControllerCore(Options(_work), NullLoggerFactory.Instance))
        {
            try
            {
                var services = Services(core);
                int calls = 0;
                for (int at = 0; at + 2 <= input.Length && calls < MaxCallsPerInput; calls++)
                {
                    int method = input[at] % Methods.Length;
                    int length = Math.Min(input[at + 1], input.Length - at - 2);
                    var message = input.AsSpan(at + 2, length).ToArray();
                    at += 2 + length;
                    Call(services, core, method, message);
                }
                // Jobs run in the background; let them finish so the check below sees a settled store.
                WaitForJobs(services.Item2);
                foreach (var c in core.Store.ListContainers()) live[c.Id] = core.Pool.Usage(c.Id);
            }
            finally
            {
                CloseContainers(core);
            }
        }
        CheckStore(live);
    }

    private void CheckStore(Dictionary<ushort, (long, long)> live)
    {
        ControllerCore reopened;
        try
        {
            reopened = new ControllerCore(Options(_work), NullLoggerFactory.Instance);
        }
        catch (Exception e)
        {
            throw new FuzzOracleException("the store no longer opens (its segment map is inconsistent)", e);
        }
        using (reopened)
        {
            try
            {
                var containers = reopened.Store.ListContainers();
                if (containers.Count != live.Count) throw new FuzzOracleException($"the pool knew {live.Count} containers, the store has {containers.Count}");
                foreach (var c in containers)
                {
                    var rebuilt = reopened.Pool.Usage(c.Id);
                    if (!live.TryGetValue(c.Id, out var kept) || kept != rebuilt)
                        throw new FuzzOracleException($"container {c.Name}: the in-memory pool had {kept} (total, used) units, the store says {rebuilt}");
                }
                foreach (var p in reopened.Store.ListPresentations())
                    if (reopened.Store.GetDisk(p.DiskId) == null) throw new FuzzOracleException($"presentation of missing disk {p.DiskId}");
            }
            finally
            {
                CloseContainers(reopened);
            }
        }
    }

    private static void WaitForJobs(OperationsService operations)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            var jobs = operations.ListJobs(new ListJobsRequest(), new FuzzCallContext()).GetAwaiter().GetResult();
            if (jobs.Jobs.All(j => j.State != "running")) return;
            if (DateTime.UtcNow > deadline) throw new FuzzOracleException("a job was still running 10 s after the calls");
            Thread.Sleep(1);
        }
    }

    private void Call((AdminService Admin, OperationsService Ops, SnapshotService Snap) s, ControllerCore core, int method, byte[] message)
    {
        var ctx = new FuzzCallContext();
        try
        {
            switch (Methods[method])
            {
                case "AddContainer":
                {
                    var r = AddContainerRequest.Parser.ParseFrom(message);
                    r.Uri = Sandbox(r.Uri);
                    if (r.SizeBytes > 256 << 20) r.SizeBytes = 256 << 20; // sparse, but keep the work directory small
                    Await(s.Admin.AddContainer(r, ctx));
                    break;
                }
                case "ListContainers": Await(s.Admin.ListContainers(ListContainersRequest.Parser.ParseFrom(message), ctx)); break;
                case "CreateDisk": Await(s.Admin.CreateDisk(CreateDiskRequest.Parser.ParseFrom(message), ctx)); break;
                case "ListDisks": Await(s.Admin.ListDisks(ListDisksRequest.Parser.ParseFrom(message), ctx)); break;
                case "GetDisk": Await(s.Admin.GetDisk(DiskRef.Parser.ParseFrom(message), ctx)); break;
                case "DeleteDisk": Await(s.Admin.DeleteDisk(DiskRef.Parser.ParseFrom(message), ctx)); break;
                case "PresentDisk": Await(s.Admin.PresentDisk(PresentRequest.Parser.ParseFrom(message), ctx)); break;
                case "UnpresentDisk": Await(s.Admin.UnpresentDisk(UnpresentRequest.Parser.ParseFrom(message), ctx)); break;
                case "GetDiskMap": Await(s.Admin.GetDiskMap(DiskRef.Parser.ParseFrom(message), ctx)); break;
                case "ListHosts": Await(s.Admin.ListHosts(ListHostsRequest.Parser.ParseFrom(message), ctx)); break;
                case "GetStatus": Await(s.Admin.GetStatus(StatusRequest.Parser.ParseFrom(message), ctx)); break;
                case "MigrateDisk": Await(s.Ops.MigrateDisk(MigrateDiskRequest.Parser.ParseFrom(message), ctx)); break;
                case "EvacuateContainer": Await(s.Ops.EvacuateContainer(EvacuateRequest.Parser.ParseFrom(message), ctx)); break;
                case "GetJob": Await(s.Ops.GetJob(JobRef.Parser.ParseFrom(message), ctx)); break;
                case "ListJobs": Await(s.Ops.ListJobs(ListJobsRequest.Parser.ParseFrom(message), ctx)); break;
                case "RemoveContainer": Await(s.Ops.RemoveContainer(ContainerRef.Parser.ParseFrom(message), ctx)); break;
                case "FailContainer": Await(s.Ops.FailContainer(FailContainerRequest.Parser.ParseFrom(message), ctx)); break;
                case "RepairContainer": Await(s.Ops.RepairContainer(ContainerRef.Parser.ParseFrom(message), ctx)); break;
                case "GetDiskLocations": Await(s.Ops.GetDiskLocations(DiskRef.Parser.ParseFrom(message), ctx)); break;
                case "CreateSnapshot": Await(s.Snap.CreateSnapshot(CreateSnapshotRequest.Parser.ParseFrom(message), ctx)); break;
                case "ListSnapshots": Await(s.Snap.ListSnapshots(ListSnapshotsRequest.Parser.ParseFrom(message), ctx)); break;
                case "DeleteSnapshot": Await(s.Snap.DeleteSnapshot(SnapshotRef.Parser.ParseFrom(message), ctx)); break;
                case "CloneDisk": Await(s.Snap.CloneDisk(CloneDiskRequest.Parser.ParseFrom(message), ctx)); break;
                case "ResizeDisk": Await(s.Snap.ResizeDisk(ResizeDiskRequest.Parser.ParseFrom(message), ctx)); break;
                case "GetDiskSharing": Await(s.Snap.GetDiskSharing(DiskRef.Parser.ParseFrom(message), ctx)); break;
                default: throw new InvalidOperationException(Methods[method]);
            }
            LastSucceeded++;
        }
        catch (InvalidProtocolBufferException) { } // gRPC would have rejected the bytes before the handler
        catch (RpcException e) when (DocumentedCodes.Contains(e.StatusCode)) { }
        catch (RpcException e)
        {
            throw new FuzzOracleException($"{Methods[method]} answered {e.StatusCode}, not a documented admin error", e);
        }
        catch (FuzzOracleException) { throw; }
        catch (Exception e)
        {
            throw new FuzzOracleException($"{Methods[method]} threw {e.GetType().Name} (gRPC would answer UNKNOWN/INTERNAL): {e.Message}", e);
        }
    }

    private static void Await(Task t)
    {
        if (!((IAsyncResult)t).AsyncWaitHandle.WaitOne(TimeSpan.FromSeconds(10))) throw new FuzzOracleException("an admin call did not finish within 10 s");
        t.GetAwaiter().GetResult(); // the handler's own exception, not an AggregateException
    }

    /// <summary>Keeps what the fuzzer asks for, but inside the work directory (file) or on a closed loopback port (nbd).</summary>
    private string Sandbox(string uri)
    {
        if (ContainerUri.TryParseFile(uri, out var path, out _))
        {
            string name = new(Path.GetFileName(path).Where(ch => char.IsAsciiLetterOrDigit(ch) || ch is '.' or '-' or '_').Take(32).ToArray());
            if (name.Length == 0 || name is "." or "..") name = "x";
            return "file://" + Path.Combine(_work, name);
        }
        if (ContainerUri.TryParseNbd(uri, out _, out _)) return "nbd://127.0.0.1:1/x";
        return uri; // invalid: the handler must refuse it
    }

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    /// <summary>What the handlers read from a gRPC call; they only need a cancellation token.</summary>
    private sealed class FuzzCallContext : ServerCallContext
    {
        protected override string MethodCore => "fuzz";
        protected override string HostCore => "localhost";
        protected override string PeerCore => "fuzz";
        protected override DateTime DeadlineCore => DateTime.MaxValue;
        protected override Metadata RequestHeadersCore { get; } = new();
        protected override CancellationToken CancellationTokenCore => CancellationToken.None;
        protected override Metadata ResponseTrailersCore { get; } = new();
        protected override Status StatusCore { get; set; }
        protected override WriteOptions? WriteOptionsCore { get; set; }
        protected override AuthContext AuthContextCore { get; } = new(null, new Dictionary<string, List<AuthProperty>>());
        protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => throw new NotSupportedException();
        protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
    }
}
