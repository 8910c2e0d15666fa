using Microsoft.Extensions.Logging;

namespace Tessera.Simulation;

/// <summary>
/// The controller's log lines on stdout, stamped with simulated time, when TESSERA_SIM_CONTROLLER_LOG=1: for triage
/// (job steps, container failures, moves). Not part of the trace hash, so turning it on does not change a replay.
/// </summary>
internal sealed class SimControllerLog(SimClock clock) : ILoggerFactory, ILogger
{
    public static bool Enabled => Environment.GetEnvironmentVariable("TESSERA_SIM_CONTROLLER_LOG") == "1";

    public ILogger CreateLogger(string categoryName) => this;

    public void AddProvider(ILoggerProvider provider) { }

    public void Dispose() { }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Console.WriteLine($"[{clock.NowNs / 1_000_000,9} ms] controller log {logLevel}: {formatter(state, exception)}{(exception is null ? "" : " " + exception.GetType().Name + ": " + exception.Message)}");
}
