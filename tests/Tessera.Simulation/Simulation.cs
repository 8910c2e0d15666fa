using System.Diagnostics.Metrics;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging;
using Tessera.Agent;
using Tessera.Controller;
using Tessera.Controller.Admin;
using Tessera.Controller.Agents;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Simulation;

/// <param name="Classic">Without the events added later (Simulation.Operations.cs): a seed then replays the run it made before them.</param>
public sealed record SimOptions(long Seed, int Steps = 3000, bool Trace = false, string? PlantedBug = null, bool Classic = false);

public sealed class SimResult
{
    public long Seed;
    public ulong TraceHash;
    public long ClientOps;
    public long SimulatedMs;
    public int Agents, Containers, Disks;
    public SortedDictionary<string, long> Faults = new(StringComparer.Ordinal);
    public SortedDictionary<string, long> Probes = new(StringComparer.Ordinal);
    public SortedDictionary<string, long> Outcomes = new(StringComparer.Ordinal);
    public List<string> Violations = new();
}

/// <summary>
/// One seeded run: a whole cluster (real ControllerCore, AgentChannelService, AdminService, DiskCoordinator on
/// SQLite; real AgentCore and DiskVolume) over simulated time, channel and containers, checked against
/// <see cref="DiskModel"/>. Every choice comes from one <see cref="Random"/> seeded with the run's seed, and
/// product code runs one step at a time on a single pool worker (<see cref="PoolDriver"/>).
/// </summary>
public sealed partial class Simulation : IDisposable
{
    public const int LeaseMs = 10_000;
    public const int HeartbeatIntervalMs = 1_000;
    public const int SegmentBytes = 64 << 10;
    public const int KeepaliveMs = 10_000;
    public const int MaxInflightOps = 12;

    private static Simulation? s_current;
    private static readonly object s_schemeLock = new();

    private readonly SimOptions _options;
    private readonly Random _r;
    private readonly string _dir;
    private readonly Checker _checker;
    private readonly SimResult _result = new();
    private readonly List<SimAgentNode> _agents = new();
    private readonly SortedDictionary<string, SimContainer> _containers = new(StringComparer.Ordinal);
    private readonly List<DiskModel> _disks = new();
    private readonly Dictionary<string, List<string>> _presented = new(StringComparer.Ordinal); // disk -> hosts
    private readonly List<SimStream> _streams = new();
    private readonly List<PendingOp> _ops = new();
    private readonly SortedSet<(long DueNs, long Seq)> _driverQueue = new();
    private readonly Dictionary<long, Action> _driverActions = new();
    private readonly Dictionary<string, long> _partitionedUntilNs = new(StringComparer.Ordinal);
    private readonly NodeTime _storageTime;
    private readonly MeterListener _meters = new();
    private long _driverSeq;
    private int _nextStreamId;
    private bool _faultsOn = true;

    // fault rates, per seed
    private readonly double _holdRate, _containerErrorRate;
    private readonly int _wBreak, _wPartition, _wSilent, _wCrashAgent, _wCrashController, _wPowerLoss, _wAdmin;

