using System.Net;
using Microsoft.Extensions.Logging;

namespace Tessera.Agent;

public sealed record AgentOptions
{
    /// <summary>Controller URL, e.g. http://127.0.0.1:7400.</summary>
    public required string ControllerUrl { get; init; }

    /// <summary>The host this agent serves; presentations name it.</summary>
    public required string HostName { get; init; }

    /// <summary>Where to serve NBD. Port 0 picks a free port.</summary>
    public IPEndPoint NbdEndPoint { get; init; } = new(IPAddress.Loopback, 10809);

    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;
}

/// <summary>A running agent: the controller connection, the volatile tables and the NBD server.</summary>
public sealed partial class AgentHost : IAsyncDisposable
{
    /// <summary>The bound NBD endpoint (with the real port when 0 was asked for).</summary>
    public IPEndPoint NbdEndPoint { get; private set; } = new(IPAddress.Loopback, 0);

    public static Task<AgentHost> StartAsync(AgentOptions options, ILoggerFactory loggerFactory, CancellationToken cancellationToken = default) =>
        throw new NotImplementedException();

    /// <summary>Completes once the agent has registered with the controller at least once.</summary>
    public Task Registered => throw new NotImplementedException();

    public Task StopAsync() => throw new NotImplementedException();

    public ValueTask DisposeAsync() => new(StopAsync());
}
