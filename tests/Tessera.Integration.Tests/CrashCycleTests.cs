using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

public sealed class CrashCycleTests
{
    private static async Task<ProcessResult> RunScript(int seed, params string[] args)
    {
        var root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../.."));
        var script = Path.Combine(root, "scripts", "crash-cycles.py");
        Assert.True(File.Exists(script), $"missing {script}");
        Environment.SetEnvironmentVariable("TESSERA_COMMAND", $"dotnet {TesseraProcess.Dll}");
        return await Tools.RunAsync("/usr/bin/python3", [script, "--seed", seed.ToString(), "--disk-mib", "16", .. args]);
    }

    [Fact]
    public async Task KillMinus9_WhileWriting_LosesNoAcknowledgedWrite()
    {
        // scripts/crash-cycles.py kills `tessera up` with SIGKILL mid-write three times, restarts it on the same data and
        // checks every block against the acknowledged/attempted generations of its model (no loss, no torn or misplaced block).
        var seed = Random.Shared.Next();
        var result = await RunScript(seed, "--cycles", "3");
        Assert.True(result.ExitCode == 0, $"crash cycles failed (seed {seed}): {result}");
        Assert.Contains("3 kill -9 cycles", result.Stdout);
        Assert.Contains("0 errors", result.Stdout);
    }

    [Fact]
    public async Task KillMinus9_AgentControllerOrBoth_DuringMigrationAndSnapshot_LosesNothing()
    {
        // Separate controller and agent processes; the three cycles kill the agent, the controller (the client must keep
        // writing through the agent meanwhile) and both, each just after a migration or evacuation and a snapshot were
        // started, with fio writing crc32c-verified blocks to a second disk. After each restart: every model block checks,
        // every job finishes "done", every snapshot that exists (and every one the CLI reported) reads back the model's
        // image at the snapshot point, and fio verifies every write it had acknowledged.
        var seed = Random.Shared.Next();
        var result = await RunScript(seed, "--mode", "split", "--round-robin", "--during", "migrate,snapshot", "--op-probability", "1",
            "--fio", "--fio-mib", "8", "--cycles", "3");
        Assert.True(result.ExitCode == 0, $"split crash cycles failed (seed {seed}): {result}");
        Assert.Contains("3 kill -9 cycles", result.Stdout);
        Assert.Contains("0 errors", result.Stdout);
        Assert.Contains("target_agent 1", result.Stdout);
        Assert.Contains("target_both 1", result.Stdout);
        Assert.Contains("target_controller 1", result.Stdout);
        Assert.Contains("during_migrate 3", result.Stdout);
        Assert.Contains("during_snapshot 3", result.Stdout);
        Assert.Contains("fio_runs 3", result.Stdout);
    }
}
