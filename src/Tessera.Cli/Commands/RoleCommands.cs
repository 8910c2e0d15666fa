using System.CommandLine;
using Microsoft.Extensions.Logging;
using Tessera.Agent;
using Tessera.Cli.Infrastructure;
using Tessera.Controller;

namespace Tessera.Cli.Commands;

/// <summary><c>tessera controller</c> and <c>tessera agent</c>: one role per process, until Ctrl-C/SIGTERM.</summary>
public static class RoleCommands
{
    public const string DefaultControllerListen = "127.0.0.1:7400";
    public const string DefaultNbdListen = "127.0.0.1:10809";
    public static readonly TimeSpan RegisterTimeout = TimeSpan.FromSeconds(30);

    public static Command Controller()
    {
        var data = new Option<string>("--data") { Description = "Directory for the controller's store (created if missing)", HelpName = "DIR", Required = true };
        var listen = new Option<string>("--listen") { Description = "host:port for agents and the admin API", HelpName = "HOST:PORT", DefaultValueFactory = _ => DefaultControllerListen };
        var logLevel = Serving.LogLevelOption();
        var allocateAhead = AllocateAheadOption();
        var command = new Command("controller", "Run the controller (control path and admin API) until Ctrl-C") { data, listen, allocateAhead, logLevel };
        CommandRunner.SetAction(command, async (r, ct) =>
        {
            var endPoint = Arguments.ListenAddress("--listen", r.GetValue(listen));
            var dataDir = Path.GetFullPath(r.GetValue(data)!);
            using var shutdown = new ShutdownSignal();
            using var loggerFactory = Serving.CreateLoggerFactory(r.GetValue(logLevel));
            var controller = await StartController(dataDir, endPoint, loggerFactory, shutdown.Token, r.GetValue(allocateAhead));
            if (controller is null) return ExitCodes.Ok;
            Serving.Say($"controller serving on {controller.Url} (data {dataDir})");
            await shutdown.WaitAsync();
            Serving.Say("stopping controller");
            await StopQuietly("controller", controller.StopAsync, loggerFactory);
            Serving.Say("stopped");
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>--allocate-ahead: bound of the sequential allocate-ahead window (docs/architecture.md).</summary>
    internal static Option<int> AllocateAheadOption() => new("--allocate-ahead")
    {
        Description = "Segments a sequential writer's first-write fault may map ahead on never-used space (0 disables)",
        HelpName = "SEGMENTS",
        DefaultValueFactory = _ => Tessera.Controller.Mapping.DiskCoordinator.DefaultAllocateAheadSegments,
    };

    public static Command Agent()
    {
        var controllerUrl = Arguments.ControllerOption(required: true);
        var host = new Option<string>("--host") { Description = "The host this agent serves (presentations name it)", HelpName = "NAME", Required = true };
        var nbdListen = new Option<string>("--nbd-listen") { Description = "host:port for the NBD server", HelpName = "HOST:PORT", DefaultValueFactory = _ => DefaultNbdListen };
        var logLevel = Serving.LogLevelOption();
        var command = new Command("agent", "Run a mapping agent (data path, NBD server) for one host until Ctrl-C") { controllerUrl, host, nbdListen, logLevel };
        CommandRunner.SetAction(command, async (r, ct) =>
        {
            var url = Arguments.ControllerUrl(r.GetValue(controllerUrl));
            var hostName = Arguments.Name("host", r.GetValue(host));
            var endPoint = Arguments.ListenAddress("--nbd-listen", r.GetValue(nbdListen));
            using var shutdown = new ShutdownSignal();
            using var loggerFactory = Serving.CreateLoggerFactory(r.GetValue(logLevel));
            var agent = await StartAgent(url, hostName, endPoint, loggerFactory, shutdown.Token);
            if (agent is null) return ExitCodes.Ok;
            Serving.Say($"agent {hostName} serving NBD on {Arguments.Format(agent.NbdEndPoint)} (controller {url})");
            _ = agent.Registered.ContinueWith(t =>
            {
                if (t.IsCompletedSuccessfully) Serving.Say($"agent {hostName} registered with the controller");
            }, TaskScheduler.Default);
            await shutdown.WaitAsync();
            Serving.Say("stopping agent");
            await StopQuietly("agent", agent.StopAsync, loggerFactory);
            Serving.Say("stopped");
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>Starts a controller; null when a shutdown signal arrived first; a start failure is exit 4.</summary>
    internal static async Task<ControllerHost?> StartController(string dataDir, System.Net.IPEndPoint endPoint, ILoggerFactory loggerFactory, CancellationToken cancellationToken,
        int allocateAheadSegments = Tessera.Controller.Mapping.DiskCoordinator.DefaultAllocateAheadSegments)
    {
        if (allocateAheadSegments < 0 || allocateAheadSegments > Tessera.Controller.Mapping.DiskCoordinator.MaxAllocateAheadSegments)
            throw new CliException(ExitCodes.Usage, $"--allocate-ahead must be 0..{Tessera.Controller.Mapping.DiskCoordinator.MaxAllocateAheadSegments}, not {allocateAheadSegments}");
        try
        {
            return await ControllerHost.StartAsync(new ControllerOptions { DataDirectory = dataDir, ListenAddress = Arguments.Format(endPoint), AllocateAheadSegments = allocateAheadSegments },
                loggerFactory, cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return null;
        }
        catch (Exception e)
        {
            throw new CliException(ExitCodes.ServeFailed, $"the controller could not start on {Arguments.Format(endPoint)} with data {dataDir}: {Describe(e)}");
        }
    }

    /// <summary>Starts an agent; null when a shutdown signal arrived first; a start failure is exit 4.</summary>
    internal static async Task<AgentHost?> StartAgent(string controllerUrl, string hostName, System.Net.IPEndPoint endPoint, ILoggerFactory loggerFactory, CancellationToken cancellationToken)
    {
        try
        {
            return await AgentHost.StartAsync(new AgentOptions { ControllerUrl = controllerUrl, HostName = hostName, NbdEndPoint = endPoint },
                loggerFactory, cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return null;
        }
        catch (Exception e)
        {
            throw new CliException(ExitCodes.ServeFailed, $"the agent for host {hostName} could not start on {Arguments.Format(endPoint)}: {Describe(e)}");
        }
    }

    /// <summary>Stopping must not turn into a stack trace; a failure is logged and the next role still stops.</summary>
    internal static async Task StopQuietly(string role, Func<Task> stop, ILoggerFactory loggerFactory)
    {
        try
        {
            await stop();
        }
        catch (Exception e)
        {
            loggerFactory.CreateLogger("Tessera.Cli").LogError("stopping the {Role} failed: {Reason}", role, Describe(e));
        }
    }

    /// <summary>The outer message plus the innermost cause (e.g. "Address already in use"), on one line.</summary>
    internal static string Describe(Exception e)
    {
        var inner = e;
        while (inner.InnerException is not null) inner = inner.InnerException;
        var outer = e.Message.TrimEnd('.');
        var text = ReferenceEquals(inner, e) || outer.Contains(inner.Message.TrimEnd('.'), StringComparison.OrdinalIgnoreCase)
            ? outer : $"{outer}: {inner.Message}";
        return AdminConnection.OneLine(text);
    }
}
