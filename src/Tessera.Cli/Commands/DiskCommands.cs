using System.CommandLine;
using Tessera.Cli.Infrastructure;
using Tessera.Core.Protocol;
using Command = System.CommandLine.Command;

namespace Tessera.Cli.Commands;

/// <summary><c>tessera disk ...</c>: virtual disks and which hosts see them.</summary>
public static class DiskCommands
{
    public static Command Create()
    {
        var controller = Arguments.ControllerOption();
        return new Command("disk", "Virtual disks")
        {
            CreateCommand(controller), ListCommand(controller), ShowCommand(controller), DeleteCommand(controller),
            PresentCommand(controller), UnpresentCommand(controller), MapCommand(controller),
            DiskSnapshotCommands.Clone(controller), DiskSnapshotCommands.Resize(controller),
        };
    }

    private const string DefaultSegmentSize = "1MiB";

    private static Argument<string> NameArgument() => new("NAME") { Description = "Disk name (also its NBD export name)" };

    private static Option<string> HostOption() => new("--host") { Description = "Host name (as given to tessera agent --host)", Required = true, HelpName = "HOST" };

    private static Command CreateCommand(Option<string> controller)
    {
        var name = NameArgument();
        var size = Arguments.SizeOption("--size", "Disk size, e.g. 8GiB");
        size.Required = true;
        var segmentSize = Arguments.SizeOption("--segment-size", "Segment size: a power of two, 64KiB..64MiB", DefaultSegmentSize);
        var command = new Command("create", "Create a thin disk (all segments read as zeros until written)") { name, size, segmentSize, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var request = new CreateDiskRequest
            {
                Name = Arguments.Name("disk", r.GetValue(name)),
                SizeBytes = (ulong)Arguments.PositiveSize("--size", r.GetValue(size)),
                SegmentSizeBytes = Arguments.SegmentSize(Arguments.SizeValue(r, segmentSize, DefaultSegmentSize)),
            };
            var disk = await admin.Client.CreateDiskAsync(request, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(DiskJson.From(disk));
            else Output.Line($"created disk {disk.Name} ({Format.Size(disk.SizeBytes)}, {disk.SegmentCount} segments of {Format.Size(disk.SegmentSizeBytes)})");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ListCommand(Option<string> controller)
    {
        var command = new Command("list", "List disks") { controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var reply = await admin.Client.ListDisksAsync(new ListDisksRequest(), admin.Call(ct));
            if (Output.WantsJson(r))
            {
                Output.Json(new DisksJson(reply.Disks.Select(DiskJson.From).ToArray()));
                return ExitCodes.Ok;
            }
            Output.Table(["NAME", "SIZE", "SEGMENT", "ALLOCATED", "PRESENTED TO"],
                reply.Disks.Select(d => new[]
                {
                    d.Name, Format.Size(d.SizeBytes), Format.Size(d.SegmentSizeBytes),
                    $"{Format.Size(d.AllocatedBytes)} ({d.AllocatedSegments}/{d.SegmentCount})", Format.Presentations(d.Presentations),
                }),
                "no disks (create one with: tessera disk create NAME --size SIZE)");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ShowCommand(Option<string> controller)
    {
        var name = NameArgument();
        var command = new Command("show", "Show one disk") { name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var disk = await admin.Client.GetDiskAsync(new DiskRef { Name = DiskSnapshotCommands.DiskOrSnapshot(r.GetValue(name)) }, admin.Call(ct));
            var sharing = await DiskSnapshotCommands.SharingAsync(admin, disk.Name, ct);
            if (Output.WantsJson(r))
            {
                Output.Json(DiskSnapshotCommands.WithSharing(DiskJson.From(disk), sharing));
                return ExitCodes.Ok;
            }
            Output.Properties(
            [
                ("name", disk.Name),
                ("id", disk.Id.ToString()),
                ("size", $"{Format.Size(disk.SizeBytes)} ({disk.SizeBytes} bytes)"),
                ("segments", $"{disk.SegmentCount} of {Format.Size(disk.SegmentSizeBytes)}"),
                ("allocated", $"{Format.Size(disk.AllocatedBytes)} ({disk.AllocatedSegments} segments)"),
                ("presented to", Format.Presentations(disk.Presentations)),
                ("created", Format.Time(disk.CreatedAt)),
                .. DiskSnapshotCommands.SharingProperties(sharing),
            ]);
            await OperationsCommands.PrintLocationsAsync(admin, disk.Name, ct);
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command DeleteCommand(Option<string> controller)
    {
        var name = NameArgument();
        var command = new Command("delete", "Delete a disk and free its segments") { name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var disk = Arguments.Name("disk", r.GetValue(name));
            await admin.Client.DeleteDiskAsync(new DiskRef { Name = disk }, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(new DoneJson("deleted", disk));
            else Output.Line($"deleted disk {disk}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command PresentCommand(Option<string> controller)
    {
        var name = NameArgument();
        var host = HostOption();
        var readOnly = new Option<bool>("--read-only") { Description = "The host may read but not write" };
        var command = new Command("present", "Let a host see a disk (as an NBD export on its agent)") { name, host, readOnly, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var request = new PresentRequest
            {
                Disk = DiskSnapshotCommands.DiskOrSnapshot(r.GetValue(name)),
                Host = Arguments.Name("host", r.GetValue(host)),
                ReadOnly = r.GetValue(readOnly),
            };
            await admin.Client.PresentDiskAsync(request, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(new DoneJson("presented", request.Disk, request.Host, request.ReadOnly));
            else Output.Line($"presented disk {request.Disk} to host {request.Host} ({(request.ReadOnly ? "read-only" : "read-write")})");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command UnpresentCommand(Option<string> controller)
    {
        var name = NameArgument();
        var host = HostOption();
        var command = new Command("unpresent", "Stop a host from seeing a disk") { name, host, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var request = new UnpresentRequest { Disk = DiskSnapshotCommands.DiskOrSnapshot(r.GetValue(name)), Host = Arguments.Name("host", r.GetValue(host)) };
            await admin.Client.UnpresentDiskAsync(request, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(new DoneJson("unpresented", request.Disk, request.Host));
            else Output.Line($"unpresented disk {request.Disk} from host {request.Host}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command MapCommand(Option<string> controller)
    {
        var name = NameArgument();
        var command = new Command("map", "Show the disk's segment map: ranges with state and location") { name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var reply = await admin.Client.GetDiskMapAsync(new DiskRef { Name = DiskSnapshotCommands.DiskOrSnapshot(r.GetValue(name)) }, admin.Call(ct));
            var sharing = await DiskSnapshotCommands.SharingAsync(admin, reply.Disk.Name, ct);
            if (Output.WantsJson(r))
            {
                Output.Json(DiskSnapshotCommands.WithSharing(new DiskMapJson(DiskJson.From(reply.Disk), reply.Ranges.Select(MapRangeJson.From).ToArray()), sharing));
                return ExitCodes.Ok;
            }
            Output.Line($"disk {reply.Disk.Name}: {Format.Size(reply.Disk.SizeBytes)}, {reply.Disk.SegmentCount} segments of {Format.Size(reply.Disk.SegmentSizeBytes)}");
            Output.Table(["SEGMENTS", "COUNT", "STATE", "CONTAINER", "PHYSICAL"],
                reply.Ranges.Select(m =>
                {
                    var located = !string.IsNullOrEmpty(m.Container) || m.ContainerId != 0;
                    var last = m.FirstSegment + m.Count - 1;
                    return new[]
                    {
                        m.Count == 1 ? $"{m.FirstSegment}" : $"{m.FirstSegment}-{last}", m.Count.ToString(), m.State,
                        located ? Format.OrDash(m.Container) : "-",
                        located ? (m.Count == 1 ? $"{m.FirstPhysicalSegment}" : $"{m.FirstPhysicalSegment}-{m.FirstPhysicalSegment + m.Count - 1}") : "-",
                    };
                }),
                "(no ranges)");
            DiskSnapshotCommands.PrintSharing(sharing);
            return ExitCodes.Ok;
        });
        return command;
    }
}
