using System.CommandLine;
using Grpc.Core;
using Tessera.Cli.Infrastructure;
using Tessera.Core.Protocol;
using Command = System.CommandLine.Command;

namespace Tessera.Cli.Commands;

/// <summary><c>tessera snapshot ...</c>: crash-consistent, metadata-only snapshots of disks (snapshots.proto).</summary>
public static class SnapshotCommands
{
    public static Command Create()
    {
        var controller = Arguments.ControllerOption();
        return new Command("snapshot", "Snapshots of disks (read them with: tessera disk present DISK@SNAPSHOT --host H --read-only)")
        {
            CreateCommand(controller), ListCommand(controller), DeleteCommand(controller),
        };
    }

    private static Argument<string> DiskArgument() => new("DISK") { Description = "The disk" };

    private static Argument<string> NameArgument() => new("NAME") { Description = "Snapshot name (the snapshot's export is DISK@NAME)" };

    private static Command CreateCommand(Option<string> controller)
    {
        var disk = DiskArgument();
        var name = NameArgument();
        var command = new Command("create", "Snapshot a disk while hosts keep writing: metadata only, copy-on-write afterwards") { disk, name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var request = new CreateSnapshotRequest { Disk = Arguments.Name("disk", r.GetValue(disk)), Name = Arguments.Name("snapshot", r.GetValue(name)) };
            var s = await admin.Snapshots.CreateSnapshotAsync(request, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(SnapshotJson.From(s));
            else Output.Line($"created snapshot {s.Ref} ({Format.Size(s.SizeBytes)}, {Format.Size(s.AllocatedBytes)} shared with {s.Disk}) in {s.CreationMicros / 1000.0:0.###} ms");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ListCommand(Option<string> controller)
    {
        var disk = new Argument<string?>("DISK") { Description = "Only this disk's snapshots", Arity = ArgumentArity.ZeroOrOne };
        var command = new Command("list", "List snapshots: size, created, bytes unique to each and shared") { disk, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var d = r.GetValue(disk);
            var reply = await admin.Snapshots.ListSnapshotsAsync(new ListSnapshotsRequest { Disk = d is null ? "" : Arguments.Name("disk", d) }, admin.Call(ct));
            if (Output.WantsJson(r))
            {
                Output.Json(new SnapshotsJson(reply.Snapshots.Select(SnapshotJson.From).ToArray()));
                return ExitCodes.Ok;
            }
            Output.Table(["SNAPSHOT", "DISK", "SIZE", "CREATED", "ALLOCATED", "UNIQUE", "SHARED", "PRESENTED TO"],
                reply.Snapshots.Select(s => new[]
                {
                    s.Ref, s.Disk, Format.Size(s.SizeBytes), s.CreatedAt, Format.Size(s.AllocatedBytes),
                    Format.Size(s.UniqueBytes), Format.Size(s.SharedBytes), Format.Presentations(s.Presentations),
                }),
                "no snapshots (create one with: tessera snapshot create DISK NAME)");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command DeleteCommand(Option<string> controller)
    {
        var disk = DiskArgument();
        var name = NameArgument();
        var command = new Command("delete", "Delete a snapshot; frees only the space no disk, clone or other snapshot shares") { disk, name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var request = new SnapshotRef { Disk = Arguments.Name("disk", r.GetValue(disk)), Name = Arguments.Name("snapshot", r.GetValue(name)) };
            await admin.Snapshots.DeleteSnapshotAsync(request, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(new DoneJson("deleted", $"{request.Disk}@{request.Name}"));
            else Output.Line($"deleted snapshot {request.Disk}@{request.Name}");
            return ExitCodes.Ok;
        });
        return command;
    }
}

/// <summary><c>tessera disk clone</c> and <c>tessera disk resize</c>, and the sharing lines of disk show/map.</summary>
public static class DiskSnapshotCommands
{
    /// <summary>A disk name, or DISK@SNAPSHOT (a snapshot, presented read-only).</summary>
    public static string DiskOrSnapshot(string? text)
    {
        int at = text?.IndexOf('@', StringComparison.Ordinal) ?? -1;
        if (text is null || at < 0) return Arguments.Name("disk", text);
        Arguments.Name("disk", text[..at]);
        Arguments.Name("snapshot", text[(at + 1)..]);
        return text;
    }

    public static Command Clone(Option<string> controller)
    {
        var source = new Argument<string>("DISK@SNAPSHOT") { Description = "The snapshot to clone" };
        var name = new Argument<string>("NEWDISK") { Description = "The new disk's name" };
        var command = new Command("clone", "Create a writable disk from a snapshot, sharing its segments until written") { source, name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var text = r.GetValue(source) ?? "";
            if (!text.Contains('@', StringComparison.Ordinal)) throw CliException.Usage($"'{text}' is not a snapshot: use DISK@SNAPSHOT");
            var request = new CloneDiskRequest { Source = DiskOrSnapshot(text), Name = Arguments.Name("disk", r.GetValue(name)) };
            var disk = await admin.Snapshots.CloneDiskAsync(request, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(DiskJson.From(disk));
            else Output.Line($"created disk {disk.Name} from {request.Source} ({Format.Size(disk.SizeBytes)}, {disk.AllocatedSegments} segments shared until written)");
            return ExitCodes.Ok;
        });
        return command;
    }

    public static Command Resize(Option<string> controller)
    {
        var name = new Argument<string>("NAME") { Description = "Disk name" };
        var size = Arguments.SizeOption("--size", "The new size, e.g. 16GiB");
        size.Required = true;
        var force = new Option<bool>("--force") { Description = "Shrink even when the cut-off tail holds data (that data is lost)" };
        var command = new Command("resize", "Grow a disk online (new space reads as zeros), or shrink it") { name, size, force, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var request = new ResizeDiskRequest { Name = Arguments.Name("disk", r.GetValue(name)), SizeBytes = (ulong)Arguments.PositiveSize("--size", r.GetValue(size)), Force = r.GetValue(force) };
            var disk = await admin.Snapshots.ResizeDiskAsync(request, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(DiskJson.From(disk));
            else Output.Line($"resized disk {disk.Name} to {Format.Size(disk.SizeBytes)} ({disk.SegmentCount} segments); new connections see the new size");
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>The disk's sharing, or null when the controller predates snapshots.</summary>
    public static async Task<DiskSharingView?> SharingAsync(AdminConnection admin, string disk, CancellationToken ct)
    {
        try
        {
            return await admin.Snapshots.GetDiskSharingAsync(new DiskRef { Name = disk }, admin.Call(ct));
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unimplemented)
        {
            return null;
        }
    }

    public static IEnumerable<(string, string)> SharingProperties(DiskSharingView? s)
    {
        if (s is null) yield break;
        yield return ("unique", Format.Size(s.UniqueBytes));
        yield return ("shared", $"{Format.Size(s.SharedBytes)} (with snapshots or clones; copied on write)");
        if (!string.IsNullOrEmpty(s.SnapshotOf)) yield return ("snapshot of", s.SnapshotOf);
        yield return ("snapshots", s.Snapshots.Count == 0 ? "-" : string.Join(", ", s.Snapshots));
    }

    public static void PrintSharing(DiskSharingView? s)
    {
        if (s is null) return;
        Output.Line($"shared with snapshots/clones: {Format.Size(s.SharedBytes)} in {s.SharedRanges.Count} range(s){(s.SharedRanges.Count == 0 ? "" : ": " + string.Join(", ", s.SharedRanges.Take(20).Select(RangeText)) + (s.SharedRanges.Count > 20 ? ", ..." : ""))}");
        if (s.Snapshots.Count > 0) Output.Line($"snapshots: {string.Join(", ", s.Snapshots)}");
    }

    private static string RangeText(SharedRange r) => r.Count == 1 ? $"{r.FirstSegment}" : $"{r.FirstSegment}-{r.FirstSegment + r.Count - 1}";

    public static object WithSharing(DiskJson disk, DiskSharingView? s) => s is null ? disk : DiskShowJson.From(disk, s);

    public static object WithSharing(DiskMapJson map, DiskSharingView? s) => s is null ? map : new DiskMapSharingJson(DiskShowJson.From(map.Disk, s), map.Ranges);
}

public sealed record SnapshotJson(string Disk, string Name, string Ref, ulong SizeBytes, uint SegmentSizeBytes, string CreatedAt,
    ulong AllocatedBytes, ulong UniqueBytes, ulong SharedBytes, ulong CreationMicros, PresentationJson[] Presentations)
{
    public static SnapshotJson From(SnapshotView s) => new(s.Disk, s.Name, s.Ref, s.SizeBytes, s.SegmentSizeBytes, s.CreatedAt,
        s.AllocatedBytes, s.UniqueBytes, s.SharedBytes, s.CreationMicros, s.Presentations.Select(p => new PresentationJson(p.Host, p.ReadOnly)).ToArray());
}

public sealed record SnapshotsJson(SnapshotJson[] Snapshots);

public sealed record SharedRangeJson(ulong FirstSegment, ulong Count);

/// <summary>disk show --json: the DiskJson fields plus sharing.</summary>
public sealed record DiskShowJson(ulong Id, string Name, ulong SizeBytes, uint SegmentSizeBytes, ulong SegmentCount,
    ulong AllocatedSegments, ulong AllocatedBytes, PresentationJson[] Presentations, string CreatedAt,
    ulong UniqueBytes, ulong SharedBytes, string SnapshotOf, string[] Snapshots, SharedRangeJson[] SharedRanges)
{
    public static DiskShowJson From(DiskJson d, DiskSharingView s) => new(d.Id, d.Name, d.SizeBytes, d.SegmentSizeBytes, d.SegmentCount,
        d.AllocatedSegments, d.AllocatedBytes, d.Presentations, d.CreatedAt, s.UniqueBytes, s.SharedBytes, s.SnapshotOf, s.Snapshots.ToArray(),
        s.SharedRanges.Select(r => new SharedRangeJson(r.FirstSegment, r.Count)).ToArray());
}

public sealed record DiskMapSharingJson(DiskShowJson Disk, MapRangeJson[] Ranges);
