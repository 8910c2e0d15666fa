using System.CommandLine;
using System.Net;
using Grpc.Core;
using Tessera.Agent;
using Tessera.Cli.Infrastructure;
using Tessera.Controller;
using Tessera.Core;
using Tessera.Core.Protocol;
using Command = System.CommandLine.Command;

namespace Tessera.Cli.Commands;

/// <summary>
/// <c>tessera up</c>: the embedded default. A controller (data in DIR/controller) and one agent (host
/// <c>local</c>) in this process, a sparse file container DIR/containers/pool0.img, and one disk presented
/// read-write to <c>local</c>. Everything is set up through the admin API, exactly as an operator would, and
/// only when missing: a second run on the same DIR finds the same container, disk and data and creates nothing.
/// </summary>
public static class UpCommand
{
    public const string HostName = "local";
    public const string PoolName = "pool0";
    public const string DefaultDiskSize = "8GiB";
    public static readonly long MinPoolBytes = 16L << 30;

    public static Command Create()
    {
        var data = new Option<string>("--data") { Description = "Data directory", HelpName = "DIR", DefaultValueFactory = _ => "./tessera-data" };
        var nbdListen = new Option<string>("--nbd-listen") { Description = "host:port for NBD", HelpName = "HOST:PORT", DefaultValueFactory = _ => RoleCommands.DefaultNbdListen };
        var controllerListen = new Option<string>("--controller-listen") { Description = "host:port for the controller (agents and admin API)", HelpName = "HOST:PORT", DefaultValueFactory = _ => RoleCommands.DefaultControllerListen };
        var disk = new Option<string>("--disk") { Description = "Disk to create and present when absent", HelpName = "NAME", DefaultValueFactory = _ => "demo" };
        var size = Arguments.SizeOption("--size", "Size of that disk when it is created", DefaultDiskSize);
        var logLevel = Serving.LogLevelOption();
        var allocateAhead = RoleCommands.AllocateAheadOption();
        var command = new Command("up", "Run controller + agent (host 'local') + a file container in one process, with a disk ready over NBD")
        {
            data, nbdListen, controllerListen, disk, size, allocateAhead, logLevel,
        };
        CommandRunner.SetAction(command, async (r, ct) =>
        {
            var dataDir = Path.GetFullPath(r.GetValue(data)!);
            var nbdEndPoint = Arguments.ListenAddress("--nbd-listen", r.GetValue(nbdListen));
            var controllerEndPoint = Arguments.ListenAddress("--controller-listen", r.GetValue(controllerListen));
            var diskName = Arguments.Name("disk", r.GetValue(disk));
            var diskBytes = Arguments.PositiveSize("--size", Arguments.SizeValue(r, size, DefaultDiskSize));
            return await Run(dataDir, nbdEndPoint, controllerEndPoint, diskName, diskBytes, r.GetValue(logLevel), r.GetValue(allocateAhead));
        });
        return command;
    }

