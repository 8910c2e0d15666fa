using Grpc.Core;
using Tessera.Core.Protocol;

namespace Tessera.Simulation;

/// <summary>
/// The agent's end of a simulated stream, shaped like the gRPC call <c>AgentChannel.Connect</c> returns, so the real
/// <see cref="Tessera.Agent.ControllerConnection"/> runs over it through <see cref="Tessera.Agent.IControllerTransport"/>.
/// Failures look the way Grpc.Net.Client shows them: a broken stream fails reads and writes with UNAVAILABLE, a
/// cancelled call or read with CANCELLED; cancelling or disposing the call breaks the stream at the controller too.
/// </summary>
public sealed partial class SimStream
{
    private readonly SimStreamReader<ControllerMessage> _client;

    public AsyncDuplexStreamingCall<AgentMessage, ControllerMessage> OpenClientCall(CancellationToken cancellationToken)
    {
        var cancelled = cancellationToken.Register(() => Break("the agent cancelled the call"));
        return new AsyncDuplexStreamingCall<AgentMessage, ControllerMessage>(
            new ClientWriter(this),
            _client,
            Task.FromResult(new Metadata()),
            () => IsBroken ? new Status(StatusCode.Unavailable, BrokenReason ?? "") : Status.DefaultSuccess,
            () => new Metadata(),
            () =>
            {
                cancelled.Dispose();
                Break("the agent disposed the call");
            });
    }

    private sealed class ClientWriter(SimStream stream) : IClientStreamWriter<AgentMessage>
    {
        public WriteOptions? WriteOptions { get; set; }

        public Task WriteAsync(AgentMessage message)
        {
            try
            {
                stream.SendToController(message);
                return Task.CompletedTask;
            }
            catch (RpcException e)
            {
                return Task.FromException(e);
            }
        }

        // The agent never half-closes its stream; if it starts to, the sim must learn to deliver the end.
        public Task CompleteAsync() => throw new NotSupportedException("the simulated stream does not model a half-close");
    }
}
