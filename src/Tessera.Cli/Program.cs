using System.CommandLine;
using Tessera.Cli.Commands;
using Tessera.Cli.Infrastructure;

// Wiring only: each verb group lives in Commands/, shared behaviour in Infrastructure/.
var root = new RootCommand("Tessera: virtual disks over a pool of storage containers, served to hosts over NBD")
{
    UpCommand.Create(),
    RoleCommands.Controller(),
    RoleCommands.Agent(),
    ContainerCommands.Create(),
    DiskCommands.Create(),
    SnapshotCommands.Create(),
    HostCommands.Create(),
    StatusCommand.Create(),
    StoreCommand.Create(),
};
OperationsCommands.AddTo(root); // disk migrate/locations, container evacuate/remove/fail/repair

var parseResult = root.Parse(args);
if (parseResult.Errors.Count > 0)
{
    var command = parseResult.CommandResult.Command;
    var path = command == root ? "tessera" : $"tessera {string.Join(' ', ParentPath(command))}";
    // "Required command was not provided" also accompanies an unknown verb; the unknown verb is the more useful line.
    var error = parseResult.Errors.FirstOrDefault(e => e.Message.StartsWith("Unrecognized", StringComparison.Ordinal)) ?? parseResult.Errors[0];
    return CommandRunner.Fail(ExitCodes.Usage, $"{error.Message} (see '{path} --help')");
}

return await parseResult.InvokeAsync(new InvocationConfiguration
{
    EnableDefaultExceptionHandler = false,
    ProcessTerminationTimeout = null, // the serving roles handle SIGINT/SIGTERM themselves, to stop in order
});

static IEnumerable<string> ParentPath(Command command)
{
    var names = new List<string>();
    for (var c = command; c is not null && c is not RootCommand; c = c.Parents.OfType<Command>().FirstOrDefault())
        names.Insert(0, c.Name);
    return names;
}
