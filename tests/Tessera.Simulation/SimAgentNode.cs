using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Agent;
using Tessera.Core.Containers;
using Tessera.Core.Protocol;

namespace Tessera.Simulation;

/// <summary>
/// One host: the real <see cref="AgentCore"/> and the real <see cref="ControllerConnection"/> (register,
/// heartbeats, lease checks, reconnect with backoff) on the node's simulated clock. Only the transport is
/// simulated: each session is a <see cref="SimStream"/> opened through <see cref="IControllerTransport"/>.
/// </summary>
public sealed class SimAgentNode
{
    private readonly Simulation _sim;
    private SimStream? _stream;

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

    /// <summary>The session the current incarnation opened last, while it is not broken.</summary>
    public SimStream? Stream => _stream is { IsBroken: false } s ? s : null;

    /// <summary>Registered on a live session (the connection hands the core its link only once Registered arrived).</summary>
    public bool Registered => Alive && Stream is not null && Core.IsConnected;

    /// <summary>Fault answers the earlier incarnations dropped during a lapse (the probe sums every incarnation).</summary>
    public long EarlierAnswersHeldWhileLapsed { get; private set; }

    /// <summary>Starts a new incarnation (runs on the pool).</summary>
    public void Start()
    {
        if (Core is { } previous) EarlierAnswersHeldWhileLapsed += Interlocked.Read(ref previous.Counters.AnswersHeldWhileLapsed);
        Incarnation++;
        Alive = true;
        _stream = null;
        Time = new NodeTime(_sim.Clock, ClockRate, Host);
        Owner = new SimOwner($"{Host}#{Incarnation}", Host, Incarnation);
        var owner = Owner;
        var registry = new ContainerRegistry(uri => _sim.OpenContainer(uri, owner));
        Core = new AgentCore(Host, new ContainerSet(registry), Time, NullLogger.Instance, incarnation: (ulong)(Index + 1) << 32 | (uint)Incarnation);
        var connection = new ControllerConnection(Core, new Transport(this, owner), "sim", Time, NullLogger.Instance);
        connection.Start();
    }

    /// <summary>
    /// The process dies: tables, pending faults and in-flight I/O are gone; its container handles write nothing
    /// more, its timers never fire and its end of the stream hears nothing more (so its connection loop simply
    /// stops where it was). The controller sees the stream break.
    /// </summary>
    public void Crash()
    {
        Alive = false;
        Owner.Dead = true;
        Time.Dead = true;
        Stream?.Break("agent crashed");
        _stream = null;
    }

    /// <summary>Sessions for one incarnation: refused while the controller is down or the host is partitioned.</summary>
    private sealed class Transport(SimAgentNode node, SimOwner owner) : IControllerTransport
    {
        public string Address => "sim://controller";

        public AsyncDuplexStreamingCall<AgentMessage, ControllerMessage> Connect(CancellationToken cancellationToken)
        {
            if (owner.Dead) throw new InvalidOperationException($"{owner} is dead and cannot connect");
            var stream = node._sim.OpenStream(node)
                ?? throw new RpcException(new Status(StatusCode.Unavailable, "connection refused (controller down or host partitioned)"));
            node._stream = stream;
            return stream.OpenClientCall(cancellationToken);
        }

        public void Dispose() { }
    }
}
