using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Agent;
using Tessera.Core.Containers;
using Tessera.Core.Protocol;

namespace Tessera.Simulation;

/// <summary>
/// One host: the real <see cref="AgentCore"/> plus the part of <c>ControllerConnection</c> that the sim replaces
/// (register, heartbeats, lease checks, reconnect with backoff), written against the same seam and the same
/// timings so the core sees what it sees in production.
/// </summary>
public sealed class SimAgentNode
{
    private const int MaxBackoffMs = 2_000;
    private readonly Simulation _sim;
    private CancellationTokenSource _life = new();
    private CancellationTokenSource? _session;
    private Link? _link;
    private bool _registered;
    private int _backoffMs = 50;
    private readonly Dictionary<ulong, long> _heartbeatSent = new();
    private ulong _heartbeatSequence;

    public SimAgentNode(Simulation sim, int index, string host, double clockRate)
    {
        _sim = sim;
        Index = index;
        Host = host;
        ClockRate = clockRate;
    }

    public int Index { get; }
    public string Host { get; }
    public double ClockRate { get; }
    public int Incarnation { get; private set; }
    public bool Alive { get; private set; }
    public NodeTime Time { get; private set; } = null!;
    public AgentCore Core { get; private set; } = null!;
    public SimOwner Owner { get; private set; } = null!;
    public SimStream? Stream { get; private set; }
    public bool Registered => _registered && Stream is { IsBroken: false };

    /// <summary>Starts a new incarnation (runs on the pool).</summary>
    public void Start()
    {
        Incarnation++;
        Alive = true;
        _life = new CancellationTokenSource();
        Time = new NodeTime(_sim.Clock, ClockRate, Host);
        Owner = new SimOwner($"{Host}#{Incarnation}", Host, Incarnation);
        var owner = Owner;
        var registry = new ContainerRegistry(uri => _sim.OpenContainer(uri, owner));
        Core = new AgentCore(Host, new ContainerSet(registry), Time, NullLogger.Instance, incarnation: (ulong)(Index + 1) << 32 | (uint)Incarnation);
        _ = LeaseLoopAsync(Core, Time, _life.Token);
        Connect();
    }

    /// <summary>The process dies: tables, pending faults and in-flight I/O are gone; its container handles write nothing more.</summary>
    public void Crash()
    {
        Alive = false;
        Owner.Dead = true;
        Time.Dead = true;
        _life.Cancel();
        _session?.Cancel();
        var s = Stream;
        Stream = null;
        _registered = false;
        s?.Break("agent crashed");
    }

    private void Connect()
    {
        if (!Alive) return;
        var stream = _sim.OpenStream(this);
        if (stream is null)
        {
            RetryLater();
            return;
        }
        Stream = stream;
        _registered = false;
        _session = CancellationTokenSource.CreateLinkedTokenSource(_life.Token);
        _link = new Link(stream);
        stream.SendToController(new AgentMessage { Register = new Register { Host = Host, Incarnation = Core.Incarnation, NbdAddress = "sim", Version = "1" } });
    }

    private void RetryLater()
    {
        int delay = _backoffMs;
        _backoffMs = Math.Min(_backoffMs * 2, MaxBackoffMs);
        _ = ReconnectAfterAsync(delay, _life.Token);
    }

    private async Task ReconnectAfterAsync(int delayMs, CancellationToken token)
    {
        try { await Task.Delay(TimeSpan.FromMilliseconds(delayMs), Time, token); }
        catch (OperationCanceledException) { return; }
        Connect();
    }

    internal void OnDelivered(SimStream stream, ControllerMessage message)
    {
        if (!ReferenceEquals(stream, Stream) || _link is null) return;
        if (!_registered)
        {
            if (message.BodyCase != ControllerMessage.BodyOneofCase.Registered)
            {
                stream.Break($"controller answered {message.BodyCase} to Register");
                return;
            }
            Core.OnRegistered(_link, message.Registered);
            _registered = true;
            _backoffMs = 50;
            _heartbeatSent.Clear();
            _ = HeartbeatLoopAsync(_link, Core, Time, _session!.Token);
            return;
        }
        if (message.BodyCase == ControllerMessage.BodyOneofCase.HeartbeatAck)
        {
            if (_heartbeatSent.Remove(message.HeartbeatAck.Sequence, out var sentAt)) Core.RenewLease(sentAt);
            return;
        }
        Core.OnControllerMessage(_link, message);
    }

    internal void OnStreamBroken(SimStream stream, string reason)
    {
        if (!ReferenceEquals(stream, Stream)) return;
        Stream = null;
        _registered = false;
        _session?.Cancel();
        if (_link != null) Core.OnDisconnected(_link, reason);
        _link = null;
        if (Alive) RetryLater();
    }

    private async Task HeartbeatLoopAsync(Link link, AgentCore core, NodeTime time, CancellationToken token)
    {
        try
        {
            while (!token.IsCancellationRequested)
            {
                _heartbeatSequence++;
                _heartbeatSent[_heartbeatSequence] = time.GetTimestamp();
                if (_heartbeatSent.Count > 64) foreach (var k in _heartbeatSent.Keys.ToList()) if (k + 64 < _heartbeatSequence) _heartbeatSent.Remove(k);
                link.Send(new AgentMessage { Heartbeat = new Heartbeat { Sequence = _heartbeatSequence } });
                await Task.Delay(TimeSpan.FromMilliseconds(Math.Max(10, core.HeartbeatIntervalMs)), time, token);
            }
        }
        catch (OperationCanceledException) { }
    }

    private static async Task LeaseLoopAsync(AgentCore core, NodeTime time, CancellationToken token)
    {
        try
        {
            while (!token.IsCancellationRequested)
            {
                core.CheckLease();
                await Task.Delay(TimeSpan.FromMilliseconds(Math.Clamp(core.LeaseMs / 20, 10, 250)), time, token);
            }
        }
        catch (OperationCanceledException) { }
    }

    private sealed class Link(SimStream stream) : IControllerLink
    {
        public void Send(AgentMessage message) => stream.SendToController(message);
    }
}
