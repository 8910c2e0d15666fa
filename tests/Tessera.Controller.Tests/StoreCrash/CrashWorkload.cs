using Grpc.Core;
using Grpc.Net.Client;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Tests.StoreCrash;

/// <summary>
/// A seeded script of everything that commits to the controller's store, driven through the real admin, snapshot
/// and operations services and the agent channel (fake agents that acknowledge every command): containers,
/// disks, thin allocation by write faults, freeing by zeroing faults, snapshots, clones, deletes, resizes,
/// migrations and evacuations (each through all of its steps), presentation changes, and WAL checkpoints.
/// </summary>
public sealed class CrashWorkload : IAsyncDisposable
{
    private const long ContainerBytes = 24L << 20;
    private static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(30);

    private readonly Random _random;
    private readonly TestCluster _cluster;
    private readonly GrpcChannel _channel;
    private readonly Tessera.Core.Protocol.Admin.AdminClient _admin;
    private readonly Tessera.Core.Protocol.Snapshots.SnapshotsClient _snapshots;
    private readonly Tessera.Core.Protocol.Operations.OperationsClient _operations;
    private readonly Dictionary<string, FakeAgent> _agents = new();
    private readonly Dictionary<string, DiskView> _disks = new();            // writable disks by name
    private readonly Dictionary<string, HashSet<string>> _presented = new(); // disk -> hosts
    private readonly List<string> _snapshotRefs = new();
    private readonly Dictionary<string, string> _lineage = new();            // clone -> the disk its snapshot came from
    private readonly List<string> _containers = new();
    private ulong _nextZeroFaultId = 1UL << 40; // far from FakeAgent's own fault ids
    private int _names;

    private CrashWorkload(TestCluster cluster, int seed)
    {
        _cluster = cluster;
        _random = new Random(seed);
        _channel = GrpcChannel.ForAddress(cluster.Host.Url);
        _admin = cluster.Admin;
        _snapshots = new Tessera.Core.Protocol.Snapshots.SnapshotsClient(_channel);
        _operations = new Tessera.Core.Protocol.Operations.OperationsClient(_channel);
    }

    /// <summary>How many times each kind of operation succeeded (and "rejected" for refused calls).</summary>
    public SortedDictionary<string, int> Done { get; } = new();

    public static CrashWorkload Create(TestCluster cluster, int seed) => new(cluster, seed);

    /// <summary>Lineage of a disk name: a snapshot "D@S" belongs to D's, a clone to its snapshot's disk's.</summary>
    public string LineageOf(string name)
    {
        string disk = name.Split(Tessera.Controller.Store.ControllerStore.SnapshotSeparator)[0];
        while (_lineage.TryGetValue(disk, out var parent)) disk = parent;
        return disk;
    }

    /// <summary>Containers, two agents, two disks of different segment sizes with some data.</summary>
    public async Task SetUpAsync()
    {
        foreach (var name in new[] { "c1", "c2", "c3" })
        {
            await _cluster.AddGarbageContainerAsync(name, ContainerBytes);
            _containers.Add(name);
        }
        foreach (var host in new[] { "h1", "h2" }) _agents[host] = await _cluster.ConnectAsync(host);
        await CreateDiskAsync("d1", 8L << 20, 0, "h1", "h2");
        await CreateDiskAsync("d2", 4L << 20, 256 << 10, "h1");
        await WriteAsync("d1", 0);
        await WriteAsync("d2", 1);
    }

    public async Task RunAsync(int steps, Action checkpoint)
    {
        for (int i = 0; i < steps; i++)
        {
            int pick = _random.Next(100);
            try
            {
                if (pick < 30) await WriteRandomAsync();
                else if (pick < 38) await ZeroRandomAsync();
                else if (pick < 47) await SnapshotAsync();
                else if (pick < 53) await CloneAsync();
                else if (pick < 58) await DeleteSnapshotAsync();
                else if (pick < 62) await DeleteDiskAsync();
                else if (pick < 69) await ResizeAsync();
                else if (pick < 76) await MigrateAsync();
                else if (pick < 79) await EvacuateAsync();
                else if (pick < 86) await TogglePresentationAsync();
                else if (pick < 90) await CreateDiskAsync("n" + ++_names, (1 + _random.Next(8)) << 20, _random.Next(2) == 0 ? 0 : 128 << 10, "h1");
                else
                {
                    checkpoint();
                    Count("checkpoint");
                }
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.FailedPrecondition or StatusCode.ResourceExhausted or StatusCode.InvalidArgument or StatusCode.AlreadyExists or StatusCode.NotFound)
            {
                Count("rejected");
            }
        }
    }

    private void Count(string what) => Done[what] = Done.GetValueOrDefault(what) + 1;

    private T Pick<T>(IReadOnlyList<T> items) => items[_random.Next(items.Count)];

    private CallOptions Call => new(deadline: DateTime.UtcNow + CallTimeout);

    private async Task CreateDiskAsync(string name, long sizeBytes, int segmentSizeBytes, params string[] hosts)
    {
        var disk = await _admin.CreateDiskAsync(new CreateDiskRequest { Name = name, SizeBytes = (ulong)sizeBytes, SegmentSizeBytes = (uint)segmentSizeBytes }, Call);
        _disks[name] = disk;
        _presented[name] = new();
        Count("create disk");
        foreach (var host in hosts) await PresentAsync(name, host);
    }

    private async Task PresentAsync(string disk, string host)
    {
        await _admin.PresentDiskAsync(new PresentRequest { Disk = disk, Host = host }, Call);
        _presented[disk].Add(host);
        Count("present");
    }

