using System.CommandLine;
using Grpc.Core;
using Spectre.Console;
using Tessera.Cli.Infrastructure;
using Tessera.Core.Protocol;
using Command = System.CommandLine.Command;

namespace Tessera.Cli.Commands;

public sealed record JobJson(ulong Id, string Kind, string Disk, string Source, string Target, string State, string Message,
    ulong TotalSegments, ulong MovedSegments, ulong MovedBytes, double PauseP50Ms, double PauseP99Ms, double PauseMaxMs,
    uint PauseSamples, double ElapsedSeconds, double BytesPerSecond, string CreatedAt, string FinishedAt)
{
    public static JobJson From(JobView j) => new(j.Id, j.Kind, j.Disk, j.Source, j.Target, j.State, j.Message, j.TotalSegments,
        j.MovedSegments, j.MovedBytes, j.PauseP50Ms, j.PauseP99Ms, j.PauseMaxMs, j.PauseSamples, j.ElapsedSeconds, j.BytesPerSecond,
        j.CreatedAt, j.FinishedAt);
}

public sealed record LocationJson(string Container, uint ContainerId, ulong Segments, ulong Bytes, ulong ErrorSegments, string Health);
public sealed record DiskLocationsJson(string Disk, ulong ZeroSegments, LocationJson[] Containers);
public sealed record ContainerDoneJson(string Action, string Container);

/// <summary>
/// <c>tessera disk migrate|locations</c>, <c>tessera container evacuate|remove|fail|repair</c>, <c>tessera job list|show</c>:
/// the Operations API. Added to the existing verb groups so that those files stay as they are.
/// </summary>
public static class OperationsCommands
{
    public static void AddTo(RootCommand root)
    {
        var disk = root.Subcommands.Single(c => c.Name == "disk");
        var container = root.Subcommands.Single(c => c.Name == "container");
        var controller = Arguments.ControllerOption();
        disk.Subcommands.Add(Migrate(controller));
        disk.Subcommands.Add(Locations(controller));
        container.Subcommands.Add(Evacuate(controller));
        container.Subcommands.Add(Remove(controller));
        container.Subcommands.Add(Fail(controller));
        container.Subcommands.Add(Repair(controller));
        root.Subcommands.Add(new Command("job", "Migration jobs") { ListJobs(controller), ShowJob(controller) });
    }

    private static Option<bool> NoWaitOption() => new("--no-wait") { Description = "Start the job and return its id without following it" };

