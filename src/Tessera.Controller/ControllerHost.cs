using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Tessera.Controller.Admin;
using Tessera.Controller.Agents;

namespace Tessera.Controller;

public sealed record ControllerOptions
{
    /// <summary>Directory holding the SQLite store (created if missing).</summary>
    public required string DataDirectory { get; init; }

    /// <summary>host:port to listen on (gRPC, HTTP/2 cleartext). Port 0 picks a free port.</summary>
    public string ListenAddress { get; init; } = "127.0.0.1:7400";

    /// <summary>How long an agent may go without a heartbeat before the controller treats it as fenced.</summary>
    public int LeaseMs { get; init; } = 10_000;

    public int HeartbeatIntervalMs { get; init; } = 1_000;

    /// <summary>
    /// Bound of the sequential allocate-ahead window in segments (docs/architecture.md, "Sequential allocate-ahead");
    /// 0 disables it, so every segment is allocated by its own first write.
    /// </summary>
    public int AllocateAheadSegments { get; init; } = Mapping.DiskCoordinator.DefaultAllocateAheadSegments;

    /// <summary>
    /// How long a stopping controller waits for the migration runner to notice the stop before closing the store. A
    /// job step waiting on a holder's lease does not notice at once; the wait only makes a stop tidier, since every
    /// step is resumable from the store. The simulation uses 0: a crash waits for nothing, and its clock is stopped.
    /// </summary>
    public int StopWaitForJobsMs { get; init; } = 10_000;

    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>Throws with a clear message when an option makes no sense.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(DataDirectory)) throw new ArgumentException("DataDirectory is required");
        if (LeaseMs < 100 || LeaseMs > 3_600_000) throw new ArgumentException($"LeaseMs must be 100..3600000, not {LeaseMs}");
        if (HeartbeatIntervalMs < 10 || HeartbeatIntervalMs >= LeaseMs)
            throw new ArgumentException($"HeartbeatIntervalMs must be at least 10 and below LeaseMs ({LeaseMs}), not {HeartbeatIntervalMs}");
        if (AllocateAheadSegments < 0 || AllocateAheadSegments > Mapping.DiskCoordinator.MaxAllocateAheadSegments)
            throw new ArgumentException($"AllocateAheadSegments must be 0..{Mapping.DiskCoordinator.MaxAllocateAheadSegments}, not {AllocateAheadSegments}");
        if (StopWaitForJobsMs < 0 || StopWaitForJobsMs > 3_600_000) throw new ArgumentException($"StopWaitForJobsMs must be 0..3600000, not {StopWaitForJobsMs}");
        ControllerHost.ParseListenAddress(ListenAddress);
    }
}

/// <summary>A running controller: store, agent channel and admin API on one listener.</summary>
public sealed partial class ControllerHost : IAsyncDisposable
{
    /// <summary>Largest message accepted from agents and the CLI.</summary>
    public const int MaxReceiveMessageBytes = 4 << 20;

    /// <summary>Largest message sent (a disk map of a badly fragmented disk is the biggest).</summary>
    public const int MaxSendMessageBytes = 64 << 20;

    public const int MaxConnections = 2048;

    private readonly WebApplication _app;
    private readonly ControllerCore _core;
    private int _stopped;

    private ControllerHost(WebApplication app, ControllerCore core)
    {
        _app = app;
        _core = core;
    }

    /// <summary>The URL clients use, e.g. http://127.0.0.1:7400 (with the real port when 0 was asked for).</summary>
    public string Url { get; private set; } = "";

    internal ControllerCore Core => _core;

    /// <summary>
    /// The web host's defaults would read appsettings.json from the current directory and watch that directory,
    /// recursively, for changes (inotify): every write below it - container files under a `--data` directory in the
    /// working directory, a log next to it - woke a thread that stat()ed the file (3-7 % of the process's CPU samples
    /// during 1 MiB writes, docs/benchmarks.md "Ahead-requests, the JIT and the page cache"), and a stray
    /// appsettings.json there could reconfigure Kestrel. Tessera is configured by its command line only: the content root is the program's own directory and
    /// nothing is watched.
    /// </summary>
    internal static readonly WebApplicationOptions HostBuilderOptions = new()
    {
        ContentRootPath = AppContext.BaseDirectory,
        Args = ["--hostBuilder:reloadConfigOnChange=false"],
    };

    /// <summary>The configuration the web host was built with (tests check that it watches nothing).</summary>
    internal IConfiguration HostConfiguration => _app.Configuration;

    public static async Task<ControllerHost> StartAsync(ControllerOptions options, ILoggerFactory loggerFactory, CancellationToken cancellationToken = default)
    {
        options.Validate();
        Tessera.Nbd.NbdContainer.Register();
        var (address, port) = ParseListenAddress(options.ListenAddress);
        var core = new ControllerCore(options, loggerFactory);
        try
        {
            var builder = WebApplication.CreateSlimBuilder(HostBuilderOptions);
            builder.Logging.ClearProviders();
            builder.Services.AddSingleton(loggerFactory);
            builder.Services.AddSingleton(core);
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.Limits.MaxConcurrentConnections = MaxConnections;
                k.Listen(address, port, listen => listen.Protocols = HttpProtocols.Http2);
            });
            builder.Services.AddGrpc(g =>
            {
                g.MaxReceiveMessageSize = MaxReceiveMessageBytes;
                g.MaxSendMessageSize = MaxSendMessageBytes;
                g.EnableDetailedErrors = false;
            });
            var app = builder.Build();
            app.MapGrpcService<AgentChannelService>();
            app.MapGrpcService<AdminService>();
            app.MapGrpcService<SnapshotService>();
            app.MapGrpcService<OperationsService>();
            await app.StartAsync(cancellationToken).ConfigureAwait(false);

            var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            var uri = new Uri(bound);
            string host = IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) && (ip.Equals(IPAddress.Any) || ip.Equals(IPAddress.IPv6Any))
                ? "127.0.0.1"
                : uri.Host;
            return new ControllerHost(app, core) { Url = $"http://{host}:{uri.Port}" };
        }
        catch
        {
            core.Dispose();
            throw;
        }
    }

    internal static (IPAddress Address, int Port) ParseListenAddress(string listen)
    {
        int colon = listen.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(listen.AsSpan(colon + 1), out int port) || port is < 0 or > 65535)
            throw new ArgumentException($"listen address '{listen}' must be host:port");
        string host = listen[..colon].Trim('[', ']');
        if (host == "localhost") return (IPAddress.Loopback, port);
        if (host == "*") return (IPAddress.Any, port);
        if (!IPAddress.TryParse(host, out var address)) throw new ArgumentException($"listen address '{listen}': '{host}' is not an IP address");
        return (address, port);
    }

    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
        _core.Stop(); // closes agent streams so Kestrel does not wait for them
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await _app.StopAsync(deadline.Token).ConfigureAwait(false);
        }
        finally
        {
            await _app.DisposeAsync().ConfigureAwait(false);
            _core.Dispose();
        }
    }

    public ValueTask DisposeAsync() => new(StopAsync());
}
