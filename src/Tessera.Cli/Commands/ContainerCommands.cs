using System.CommandLine;
using Tessera.Cli.Infrastructure;
using Tessera.Core.Containers;
using Tessera.Core.Protocol;
using Command = System.CommandLine.Command;

namespace Tessera.Cli.Commands;

/// <summary><c>tessera container add|list</c>: the storage pool.</summary>
public static class ContainerCommands
{
    public static Command Create()
    {
        var controller = Arguments.ControllerOption();
        var name = new Argument<string>("NAME") { Description = "Container name" };
        var uri = new Argument<string>("URI") { Description = "file:///absolute/path (a file or a block device), nbd://host:port/export or nbd+unix:///export?socket=/path" };
        var size = Arguments.SizeOption("--size", "For file:// URIs: create the file sparse with this size when it does not exist");

        var add = new Command("add", "Add a storage container to the pool") { name, uri, size, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(add, controller, async (r, admin, ct) =>
        {
            var request = new AddContainerRequest { Name = Arguments.Name("container", r.GetValue(name)), Uri = r.GetValue(uri) ?? "" };
            if (!ContainerUri.TryValidate(request.Uri, out var error)) throw CliException.Usage(error);
            if (r.GetResult(size) is not null) request.SizeBytes = (ulong)Arguments.PositiveSize("--size", r.GetValue(size));
            var view = await admin.Client.AddContainerAsync(request, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(ContainerJson.From(view));
            else Output.Line($"added container {view.Name} (id {view.Id}, {Format.Size(view.SizeBytes)}) at {view.Uri}");
            return ExitCodes.Ok;
        });

        var list = new Command("list", "List storage containers") { controller, Output.JsonOption };
        CommandRunner.SetAdminAction(list, controller, async (r, admin, ct) =>
        {
            var reply = await admin.Client.ListContainersAsync(new ListContainersRequest(), admin.Call(ct));
            if (Output.WantsJson(r))
            {
                Output.Json(new ContainersJson(reply.Containers.Select(ContainerJson.From).ToArray()));
                return ExitCodes.Ok;
            }
            Output.Table(["ID", "NAME", "URI", "SIZE", "USED", "FREE", "SEGMENT", "HEALTH"],
                reply.Containers.Select(c => new[]
                {
                    c.Id.ToString(), c.Name, c.Uri, Format.Size(c.SizeBytes), Format.Size(c.UsedBytes), Format.Size(c.FreeBytes),
                    Format.Size(c.SegmentSizeBytes), string.IsNullOrEmpty(c.FailureReason) ? c.Health : $"{c.Health}: {c.FailureReason}",
                }),
                "no containers (add one with: tessera container add NAME file:///path --size SIZE)");
            return ExitCodes.Ok;
        });

        return new Command("container", "Storage containers: where the bytes live") { add, list };
    }
}
