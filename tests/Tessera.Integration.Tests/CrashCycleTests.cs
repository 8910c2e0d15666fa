using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

public sealed class CrashCycleTests
{
    [Fact]
    public async Task KillMinus9_WhileWriting_LosesNoAcknowledgedWrite()
    {
        // scripts/crash-cycles.py kills `tessera up` with SIGKILL mid-write three times, restarts it on the same data and
        // checks every block against the acknowledged/attempted generations of its model (no loss, no torn or misplaced block).
        var root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../.."));
        var script = Path.Combine(root, "scripts", "crash-cycles.py");
        Assert.True(File.Exists(script), $"missing {script}");
        var seed = Random.Shared.Next();
        Environment.SetEnvironmentVariable("TESSERA_COMMAND", $"dotnet {TesseraProcess.Dll}");
        var result = await Tools.RunAsync("/usr/bin/python3", script, "--cycles", "3", "--seed", seed.ToString(), "--disk-mib", "16");
        Assert.True(result.ExitCode == 0, $"crash cycles failed (seed {seed}): {result}");
        Assert.Contains("3 kill -9 cycles", result.Stdout);
        Assert.Contains("0 errors", result.Stdout);
    }
}