    public Simulation(SimOptions options)
    {
        _options = options;
        _r = new Random(unchecked((int)options.Seed ^ (int)(options.Seed >> 32)));
        _dir = Path.Combine(Path.GetTempPath(), $"tessera-sim-{Environment.ProcessId}-{options.Seed}");
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
        Directory.CreateDirectory(_dir);
        _checker = new Checker(TraceLine);
        _storageTime = new NodeTime(Clock, 1.0, "storage");
        _result.Seed = options.Seed;
        _holdRate = _r.NextDouble() * 0.3;
        _containerErrorRate = _r.Next(3) == 0 ? _r.NextDouble() * 0.01 : 0;
        // Per mille of steps, roughly: rates far above real life, different mixes per seed.
        _wBreak = _r.Next(0, 12);
        _wPartition = _r.Next(0, 6);
        _wSilent = _r.Next(0, 6);
        _wCrashAgent = _r.Next(0, 6);
        _wCrashController = _r.Next(0, 4);
        _wPowerLoss = _r.Next(0, 3);
        _wAdmin = _r.Next(0, 8);
        // Triage knob: TESSERA_SIM_DISABLE=power_loss,agent_crash,... turns fault kinds off (the draws above still
        // happen, so the rest of the run keeps its shape).
        var disabled = (Environment.GetEnvironmentVariable("TESSERA_SIM_DISABLE") ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (disabled.Contains("break")) _wBreak = 0;
        if (disabled.Contains("partition")) _wPartition = 0;
        if (disabled.Contains("silent")) _wSilent = 0;
        if (disabled.Contains("agent_crash")) _wCrashAgent = 0;
        if (disabled.Contains("controller_crash")) _wCrashController = 0;
        if (disabled.Contains("power_loss")) _wPowerLoss = 0;
        if (disabled.Contains("hold")) _holdRate = 0;
        if (disabled.Contains("errors")) _containerErrorRate = 0;
        if (disabled.Contains("admin")) _wAdmin = 0;
        InitExtended(disabled);
        lock (s_schemeLock)
        {
            s_current = this;
            ContainerRegistry.RegisterScheme("sim", uri => s_current!.OpenContainer(uri, s_current.ControllerOwner));
        }
        _meters.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name.StartsWith("Tessera", StringComparison.Ordinal)) listener.EnableMeasurementEvents(instrument);
        };
        _meters.SetMeasurementEventCallback<long>((instrument, value, _, _) =>
        {
            Probe(instrument.Name, value);
            if (Extended) ProbeExtended(instrument.Name, value);
        });
        _meters.Start();
    }

    public SimClock Clock { get; } = new();

    /// <summary>A deliberate bug in the simulated hardware (tests prove the checker catches it): lose-write, ignore-flush.</summary>
    public string? PlantedBug => _options.PlantedBug;
    public ControllerCore? Controller { get; private set; }
    public int ControllerIncarnation { get; private set; }
    public SimOwner ControllerOwner { get; private set; } = new("controller#0", null, 0);
    private NodeTime _controllerTime = null!;
    private long _controllerStartedTimestamp;
    private double _controllerRate = 1.0;
    private AgentChannelService? _channel;
    private AdminService? _admin;

    private void TraceLine(string line)
    {
        _checker.Trace.Add(line);
        if (_options.Trace) Console.WriteLine($"[{Clock.NowNs / 1_000_000,9} ms] {line}");
    }

    private void Probe(string name, long amount = 1)
    {
        lock (_result.Probes) _result.Probes[name] = _result.Probes.GetValueOrDefault(name) + amount;
    }

    private void Fault(string name)
    {
        _result.Faults[name] = _result.Faults.GetValueOrDefault(name) + 1;
        TraceLine("fault " + name);
    }

    // ------------------------------------------------------------------ run

    public SimResult Run()
    {
        Setup();
        for (int step = 0; step < _options.Steps && PoolDriver.Fatal is null; step++) Step();
        Liveness();
        FinalChecks();
        if (PoolDriver.Fatal is { } fatal) _checker.Violation("crash", "product code threw on the pool: " + fatal);
        _result.Violations.AddRange(_checker.Violations);
        _result.TraceHash = _checker.Trace.Value;
        _result.SimulatedMs = Clock.NowNs / 1_000_000;
        foreach (var a in _agents)
            if (a.Core is { } core)
            {
                Probe("agent.faults_sent", core.Counters.FaultsSent);
                Probe("agent.faults_coalesced", core.Counters.FaultsCoalesced);
                Probe("agent.zero_faults_sent", core.Counters.ZeroFaultsSent);
                Probe("agent.ahead_requests_sent", Interlocked.Read(ref core.Counters.AheadRequestsSent));
                Probe("agent.answers_held_while_lapsed", a.EarlierAnswersHeldWhileLapsed + core.Counters.AnswersHeldWhileLapsed);
            }
        return _result;
    }

    private void Setup()
    {
        int agents = _r.Next(4) == 0 ? _r.Next(1, 9) : _r.Next(1, 4);
        int containers = _r.Next(1, 7);
        int disks = _r.Next(1, 4);
        _result.Agents = agents; _result.Containers = containers; _result.Disks = disks;
        bool skew = _r.Next(2) == 0;
        _controllerRate = skew ? 0.98 + _r.NextDouble() * 0.04 : 1.0;
        for (int i = 0; i < agents; i++)
            _agents.Add(new SimAgentNode(this, i, $"h{i}", skew ? 0.98 + _r.NextDouble() * 0.04 : 1.0));
        TraceLine($"topology: {agents} agents, {containers} containers, {disks} disks, skew {skew}, hold {_holdRate:F3}, container errors {_containerErrorRate:F4}");

        PoolDriver.Run(StartController);
        for (int c = 0; c < containers; c++)
        {
            var container = new SimContainer(this, $"c{c}", (long)_r.Next(32, 129) * SegmentBytes);
            _containers[container.Name] = container;
            var name = container.Name;
            var uri = container.Uri;
            // A simulated container starts all zeros, like a file Tessera created sparse: about half of them are added as
            // such (high-water mark 0), so thin allocation skips zeroing there and sequential allocate-ahead maps ahead
            // there; the rest have an unknown past, as the admin API assumes for anything it did not create. Decided by a
            // hash of seed and index rather than _r, so every other random choice of a seed stays what it was.
            bool fresh = (unchecked((ulong)_options.Seed * 0x9E3779B97F4A7C15UL + (ulong)c) >> 40 & 1) == 0;
            if (fresh)
                PoolDriver.Run(() =>
                {
                    var row = Controller!.Store.AddContainer(name, uri, container.SizeBytes, highWaterUnit: 0)!;
                    Controller.Pool.AddContainer(row.Id, container.SizeBytes / MapEntry.PhysicalUnitBytes, highWaterUnit: 0);
                });
            else
                PoolDriver.Run(() => _admin!.AddContainer(new AddContainerRequest { Name = name, Uri = uri }, Ctx()).GetAwaiter().GetResult());
            TraceLine($"container {name}: {(fresh ? "fresh (mark 0)" : "unknown past")}");
        }
        for (int d = 0; d < disks; d++)
        {
            long size = (long)_r.Next(4, 33) * SegmentBytes - (_r.Next(3) == 0 ? _r.Next(1, 64) * 512 : 0);
            string name = $"d{d}";
            DiskView? view = null;
            PoolDriver.Run(() => view = _admin!.CreateDisk(new CreateDiskRequest { Name = name, SizeBytes = (ulong)size, SegmentSizeBytes = SegmentBytes }, Ctx()).GetAwaiter().GetResult());
            _disks.Add(new DiskModel(_checker, view!.Id, name, size));
            var hosts = _agents.Where(_ => _r.Next(2) == 0).Select(a => a.Host).ToList();
            if (hosts.Count == 0) hosts.Add(_agents[_r.Next(agents)].Host);
            _presented[name] = hosts;
            foreach (var h in hosts)
                PoolDriver.Run(() => _ = _admin!.PresentDisk(new PresentRequest { Disk = name, Host = h }, Ctx()));
            TraceLine($"disk {name} id {view.Id} size {size} presented to {string.Join(",", hosts)}");
        }
        foreach (var a in _agents) PoolDriver.Run(a.Start);
    }

    private static SimCallContext Ctx() => new(CancellationToken.None);

    private ILoggerFactory ControllerLogs => _options.Trace && SimControllerLog.Enabled ? new SimControllerLog(Clock) : NullLoggerFactory.Instance;

    private void StartController()
    {
        ControllerIncarnation++;
        ControllerOwner = new SimOwner($"controller#{ControllerIncarnation}", null, ControllerIncarnation);
        _controllerTime = new NodeTime(Clock, _controllerRate, "controller");
        _controllerStartedTimestamp = _controllerTime.GetTimestamp();
        Controller = new ControllerCore(new ControllerOptions
        {
            DataDirectory = Path.Combine(_dir, "controller"),
            LeaseMs = LeaseMs,
            HeartbeatIntervalMs = HeartbeatIntervalMs,
            // A crash waits for nothing: a job step blocked on simulated time cannot end (the dead controller's clock no
            // longer fires), so the default 10 s wall-clock wait was spent whole at every crash during a migration.
            StopWaitForJobsMs = 0,
            TimeProvider = _controllerTime,
        }, ControllerLogs);
        _channel = new AgentChannelService(Controller, ControllerLogs);
        _admin = new AdminService(Controller, ControllerLogs);
        _snapshots = new SnapshotService(Controller, NullLoggerFactory.Instance);
        TraceLine($"controller incarnation {ControllerIncarnation} started");
        ResolveAmbiguousAdminOps();
        ProbeResumedJobs();
        ResyncPresentations();
    }

    public SimContainerHandle OpenContainer(string uri, SimOwner owner)
    {
        var name = uri["sim://".Length..];
        if (!_containers.TryGetValue(name, out var c)) throw new ArgumentException($"no simulated container {uri}");
        return c.Open(owner);
    }

    /// <summary>Opens a stream for an agent, or null when it cannot reach the controller.</summary>
    public SimStream? OpenStream(SimAgentNode agent)
    {
        if (Controller is null || _channel is null) return null;
        if (_partitionedUntilNs.TryGetValue(agent.Host, out var until) && until > Clock.NowNs) return null;
        var stream = new SimStream(++_nextStreamId, agent, ControllerIncarnation);
        _streams.Add(stream);
        TraceLine($"stream {stream.Id} opened by {agent.Owner}");
        _ = RunControllerEndAsync(_channel, stream);
        return stream;
    }

    private static async Task RunControllerEndAsync(AgentChannelService channel, SimStream stream)
    {
        string reason;
        try
        {
            await channel.Connect(stream.Reader, stream.Writer, stream.Context).ConfigureAwait(false);
            reason = "controller ended the stream";
        }
        catch (RpcException e) { reason = $"controller ended the stream: {e.StatusCode}"; }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException or InvalidOperationException) { reason = "controller end failed: " + e.GetType().Name; }
        stream.Break(reason);
    }

    // ------------------------------------------------------------------ containers

    internal ValueTask<IoStatus> ContainerOp(SimContainerHandle handle, ContainerOpKind kind, Func<IoStatus> apply)
    {
        if (handle.Container.Lost) return new(IoStatus.IoError);
        if (ControllerIoError(handle, kind)) return new(IoStatus.IoError);
        if (_faultsOn && _containerErrorRate > 0 && kind != ContainerOpKind.Flush && handle.Owner.AgentHost != null && _r.NextDouble() < _containerErrorRate)
        {
            Fault("container_io_error");
            return new(IoStatus.IoError);
        }
        if (_r.NextDouble() >= _holdRate) return new(apply());
        var done = new TaskCompletionSource<IoStatus>(TaskCreationOptions.RunContinuationsAsynchronously);
        var delay = TimeSpan.FromMilliseconds(_r.Next(1, _faultsOn && _r.Next(20) == 0 ? 1500 : 50));
        ITimer? timer = null;
        timer = _storageTime.CreateTimer(_ =>
        {
            timer!.Dispose();
            done.TrySetResult(apply());
        }, null, delay, Timeout.InfiniteTimeSpan);
        return new(done.Task);
    }

    /// <summary>
    /// Invariant 4: a write from an agent the controller already treats as fenced (no open session, no closed
    /// session whose lease bound is still running, and past the first lease after a controller start) must never
    /// reach a container. A dead incarnation's writes are dropped here: the process is gone.
    /// </summary>
    internal bool AdmitWrite(SimContainerHandle handle, long offset, long length)
    {
        var owner = handle.Owner;
        if (owner.Dead)
        {
            Probe("sim.dead_incarnation_writes_dropped");
            return false;
        }
        if (owner.AgentHost is { } host && Controller is { } core)
        {
            bool holder = core.Sessions.Get(host) is { } open && open.Incarnation == AgentIncarnation(host)
                || core.Store.ListDisks().Any(d => core.Sessions.Holding(d.Id, host).Any(s => s.Incarnation == AgentIncarnation(host)))
                || UnpresentRunning(host);
            if (!holder && _controllerTime.GetElapsedTime(_controllerStartedTimestamp) > TimeSpan.FromMilliseconds(LeaseMs))
                _checker.Violation("fencing", $"{owner} wrote {length} bytes at {offset} of {handle.Container.Name} while the controller treats it as fenced");
        }
        return true;
    }

    private ulong AgentIncarnation(string host) => _agents.First(a => a.Host == host).Core.Incarnation;
}
