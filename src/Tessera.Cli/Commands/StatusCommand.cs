using System.CommandLine;
using Tessera.Cli.Infrastructure;
using Tessera.Core.Protocol;
using Command = System.CommandLine.Command;

namespace Tessera.Cli.Commands;

/// <summary><c>tessera status</c>: one screen about the controller and the pool.</summary>
public static class StatusCommand
{
    public static Command Create()
    {
        var controller = Arguments.ControllerOption();
        var status = new Command("status", "Controller and pool summary") { controller, Output.JsonOption };
        CommandRunner.SetAdminAction(status, controller, async (r, admin, ct) =>
        {
            var s = await admin.Client.GetStatusAsync(new StatusRequest(), admin.Call(ct));
            if (Output.WantsJson(r))
            {
                Output.Json(StatusJson.From(admin.Url, s));
                return ExitCodes.Ok;
            }
            Output.Properties(
            [
                ("controller", admin.Url),
                ("version", Format.OrDash(s.Version)),
                ("epoch", s.ControllerEpoch.ToString()),
                ("started", Format.Time(s.StartedAt)),
                ("data", Format.OrDash(s.DataDir)),
                ("containers", s.Containers.ToString()),
                ("pool", $"{Format.Size(s.PoolUsedBytes)} used of {Format.Size(s.PoolSizeBytes)}"),
                ("disks", s.Disks.ToString()),
                ("hosts connected", s.HostsConnected.ToString()),
            ]);
            return ExitCodes.Ok;
        });
        return status;
    }
}
