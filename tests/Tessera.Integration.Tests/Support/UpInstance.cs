using System.Text.Json;

namespace Tessera.Integration.Tests.Support;

/// <summary>A running <c>tessera up</c> on free loopback ports with its data in a directory of its own.</summary>
public sealed class UpInstance : IAsyncDisposable
{
    private UpInstance(string dataDir, int nbdPort, int controllerPort, TesseraProcess process)
    {
        DataDir = dataDir;
        NbdPort = nbdPort;
        ControllerPort = controllerPort;
        Process = process;
    }

    public string DataDir { get; }
    public int NbdPort { get; }
    public int ControllerPort { get; }
    public TesseraProcess Process { get; }

    public string ControllerUrl => $"http://127.0.0.1:{ControllerPort}";

    public string NbdUri(string disk = "demo") => $"nbd://127.0.0.1:{NbdPort}/{disk}";

    /// <summary>Starts <c>tessera up</c> and returns once it prints its "serving" line.</summary>
    public static async Task<UpInstance> StartAsync(string dataDir, params string[] extraArgs)
    {
        var ports = Net.FreePorts(2);
        var process = TesseraProcess.Start(
        [
            "up", "--data", dataDir, "--nbd-listen", $"127.0.0.1:{ports[0]}", "--controller-listen", $"127.0.0.1:{ports[1]}", .. extraArgs,
        ]);
        var instance = new UpInstance(dataDir, ports[0], ports[1], process);
        try
        {
            await process.WaitForLineAsync(l => l.StartsWith("tessera: serving", StringComparison.Ordinal), TesseraProcess.StartTimeout, "serving");
        }
        catch
        {
            await instance.DisposeAsync();
            throw;
        }
        return instance;
    }

    /// <summary>Runs an admin command against this instance's controller.</summary>
    public Task<ProcessResult> CliAsync(params string[] args) => TesseraProcess.RunAsync([.. args, "--controller", ControllerUrl]);

    /// <summary>Runs an admin command with --json, requires success and parses the output.</summary>
    public async Task<JsonElement> JsonAsync(params string[] args)
    {
        var result = await CliAsync([.. args, "--json"]);
        Assert.True(result.ExitCode == 0, $"tessera {string.Join(' ', args)} --json failed: {result}");
        return JsonDocument.Parse(result.Stdout).RootElement.Clone();
    }

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}
