using Grpc.Core;
using Tessera.Agent;
using Tessera.Core.Protocol;

namespace Tessera.Simulation;

/// <summary>
/// One simulated agent↔controller gRPC stream. Messages in flight wait in two ordered queues until the driver
/// delivers the head of one. A gRPC stream is ordered and reliable while it lives, so "drop", "duplicate" and
/// "reorder" cannot happen inside it: what they cause in reality is a broken stream, and that is what the sim does
/// (<see cref="Break"/>): both ends see the stream fail (a crashed agent's end hears nothing: the process is gone) and
/// whatever was still in flight is lost. Delay is real:
/// the driver may leave a message in flight while it does other things.
/// </summary>
public sealed partial class SimStream
{
    private readonly Queue<AgentMessage> _toController = new();
    private readonly Queue<ControllerMessage> _toAgent = new();
    private readonly CancellationTokenSource _broken = new();

    public SimStream(int id, SimAgentNode agent, int controllerIncarnation)
    {
        Id = id;
        Agent = agent;
        AgentOwner = agent.Owner;
        ControllerIncarnation = controllerIncarnation;
        // Kestrel fails a broken request stream's reads with an IOException and a cancelled one with OperationCanceledException.
        Reader = new SimStreamReader<AgentMessage>(() => new IOException("stream broken: " + BrokenReason));
        _client = new SimStreamReader<ControllerMessage>(
            () => new RpcException(new Status(StatusCode.Unavailable, "stream broken: " + BrokenReason)),
            () => new RpcException(new Status(StatusCode.Cancelled, "call cancelled")));
        Writer = new ServerWriter(this);
        Context = new SimCallContext(_broken.Token);
    }

    public int Id { get; }
    public SimAgentNode Agent { get; }

    /// <summary>The agent incarnation at the client end; once it is dead its end hears nothing more (the process is gone).</summary>
    public SimOwner AgentOwner { get; }
    public int ControllerIncarnation { get; }
    public bool IsBroken => _broken.IsCancellationRequested;
    public string? BrokenReason { get; private set; }
    /// <summary>The controller end as AgentChannelService sees it.</summary>
    public SimStreamReader<AgentMessage> Reader { get; }
    public ServerWriter Writer { get; }
    public SimCallContext Context { get; }

    /// <summary>While set (true time, ns), the driver delivers nothing on this stream (silent partition).</summary>
    public long HeldUntilNs { get; set; }

    public int ToControllerCount => _toController.Count;
    public int ToAgentCount => _toAgent.Count;

    private void SendToController(AgentMessage message)
    {
        if (IsBroken) throw new RpcException(new Status(StatusCode.Unavailable, "stream broken: " + BrokenReason));
        _toController.Enqueue(message);
    }

    internal void SendToAgent(ControllerMessage message)
    {
        if (IsBroken) throw new IOException("stream broken");
        _toAgent.Enqueue(message);
    }

    /// <summary>Delivers the oldest message agent→controller. Runs on the pool.</summary>
    public AgentMessage? DeliverToController()
    {
        if (IsBroken || _toController.Count == 0) return null;
        var m = _toController.Dequeue();
        Reader.Push(m);
        return m;
    }

    /// <summary>Delivers the oldest message controller→agent. Runs on the pool.</summary>
    public ControllerMessage? DeliverToAgent()
    {
        if (IsBroken || _toAgent.Count == 0) return null;
        var m = _toAgent.Dequeue();
        _client.Push(m);
        return m;
    }

    /// <summary>The stream fails at both ends (a reset connection, a lost or duplicated frame, a keepalive timeout).</summary>
    public void Break(string reason)
    {
        if (IsBroken) return;
        BrokenReason = reason;
        _toController.Clear();
        _toAgent.Clear();
        _broken.Cancel();
        Reader.Fail();
        if (!AgentOwner.Dead) _client.Fail();
    }

    public sealed class ServerWriter(SimStream stream) : IServerStreamWriter<ControllerMessage>
    {
        public WriteOptions? WriteOptions { get; set; }

        public Task WriteAsync(ControllerMessage message)
        {
            stream.SendToAgent(message);
            return Task.CompletedTask;
        }

        public Task WriteAsync(ControllerMessage message, CancellationToken cancellationToken)
        {
            cancellationToken.ThrowIfCancellationRequested();
            return WriteAsync(message);
        }
    }
}

/// <summary>The smallest ServerCallContext the services need: a cancellation token that fires when the stream breaks.</summary>
public sealed class SimCallContext(CancellationToken cancellationToken) : ServerCallContext
{
    private readonly Metadata _headers = new();
    private readonly Metadata _trailers = new();

    protected override string MethodCore => "sim";
    protected override string HostCore => "sim";
    protected override string PeerCore => "sim";
    protected override DateTime DeadlineCore => DateTime.MaxValue;
    protected override Metadata RequestHeadersCore => _headers;
    protected override CancellationToken CancellationTokenCore => cancellationToken;
    protected override Metadata ResponseTrailersCore => _trailers;
    protected override Status StatusCore { get; set; }
    protected override WriteOptions? WriteOptionsCore { get; set; }
    protected override AuthContext AuthContextCore => new(null, new Dictionary<string, List<AuthProperty>>());
    protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => throw new NotSupportedException();
    protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
}