    private static async Task<int> Run(string dataDir, IPEndPoint nbdEndPoint, IPEndPoint controllerEndPoint, string diskName, long diskBytes,
        Microsoft.Extensions.Logging.LogLevel logLevel, int allocateAheadSegments)
    {
        var controllerDir = Path.Combine(dataDir, "controller");
        var containersDir = Path.Combine(dataDir, "containers");
        try
        {
            Directory.CreateDirectory(controllerDir);
            Directory.CreateDirectory(containersDir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException(ExitCodes.ServeFailed, $"cannot use data directory {dataDir}: {e.Message}");
        }

        using var shutdown = new ShutdownSignal();
        using var loggerFactory = Serving.CreateLoggerFactory(logLevel);
        var controller = await RoleCommands.StartController(controllerDir, controllerEndPoint, loggerFactory, shutdown.Token, allocateAheadSegments);
        if (controller is null) return ExitCodes.Ok;
        AgentHost? agent = null;
        try
        {
            try
            {
                await EnsureDisk(controller.Url, containersDir, diskName, diskBytes, shutdown.Token);
            }
            catch (RpcException e)
            {
                throw AdminConnection.Translate(e, controller.Url);
            }

            agent = await RoleCommands.StartAgent(controller.Url, HostName, nbdEndPoint, loggerFactory, shutdown.Token);
            if (agent is null) return ExitCodes.Ok;
            try
            {
                await agent.Registered.WaitAsync(RoleCommands.RegisterTimeout, shutdown.Token);
                // "serving" must mean the URI works: the disk's table reaches the agent just after registration.
                await agent.Core.WaitForVolumeAsync(diskName, shutdown.Token).WaitAsync(RoleCommands.RegisterTimeout, shutdown.Token);
            }
            catch (OperationCanceledException) when (shutdown.Token.IsCancellationRequested)
            {
                return ExitCodes.Ok;
            }
            catch (TimeoutException)
            {
                throw new CliException(ExitCodes.ServeFailed, $"the agent did not register with the controller and receive disk {diskName} within {RoleCommands.RegisterTimeout.TotalSeconds:0} s");
            }

            var nbd = agent.NbdEndPoint;
            var uriHost = nbd.Address.Equals(IPAddress.Any) ? "127.0.0.1" : nbd.Address.Equals(IPAddress.IPv6Any) ? "[::1]" : Arguments.Format(nbd).Split(':')[0];
            if (nbd.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 && !nbd.Address.Equals(IPAddress.IPv6Any)) uriHost = $"[{nbd.Address}]";
            Serving.Say($"controller {controller.Url} (data {controllerDir})");
            Serving.Say($"agent {HostName} NBD on {Arguments.Format(nbd)}");
            Serving.Say($"disk {diskName}: nbd://{uriHost}:{nbd.Port}/{diskName}");
            Serving.Say("serving; press Ctrl-C to stop");
            await shutdown.WaitAsync();
        }
        finally
        {
            if (agent is not null)
            {
                Serving.Say("stopping agent");
                await RoleCommands.StopQuietly("agent", agent.StopAsync, loggerFactory);
            }
            Serving.Say("stopping controller");
            await RoleCommands.StopQuietly("controller", controller.StopAsync, loggerFactory);
        }
        Serving.Say("stopped");
        return ExitCodes.Ok;
    }

    /// <summary>Creates the pool container, the disk and its presentation to <c>local</c>, each only when missing.</summary>
    private static async Task EnsureDisk(string controllerUrl, string containersDir, string diskName, long diskBytes, CancellationToken ct)
    {
        using var admin = new AdminConnection(controllerUrl);
        var containers = await admin.Client.ListContainersAsync(new ListContainersRequest(), admin.Call(ct));
        if (containers.Containers.Count == 0)
        {
            var poolPath = Path.Combine(containersDir, "pool0.img");
            var poolBytes = Math.Max(checked(2 * diskBytes), MinPoolBytes);
            var added = await admin.Client.AddContainerAsync(new AddContainerRequest
            {
                Name = PoolName,
                Uri = new Uri(poolPath).AbsoluteUri,
                SizeBytes = (ulong)poolBytes,
            }, admin.Call(ct));
            Serving.Say($"created container {added.Name} ({Format.Size(added.SizeBytes)} sparse) at {added.Uri}");
        }

        DiskView view;
        try
        {
            view = await admin.Client.GetDiskAsync(new DiskRef { Name = diskName }, admin.Call(ct));
            Serving.Say($"found disk {view.Name} ({Format.Size(view.SizeBytes)}, {Format.Size(view.AllocatedBytes)} allocated)");
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
        {
            view = await admin.Client.CreateDiskAsync(new CreateDiskRequest { Name = diskName, SizeBytes = (ulong)diskBytes }, admin.Call(ct));
            Serving.Say($"created disk {view.Name} ({ByteSize.Format(diskBytes)})");
        }

        if (!view.Presentations.Any(p => p.Host == HostName))
        {
            await admin.Client.PresentDiskAsync(new PresentRequest { Disk = diskName, Host = HostName, ReadOnly = false }, admin.Call(ct));
            Serving.Say($"presented disk {diskName} to host {HostName} (read-write)");
        }
    }
}
