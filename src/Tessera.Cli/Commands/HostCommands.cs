using System.CommandLine;
using Tessera.Cli.Infrastructure;
using Tessera.Core.Protocol;
using Command = System.CommandLine.Command;

namespace Tessera.Cli.Commands;

/// <summary><c>tessera host list</c>: the agents the controller knows.</summary>
public static class HostCommands
{
    public static Command Create()
    {
        var controller = Arguments.ControllerOption();
        var list = new Command("list", "List hosts (agents): address, incarnation, lease") { controller, Output.JsonOption };
        CommandRunner.SetAdminAction(list, controller, async (r, admin, ct) =>
        {
            var reply = await admin.Client.ListHostsAsync(new ListHostsRequest(), admin.Call(ct));
            if (Output.WantsJson(r))
            {
                Output.Json(new HostsJson(reply.Hosts.Select(HostJson.From).ToArray()));
                return ExitCodes.Ok;
            }
            Output.Table(["HOST", "NBD ADDRESS", "INCARNATION", "CONNECTED", "LEASE EXPIRES", "LAST HEARTBEAT", "DISKS"],
                reply.Hosts.Select(h => new[]
                {
                    h.Host, Format.OrDash(h.NbdAddress), h.Incarnation.ToString(), h.Connected ? "yes" : "no",
                    Format.Time(h.LeaseExpiresAt), Format.Time(h.LastHeartbeatAt), h.Disks.Count == 0 ? "-" : string.Join(", ", h.Disks),
                }),
                "no hosts (start one with: tessera agent --controller URL --host NAME)");
            return ExitCodes.Ok;
        });
        return new Command("host", "Hosts and their agents") { list };
    }
}
