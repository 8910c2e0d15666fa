using System.CommandLine;
using System.Runtime.InteropServices;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;

namespace Tessera.Cli.Infrastructure;

/// <summary>What the serving roles (up, controller, agent) share: logging and waiting for Ctrl-C/SIGTERM.</summary>
public static class Serving
{
    public static Option<LogLevel> LogLevelOption() => new("--log-level")
    {
        Description = "Log level: trace, debug, information, warning, error, critical, none",
        HelpName = "LEVEL",
        DefaultValueFactory = _ => LogLevel.Information,
        CustomParser = result =>
        {
            var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
            var level = text.ToLowerInvariant() switch
            {
                "trace" => LogLevel.Trace,
                "debug" => LogLevel.Debug,
                "information" or "info" => LogLevel.Information,
                "warning" or "warn" => LogLevel.Warning,
                "error" => LogLevel.Error,
                "critical" => LogLevel.Critical,
                "none" => LogLevel.None,
                _ => (LogLevel?)null,
            };
            if (level is null) result.AddError($"--log-level: '{text}' is not a log level (trace, debug, information, warning, error, critical, none)");
            return level ?? LogLevel.Information;
        },
    };

    /// <summary>Logs go to stderr (one line each, with timestamps) so stdout carries only the role's summary lines.</summary>
    public static ILoggerFactory CreateLoggerFactory(LogLevel level) => LoggerFactory.Create(builder =>
    {
        builder.SetMinimumLevel(level);
        // ASP.NET Core logs every gRPC call at Information; only its warnings matter to an operator.
        builder.AddFilter("Microsoft", (LogLevel)Math.Max((int)level, (int)LogLevel.Warning));
        builder.AddFilter("Grpc", (LogLevel)Math.Max((int)level, (int)LogLevel.Warning));
        // A start failure (e.g. port in use) is reported once, as the CLI's one error line; the generic host
        // would log it again with a stack trace.
        if (level >= LogLevel.Information) builder.AddFilter("Microsoft.Extensions.Hosting", LogLevel.None);
        builder.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-dd HH:mm:ss.fff ";
        });
        builder.Services.Configure<ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
    });

    /// <summary>Summary lines for people and for tests that wait for "serving".</summary>
    public static void Say(string text)
    {
        Console.Out.WriteLine($"tessera: {text}");
        Console.Out.Flush();
    }
}

/// <summary>
/// Turns the first SIGINT/SIGTERM/SIGQUIT into a cancellation so the roles stop in order (agent, then controller).
/// A second signal while stopping is not intercepted, so it ends the process at once.
/// </summary>
public sealed class ShutdownSignal : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly PosixSignalRegistration[] _registrations;

    public ShutdownSignal()
    {
        _registrations =
        [
            PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal),
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal),
            PosixSignalRegistration.Create(PosixSignal.SIGQUIT, OnSignal),
        ];
    }

    public CancellationToken Token => _cts.Token;

    public Task WaitAsync() => Task.Delay(Timeout.Infinite, _cts.Token).ContinueWith(_ => { }, TaskScheduler.Default);

    private void OnSignal(PosixSignalContext context)
    {
        if (_cts.IsCancellationRequested) return;
        context.Cancel = true;
        _cts.Cancel();
    }

    public void Dispose()
    {
        foreach (var registration in _registrations) registration.Dispose();
        _cts.Dispose();
    }
}
