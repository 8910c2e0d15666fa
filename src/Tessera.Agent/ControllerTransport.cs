using Grpc.Core;
using Grpc.Net.Client;
using Tessera.Core.Protocol;

namespace Tessera.Agent;

/// <summary>
/// How <see cref="ControllerConnection"/> reaches the controller: each <see cref="Connect"/> opens one bidi session
/// (the request writer, the response reader, and dispose to abandon it). Production uses gRPC
/// (<see cref="GrpcControllerTransport"/>); the deterministic simulation supplies in-memory sessions so that it
/// drives the real register / heartbeat / lease / backoff loop.
/// </summary>
public interface IControllerTransport : IDisposable
{
    /// <summary>Where sessions go, for logs.</summary>
    string Address { get; }

    /// <summary>
    /// Opens one session. Cancelling <paramref name="cancellationToken"/> or disposing the call ends the session at
    /// both ends. A controller that cannot be reached may fail here or on the first read or write, with an
    /// <see cref="RpcException"/> (or the I/O exceptions <see cref="ControllerConnection"/> already treats as a
    /// broken session).
    /// </summary>
    AsyncDuplexStreamingCall<AgentMessage, ControllerMessage> Connect(CancellationToken cancellationToken);
}

/// <summary>The production transport: one HTTP/2 gRPC channel, one <c>AgentChannel.Connect</c> call per session.</summary>
public sealed class GrpcControllerTransport : IControllerTransport
{
    private readonly GrpcChannel _channel;
    private readonly AgentChannel.AgentChannelClient _client;

    public GrpcControllerTransport(string controllerUrl)
    {
        Address = controllerUrl;
        _channel = GrpcChannel.ForAddress(controllerUrl, new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler
            {
                ConnectTimeout = TimeSpan.FromSeconds(2),
                // A silently dead peer is noticed after about ten seconds, within the lease.
                KeepAlivePingDelay = TimeSpan.FromSeconds(5),
                KeepAlivePingTimeout = TimeSpan.FromSeconds(5),
                EnableMultipleHttp2Connections = true,
            },
            MaxReceiveMessageSize = 64 << 20,
            MaxSendMessageSize = 64 << 20,
        });
        _client = new AgentChannel.AgentChannelClient(_channel);
    }

    public string Address { get; }

    public AsyncDuplexStreamingCall<AgentMessage, ControllerMessage> Connect(CancellationToken cancellationToken) =>
        _client.Connect(cancellationToken: cancellationToken);

    public void Dispose() => _channel.Dispose();
}
