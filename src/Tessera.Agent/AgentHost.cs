using System.Net;
using Microsoft.Extensions.Logging;
using Tessera.Core.Containers;
using Tessera.Nbd;

namespace Tessera.Agent;

public sealed record AgentOptions
{
    /// <summary>Controller URL, e.g. http://127.0.0.1:7400.</summary>
    public required string ControllerUrl { get; init; }

    /// <summary>The host this agent serves; presentations name it.</summary>
    public required string HostName { get; init; }

    /// <summary>Where to serve NBD. Port 0 picks a free port.</summary>
    public IPEndPoint NbdEndPoint { get; init; } = new(IPAddress.Loopback, 10809);

    /// <summary>Optional unix socket to serve NBD on as well (faster than TCP loopback for local clients).</summary>
    public string? NbdUnixSocketPath { get; init; }

    /// <summary>How long a map fault may wait for the controller before the I/O fails with EIO.</summary>
    public int FaultTimeoutMs { get; init; } = 120_000;

    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>Containers are opened through this registry (shared with the controller in <c>tessera up</c>).</summary>
    public ContainerRegistry Containers { get; init; } = ContainerRegistry.Shared;
}

/// <summary>
/// A running agent: the NBD server in front, the volatile tables in <see cref="AgentCore"/>, and the connection
/// to the controller behind. Start order: NBD listener first (so its address can be registered), then the
/// controller connection; clients that connect before the tables arrive see no exports yet.
/// </summary>
public sealed class AgentHost : IAsyncDisposable
{
    private readonly NbdServer _nbd;
    private readonly ControllerConnection _connection;
    private int _stopped;

    private AgentHost(AgentCore core, NbdServer nbd, ControllerConnection connection)
    {
        Core = core;
        _nbd = nbd;
        _connection = connection;
    }

    public AgentCore Core { get; }

    /// <summary>The bound NBD endpoint (with the real port when 0 was asked for).</summary>
    public IPEndPoint NbdEndPoint => _nbd.TcpEndPoint!;

    /// <summary>Completes once the agent has registered with the controller at least once.</summary>
    public Task Registered => _connection.RegisteredOnce;

    public static async Task<AgentHost> StartAsync(AgentOptions options, ILoggerFactory loggerFactory, CancellationToken cancellationToken = default)
    {
        NbdContainer.Register();
        var core = new AgentCore(options.HostName, new ContainerSet(options.Containers), options.TimeProvider,
            loggerFactory.CreateLogger("Tessera.Agent"), options.FaultTimeoutMs);
        var nbd = new NbdServer(new AgentCatalog(core), new NbdServerOptions
        {
            TcpEndPoint = options.NbdEndPoint,
            UnixSocketPath = options.NbdUnixSocketPath,
            TimeProvider = options.TimeProvider,
        }, loggerFactory.CreateLogger<NbdServer>());
        await nbd.StartAsync(cancellationToken);
        var connection = new ControllerConnection(core, options.ControllerUrl, nbd.TcpEndPoint!.ToString(), options.TimeProvider,
            loggerFactory.CreateLogger("Tessera.Agent.Connection"));
        connection.Start();
        return new AgentHost(core, nbd, connection);
    }

    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
        await _nbd.StopAsync();
        await _connection.DisposeAsync();
    }

    public ValueTask DisposeAsync() => new(StopAsync());
}