    private static Command Migrate(Option<string> controller)
    {
        var name = new Argument<string>("NAME") { Description = "Disk name" };
        var to = new Option<string>("--to") { Description = "Destination container", Required = true, HelpName = "CONTAINER" };
        var noWait = NoWaitOption();
        var command = new Command("migrate", "Move every segment of a disk to one container while hosts keep using it") { name, to, noWait, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var job = await admin.Operations.MigrateDiskAsync(new MigrateDiskRequest
            {
                Disk = Arguments.Name("disk", r.GetValue(name)),
                To = Arguments.Name("container", r.GetValue(to)),
            }, admin.Call(ct));
            return await FollowAsync(r, admin, job, r.GetValue(noWait), ct);
        });
        return command;
    }

    private static Command Evacuate(Option<string> controller)
    {
        var name = new Argument<string>("NAME") { Description = "Container to empty" };
        var to = new Option<string>("--to") { Description = "Destination container (default: the other healthy containers, emptiest first)", HelpName = "CONTAINER" };
        var noWait = NoWaitOption();
        var command = new Command("evacuate", "Move every segment off a container while hosts keep using the disks") { name, to, noWait, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var request = new EvacuateRequest { Container = Arguments.Name("container", r.GetValue(name)) };
            if (r.GetValue(to) is { Length: > 0 } target) request.To = Arguments.Name("container", target);
            var job = await admin.Operations.EvacuateContainerAsync(request, admin.Call(ct));
            return await FollowAsync(r, admin, job, r.GetValue(noWait), ct);
        });
        return command;
    }

    /// <summary>Follows a job to its end: a progress bar on a terminal, a final summary (JSON with --json).</summary>
    private static async Task<int> FollowAsync(ParseResult r, AdminConnection admin, JobView job, bool noWait, CancellationToken ct)
    {
        if (noWait)
        {
            if (Output.WantsJson(r)) Output.Json(JobJson.From(job));
            else Output.Line($"started job {job.Id} ({Describe(job)}); follow it with: tessera job show {job.Id}");
            return ExitCodes.Ok;
        }
        JobView last = job;
        async Task Watch(Action<JobView> onView)
        {
            using var call = admin.Operations.WatchJob(new JobRef { Id = job.Id }, cancellationToken: ct);
            await foreach (var view in call.ResponseStream.ReadAllAsync(ct))
            {
                last = view;
                onView(view);
            }
        }
        bool interactive = !Output.WantsJson(r) && !Console.IsOutputRedirected;
        if (interactive)
        {
            await Output.Screen.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
                .StartAsync(async progress =>
                {
                    var task = progress.AddTask(Markup.Escape(Describe(job)), maxValue: Math.Max(1, job.TotalSegments));
                    await Watch(v =>
                    {
                        task.MaxValue = Math.Max(1, v.TotalSegments);
                        task.Value = v.MovedSegments;
                        task.Description = Markup.Escape($"{Describe(v)}: {v.MovedSegments}/{v.TotalSegments} segments, pause p99 {v.PauseP99Ms:F1} ms");
                    });
                    task.Value = task.MaxValue;
                });
        }
        else
        {
            await Watch(_ => { });
        }
        if (Output.WantsJson(r)) Output.Json(JobJson.From(last));
        else
            Output.Line($"job {last.Id} {last.State}: moved {last.MovedSegments} segments ({Format.Size(last.MovedBytes)}) in {last.ElapsedSeconds:F1} s " +
                $"({Format.Size((ulong)last.BytesPerSecond)}/s); per-segment pause p50 {last.PauseP50Ms:F1} ms, p99 {last.PauseP99Ms:F1} ms, max {last.PauseMaxMs:F1} ms" +
                (last.State == "failed" ? $"; {last.Message}" : ""));
        return last.State == "done" ? ExitCodes.Ok : ExitCodes.Refused;
    }

    private static string Describe(JobView j) => j.Kind == "disk"
        ? $"migrate disk {j.Disk} to {j.Target}"
        : $"evacuate {j.Source}" + (j.Target.Length > 0 ? $" to {j.Target}" : "");

    private static Command Remove(Option<string> controller)
    {
        var name = new Argument<string>("NAME") { Description = "Container name" };
        var command = new Command("remove", "Remove an empty container from the pool (evacuate it first)") { name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var container = Arguments.Name("container", r.GetValue(name));
            await admin.Operations.RemoveContainerAsync(new ContainerRef { Name = container }, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(new ContainerDoneJson("removed", container));
            else Output.Line($"removed container {container}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Fail(Option<string> controller)
    {
        var name = new Argument<string>("NAME") { Description = "Container name" };
        var reason = new Option<string>("--reason") { Description = "Why (shown by container list)", HelpName = "TEXT" };
        var command = new Command("fail", "Mark a container failed: its segments give EIO on every host") { name, reason, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var view = await admin.Operations.FailContainerAsync(new FailContainerRequest { Name = Arguments.Name("container", r.GetValue(name)), Reason = r.GetValue(reason) ?? "" }, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(ContainerJson.From(view));
            else Output.Line($"container {view.Name} is {view.Health}: {view.FailureReason}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Repair(Option<string> controller)
    {
        var name = new Argument<string>("NAME") { Description = "Container name" };
        var command = new Command("repair", "Clear a container's failed mark after a successful probe (segments already in error stay in error)") { name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var view = await admin.Operations.RepairContainerAsync(new ContainerRef { Name = Arguments.Name("container", r.GetValue(name)) }, admin.Call(ct));
            if (Output.WantsJson(r)) Output.Json(ContainerJson.From(view));
            else Output.Line($"container {view.Name} is {view.Health}");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command Locations(Option<string> controller)
    {
        var name = new Argument<string>("NAME") { Description = "Disk name" };
        var command = new Command("locations", "Where a disk's segments live, per container") { name, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var reply = await admin.Operations.GetDiskLocationsAsync(new DiskRef { Name = Arguments.Name("disk", r.GetValue(name)) }, admin.Call(ct));
            if (Output.WantsJson(r))
            {
                Output.Json(new DiskLocationsJson(reply.Disk, reply.ZeroSegments,
                    reply.Containers.Select(l => new LocationJson(l.Container, l.ContainerId, l.Segments, l.Bytes, l.ErrorSegments, l.Health)).ToArray()));
                return ExitCodes.Ok;
            }
            PrintLocations(reply);
            return ExitCodes.Ok;
        });
        return command;
    }

    /// <summary>The per-container table, also printed by <c>tessera disk show</c>.</summary>
    public static void PrintLocations(DiskLocationsReply reply) =>
        Output.Table(["CONTAINER", "SEGMENTS", "BYTES", "ERROR SEGMENTS", "HEALTH"],
            reply.Containers.Select(l => new[] { l.Container, l.Segments.ToString(), Format.Size(l.Bytes), l.ErrorSegments.ToString(), l.Health }),
            $"no segment of {reply.Disk} is allocated (all {reply.ZeroSegments} read as zeros)");

    /// <summary>Locations for <c>tessera disk show</c>; quietly nothing against a controller without the Operations API.</summary>
    public static async Task PrintLocationsAsync(AdminConnection admin, string disk, CancellationToken ct)
    {
        try
        {
            PrintLocations(await admin.Operations.GetDiskLocationsAsync(new DiskRef { Name = disk }, admin.Call(ct)));
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unimplemented)
        {
        }
    }

    private static Command ListJobs(Option<string> controller)
    {
        var command = new Command("list", "List migration jobs") { controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var reply = await admin.Operations.ListJobsAsync(new ListJobsRequest(), admin.Call(ct));
            if (Output.WantsJson(r))
            {
                Output.Json(reply.Jobs.Select(JobJson.From).ToArray());
                return ExitCodes.Ok;
            }
            Output.Table(["ID", "WHAT", "STATE", "PROGRESS", "PAUSE P50/P99/MAX", "MESSAGE"],
                reply.Jobs.Select(j => new[]
                {
                    j.Id.ToString(), Describe(j), j.State, $"{j.MovedSegments}/{j.TotalSegments}",
                    j.PauseSamples == 0 ? "-" : $"{j.PauseP50Ms:F1}/{j.PauseP99Ms:F1}/{j.PauseMaxMs:F1} ms", Format.OrDash(j.Message),
                }),
                "no jobs");
            return ExitCodes.Ok;
        });
        return command;
    }

    private static Command ShowJob(Option<string> controller)
    {
        var id = new Argument<ulong>("ID") { Description = "Job id" };
        var command = new Command("show", "Show one job (follow a running one with a progress bar)") { id, controller, Output.JsonOption };
        CommandRunner.SetAdminAction(command, controller, async (r, admin, ct) =>
        {
            var job = await admin.Operations.GetJobAsync(new JobRef { Id = r.GetValue(id) }, admin.Call(ct));
            return await FollowAsync(r, admin, job, noWait: false, ct);
        });
        return command;
    }
}
