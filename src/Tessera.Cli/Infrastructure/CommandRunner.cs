using System.CommandLine;
using Grpc.Core;

namespace Tessera.Cli.Infrastructure;

/// <summary>
/// The single place where a command's failure becomes "tessera: error: ..." on stderr and an exit code.
/// Commands throw <see cref="CliException"/> (or let a gRPC error escape); nothing reaches the user as a stack trace.
/// </summary>
public static class CommandRunner
{
    public static void SetAction(Command command, Func<ParseResult, CancellationToken, Task<int>> action) =>
        command.SetAction((parseResult, cancellationToken) => Run(() => action(parseResult, cancellationToken)));

    /// <summary>Sets an admin command's action: validates --controller, opens a connection, maps gRPC errors.</summary>
    public static void SetAdminAction(Command command, Option<string> controllerOption,
        Func<ParseResult, AdminConnection, CancellationToken, Task<int>> action) =>
        SetAction(command, async (parseResult, cancellationToken) =>
        {
            var url = Arguments.ControllerUrl(parseResult.GetValue(controllerOption));
            using var connection = new AdminConnection(url);
            try
            {
                return await action(parseResult, connection, cancellationToken);
            }
            catch (RpcException e)
            {
                throw AdminConnection.Translate(e, url);
            }
        });

    public static async Task<int> Run(Func<Task<int>> action)
    {
        try
        {
            return await action();
        }
        catch (CliException e)
        {
            return Fail(e.ExitCode, e.Message);
        }
        catch (Exception e)
        {
            return Fail(ExitCodes.Refused, $"unexpected failure: {e.GetType().Name}: {AdminConnection.OneLine(e.Message)}");
        }
    }

    public static int Fail(int exitCode, string message)
    {
        Console.Out.Flush();
        Console.Error.WriteLine($"tessera: error: {AdminConnection.OneLine(message)}");
        return exitCode;
    }
}