    private async Task WriteRandomAsync()
    {
        var candidates = _disks.Keys.Where(d => _presented[d].Count > 0).Order().ToList();
        if (candidates.Count == 0) return;
        string disk = Pick(candidates);
        await WriteAsync(disk, _random.NextInt64((long)_disks[disk].SegmentCount));
    }

    /// <summary>A write fault: allocates a Zero segment, or copies on write a shared one.</summary>
    private async Task WriteAsync(string disk, long segment)
    {
        var agent = _agents[Pick(_presented[disk].Order().ToList())];
        var response = await agent.FaultAndWaitAsync(_disks[disk].Id, (ulong)segment, write: true);
        Count(response.Outcome == FaultOutcome.Retry ? "write fault" : "write fault failed");
    }

    /// <summary>A zeroing fault (WRITE_ZEROES/TRIM of whole segments): frees their space.</summary>
    private async Task ZeroRandomAsync()
    {
        var candidates = _disks.Keys.Where(d => _presented[d].Count > 0).Order().ToList();
        if (candidates.Count == 0) return;
        string disk = Pick(candidates);
        var view = _disks[disk];
        long first = _random.NextInt64((long)view.SegmentCount);
        long count = 1 + _random.NextInt64(Math.Min(3, (long)view.SegmentCount - first));
        var agent = _agents[Pick(_presented[disk].Order().ToList())];
        ulong id = _nextZeroFaultId++;
        await agent.SendAsync(new AgentMessage { Fault = new MapFault { FaultId = id, DiskId = view.Id, Segment = (ulong)first, Write = true, Zero = true, Count = (ulong)count, SeenEntry = 1 } });
        var reply = await agent.NextAsync(m => m.FaultResponse?.FaultId == id);
        Count(reply.FaultResponse.Outcome == FaultOutcome.Retry ? "zero fault" : "zero fault failed");
    }

    private async Task SnapshotAsync()
    {
        string disk = Pick(_disks.Keys.Order().ToList());
        var snapshot = await _snapshots.CreateSnapshotAsync(new CreateSnapshotRequest { Disk = disk, Name = "s" + ++_names }, Call);
        _snapshotRefs.Add(snapshot.Ref);
        Count("snapshot");
    }

    private async Task CloneAsync()
    {
        if (_snapshotRefs.Count == 0) return;
        string source = Pick(_snapshotRefs);
        string name = "k" + ++_names;
        var disk = await _snapshots.CloneDiskAsync(new CloneDiskRequest { Source = source, Name = name }, Call);
        _lineage[name] = source.Split('@')[0];
        _disks[name] = disk;
        _presented[name] = new();
        Count("clone");
        await PresentAsync(name, "h1");
    }

    private async Task DeleteSnapshotAsync()
    {
        if (_snapshotRefs.Count == 0) return;
        string reference = Pick(_snapshotRefs);
        var parts = reference.Split('@');
        await _snapshots.DeleteSnapshotAsync(new SnapshotRef { Disk = parts[0], Name = parts[1] }, Call);
        _snapshotRefs.Remove(reference);
        Count("delete snapshot");
    }

    private async Task DeleteDiskAsync()
    {
        if (_disks.Count <= 2) return;
        string disk = Pick(_disks.Keys.Order().ToList());
        foreach (var host in _presented[disk].Order().ToList())
        {
            await _admin.UnpresentDiskAsync(new UnpresentRequest { Disk = disk, Host = host }, Call);
            _presented[disk].Remove(host);
            Count("unpresent");
        }
        await _admin.DeleteDiskAsync(new DiskRef { Name = disk }, Call);
        _disks.Remove(disk);
        _snapshotRefs.RemoveAll(r => r.Split('@')[0] == disk); // deleting a disk takes its snapshots, or is refused
        Count("delete disk");
    }

    private async Task ResizeAsync()
    {
        string disk = Pick(_disks.Keys.Order().ToList());
        var view = _disks[disk];
        long segments = Math.Max(1, (long)view.SegmentCount + _random.Next(-3, 4));
        var resized = await _snapshots.ResizeDiskAsync(new ResizeDiskRequest { Name = disk, SizeBytes = (ulong)(segments * view.SegmentSizeBytes), Force = true }, Call);
        _disks[disk] = resized;
        Count(segments < (long)view.SegmentCount ? "shrink" : "grow");
    }

    private async Task MigrateAsync()
    {
        string disk = Pick(_disks.Keys.Order().ToList());
        var job = await _operations.MigrateDiskAsync(new MigrateDiskRequest { Disk = disk, To = Pick(_containers) }, Call);
        await WaitJobAsync(job, "migrate");
    }

    private async Task EvacuateAsync()
    {
        var job = await _operations.EvacuateContainerAsync(new EvacuateRequest { Container = Pick(_containers) }, Call);
        await WaitJobAsync(job, "evacuate");
    }

    private async Task WaitJobAsync(JobView job, string what)
    {
        using var watch = _operations.WatchJob(new JobRef { Id = job.Id }, Call);
        var last = job;
        while (last.State == "running" && await watch.ResponseStream.MoveNext(CancellationToken.None)) last = watch.ResponseStream.Current;
        if (last.State == "running") last = await _operations.GetJobAsync(new JobRef { Id = job.Id }, Call);
        Count(last.State == "done" ? what : what + " " + last.State);
    }

    private async Task TogglePresentationAsync()
    {
        string disk = Pick(_disks.Keys.Order().ToList());
        if (_presented[disk].Contains("h2"))
        {
            await _admin.UnpresentDiskAsync(new UnpresentRequest { Disk = disk, Host = "h2" }, Call);
            _presented[disk].Remove("h2");
            Count("unpresent");
        }
        else await PresentAsync(disk, "h2");
    }

    public ValueTask DisposeAsync()
    {
        _channel.Dispose();
        return ValueTask.CompletedTask;
    }
}
