using System.CommandLine;
using Microsoft.Extensions.Logging;
using Tessera.Cli.Infrastructure;
using Tessera.Nbd;

namespace Tessera.Cli.Commands;

/// <summary><c>tessera store</c>: serve local files or block devices over NBD, to be added to a pool as nbd:// containers.</summary>
public static class StoreCommand
{
    public const string DefaultListen = "127.0.0.1:10810";

    public static Command Create()
    {
        var exports = new Argument<string[]>("EXPORTS") { Description = "NAME=PATH pairs: each file or block device is served as export NAME", Arity = ArgumentArity.OneOrMore };
        var listen = new Option<string>("--listen") { Description = "host:port for the NBD server", HelpName = "HOST:PORT", DefaultValueFactory = _ => DefaultListen };
        var logLevel = Serving.LogLevelOption();
        var command = new Command("store", "Serve local files or block devices over NBD, to be used as nbd:// containers") { exports, listen, logLevel };
        CommandRunner.SetAction(command, async (r, ct) =>
        {
            var endPoint = Arguments.ListenAddress("--listen", r.GetValue(listen));
            var pairs = new List<(string, string)>();
            foreach (var pair in r.GetValue(exports)!)
            {
                int eq = pair.IndexOf('=');
                if (eq <= 0 || eq == pair.Length - 1) throw CliException.Usage($"'{pair}' is not NAME=PATH");
                var name = Arguments.Name("export", pair[..eq]);
                var path = Path.GetFullPath(pair[(eq + 1)..]);
                if (!File.Exists(path)) throw CliException.Usage($"{path} does not exist (create it first, e.g. truncate -s 100G {path})");
                pairs.Add((name, path));
            }
            using var shutdown = new ShutdownSignal();
            using var loggerFactory = Serving.CreateLoggerFactory(r.GetValue(logLevel));
            using var catalog = new FileStoreCatalog(pairs);
            await using var server = new NbdServer(catalog, new NbdServerOptions { TcpEndPoint = endPoint }, loggerFactory.CreateLogger<NbdServer>());
            try
            {
                await server.StartAsync(shutdown.Token);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                throw new CliException(ExitCodes.ServeFailed, $"the store could not start on {Arguments.Format(endPoint)}: {RoleCommands.Describe(e)}");
            }
            foreach (var (name, path) in pairs)
                Serving.Say($"store serving {path} as nbd://{Arguments.Format(server.TcpEndPoint!)}/{name}");
            await shutdown.WaitAsync();
            await server.StopAsync();
            Serving.Say("stopped");
            return ExitCodes.Ok;
        });
        return command;
    }
}
