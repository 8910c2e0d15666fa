using System.Diagnostics;
using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace Tessera.Simulation.Tests;

/// <summary>
/// The deterministic simulation in CI: a fixed smoke set of seeds, bit-for-bit replay, and proof that the checker
/// catches planted bugs. Each run is a child process because the simulator must start with one processor and a
/// one-worker thread pool (see PoolDriver).
/// </summary>
public partial class SimulationTests(ITestOutputHelper output)
{
    private static readonly TimeSpan RunTimeout = TimeSpan.FromMinutes(8);

    // Under a minute on an idle core; a few on a heavily loaded 2-core machine.
    private const string SmokeSeeds = "1..20";
    private const int SmokeSeedCount = 20;
    private const string ExtendedSmokeSeeds = "1..30";
    private const int ExtendedSmokeSeedCount = 30;

    [GeneratedRegex(@"^seed (\d+): .* trace=([0-9a-f]{16})$", RegexOptions.Multiline)]
    private static partial Regex TraceLine();

    [Fact]
    public async Task Smoke_seeds_hold_every_invariant()
    {
        var (exit, stdout) = await RunAsync($"--seeds {SmokeSeeds} --steps 1500 --classic");
        Assert.Contains($"summary: seeds={SmokeSeedCount} failed=0", stdout);
        Assert.Equal(0, exit);
        // The run must have exercised the faults it claims to: every kind was injected somewhere in the set.
        foreach (var kind in new[] { "agent_crash", "controller_crash", "partition", "silent_partition", "power_loss", "message_dropped" })
            Assert.Matches($"faults: .*{kind}", stdout);
    }

    // The events added later (migration, evacuation, resize, presentation changes, deletion, container loss,
    // controller-side container errors), with their checks: unpresented volumes refuse I/O, reads past the end fail,
    // lost segments answer EIO and nothing else, the allocator equals the map, every job ends.
    [Fact]
    public async Task Smoke_seeds_with_the_extended_events_hold_every_invariant()
    {
        var (exit, stdout) = await RunAsync($"--seeds {ExtendedSmokeSeeds} --steps 1500");
        Assert.Contains($"summary: seeds={ExtendedSmokeSeedCount} failed=0", stdout);
        Assert.Equal(0, exit);
        foreach (var kind in new[] { "container_loss", "controller_container_io_error" })
            Assert.Matches($"faults: .*{kind}", stdout);
        foreach (var probe in new[] { "sim.io_on_unpresented_refused", "sim.read_past_end_refused", "sim.cow_during_migration", "sim.migration_jobs_resumed_after_controller_start", "sim.lease_expired_during_blocking_command" })
            Assert.Matches($"probes: .*{probe}=[1-9]", stdout);
        foreach (var outcome in new[] { "Job:disk:done", "Job:evacuate:done", "Resize:Ok", "Unpresent:Ok", "Represent:Ok", "DeleteSnapshot:Ok", "DeleteClone:Ok" })
            Assert.Matches($"outcomes: .*{outcome}=[1-9]", stdout);
    }

    [Fact]
    public async Task Regression_no_stale_zeros_while_a_thin_allocation_is_answered()
    {
        // Seed 2 with 3000 steps read zeros on the faulting host after another host's write to the newly
        // allocated segment was acknowledged (fixed in DiskCoordinator.AllocateAsync: push Invalid to every holder).
        await AssertSeedPassesAsync("--seed 2 --steps 3000 --classic");
    }

    [Fact]
    public async Task Regression_a_zeroing_whose_requester_crashed_may_still_land()
    {
        // Seed 3000517 with 3000 steps: h3 crashed during a WRITE_ZEROES of whole segments; the controller had
        // committed Zero and was waiting out a partitioned holder's lease, which meanwhile wrote (acknowledged) to the
        // old place. Legal (the zeroing was still pending), but the model ended the op at the crash and flagged zeros.
        // Since the sim runs the real ControllerConnection the seed no longer reaches that interleaving (it passes with
        // the model's rule taken out too); kept as a fault-heavy smoke seed (docs/reliability.md).
        await AssertSeedPassesAsync("--seed 3000517 --steps 3000 --classic");
    }

    [Theory]
    [InlineData(4001285)]
    [InlineData(4002950)]
    public async Task Regression_no_holder_acts_on_a_released_segment_before_every_holder_dropped_the_old_place(int seed)
    {
        // A whole-segment WRITE_ZEROES pushed Zero: the requester, having applied it, answered a second WRITE_ZEROES
        // from its own table while a stalled holder still read and wrote the old place. The release now pushes
        // Invalid. Both seeds reported a violation with the Zero push on the build that found them; since the sim runs
        // the real ControllerConnection they no longer reach it (AgentChannelTests still prove the fix).
        await AssertSeedPassesAsync($"--seed {seed} --steps 3000 --classic");
    }

    [Fact]
    public async Task Regression_a_snapshot_whose_caller_saw_a_crash_is_judged_by_the_store()
    {
        // Seed 5000292 with 3000 steps: d0@s6 completed while a power loss was taking the controller down, so its
        // caller could not look it up and the model never learned it exists; the sharing check then flagged its
        // (legitimately shared) units. The model now resolves every call cut off by a crash from the store after the
        // next start (adopted if the store has it, else it never happened). Since a stopping controller takes no disk
        // lock (bug 11), a snapshot can no longer complete during the crash, so adoption has become rare; seed
        // 10000270 cuts off calls that the store then rolled back, and must pass with the probe showing that it did.
        var stdout = await AssertSeedPassesAsync("--seed 10000270 --steps 3000");
        Assert.Matches("sim.ambiguous_admin_ops_rolled_back=[1-9]", stdout);
    }

    [Fact]
    public async Task Regression_a_lapsed_agent_installs_no_fault_answer_and_does_no_io_until_its_lease_is_renewed()
    {
        // Seed 40000643 (run on 0a2b85e): h2's stream was silent for 11 s; then a HeartbeatAck for a heartbeat sent
        // before the silence ended the agent's lapse, fault answers were installed and h2 wrote through them after the
        // controller had dropped the session as lapsed. LeaseEnforcementTests (agent tests) prove the fix for good.
        await AssertSeedPassesAsync("--seed 40000643 --steps 3000");
    }

    [Fact]
    public async Task Regression_a_fua_vouches_only_for_writes_that_ended_before_its_flush_began()
    {
        // Seed 110002714 (session 5's merged build): the checker took a FUA's flush to cover every write that ended
        // before the FUA was acknowledged, including a full-segment write that ended while the flush was already past
        // its container; after a power loss it then refused the concurrent write the sector legitimately held. The
        // harness now passes the sequence number at which the flush began (ModelFlushTests has the rule itself).
        await AssertSeedPassesAsync("--seed 110002714 --steps 3000");
    }

    [Fact]
    public async Task Regression_a_table_unpresented_while_its_host_was_disconnected_is_dropped_at_reregistration()
    {
        // Seed 6000128 (extended events): d0 was unpresented from h0 while h0's stream was partitioned; the
        // controller waited out the old session's lease, but h0's process re-registered meanwhile (renewing its lease)
        // and was sent no CreateTable for d0, so it kept the old table and kept writing: a write after the unpresent
        // answered Ok and landed. The agent now invalidates every table at registration and drops those the new
        // session does not re-create before its first HeartbeatAck. Found on the simops branch; after later changes the seed
        // may replay differently, so ReregistrationTableTests (agent tests) prove the fix.
        await AssertSeedPassesAsync("--seed 6000128 --steps 3000");
    }

    [Fact]
    public async Task Regression_no_write_is_acknowledged_after_a_restart_while_an_unregistered_host_may_read_stale_zeros()
    {
        // Seed 6100046 (extended events): the previous controller persisted an allocation of d1 segment 11 and crashed
        // while waiting out partitioned h0; the new controller answered h1's resent write fault from the store at once,
        // h1's write was acknowledged, and h0 (not registered yet, lease still valid) read zeros from its old table.
        // Fault answers now wait out the first lease while a presented host has not registered. Found on the simops
        // branch; after later changes the seed may replay differently, so FirstLeaseWriteGraceTests prove the fix.
        await AssertSeedPassesAsync("--seed 6100046 --steps 3000");
    }

    [Fact]
    public async Task Regression_a_restarted_controller_holds_back_the_space_of_an_unfinished_release()
    {
        // Seed 7000199 with 3000 steps: a controller crashed while releasing a segment of d0 whose holder h0 was
        // partitioned; its successor rebuilt free space from the map and gave the unit to d1 within its first lease,
        // and h0, still under the old lease, read d1's data. Unfinished releases are now held back for a lease.
        // ReleaseAcrossRestartTests (controller tests) prove the fix whatever this seed does on later builds.
        await AssertSeedPassesAsync("--seed 7000199 --steps 3000");
    }

    [Fact]
    public async Task Regression_a_migrated_segment_is_written_in_its_new_place_only_after_every_holder_left_the_old_one()
    {
        // Seed 40003509 with 3000 steps (195 ops, a few seconds): migrating d1, the controller pushed segment 0's new,
        // writable entry to h0 and h1 at once; h1's stream was silent, so h0 zeroed sectors 111..115 in the new place
        // (acknowledged) while h1 still read the old bytes there. The new place now goes out with NoWrite first, and
        // writes are allowed only once every holder answered. On this simulator the seed still reports that violation
        // with the fix taken out; MigrationPushOrderTests (controller tests) prove it whatever later builds do.
        await AssertSeedPassesAsync("--seed 40003509 --steps 3000");
    }

    /// <summary>Runs the simulator with these arguments; it must report one seed and no violation. Returns its output.</summary>
    private async Task<string> AssertSeedPassesAsync(string arguments)
    {
        var (exit, stdout) = await RunAsync(arguments);
        Assert.Contains("summary: seeds=1 failed=0", stdout);
        Assert.Equal(0, exit);
        return stdout;
    }

    [Fact]
    public async Task A_seed_replays_bit_for_bit()
    {
        var first = await RunAsync("--seed 11 --steps 1500");
        var second = await RunAsync("--seed 11 --steps 1500");
        var other = await RunAsync("--seed 12 --steps 1500");
        string hash1 = TraceLine().Match(first.Stdout).Groups[2].Value;
        string hash2 = TraceLine().Match(second.Stdout).Groups[2].Value;
        string hash3 = TraceLine().Match(other.Stdout).Groups[2].Value;
        Assert.NotEqual("", hash1);
        Assert.Equal(hash1, hash2);
        Assert.NotEqual(hash1, hash3);
    }

    [Fact]
    public async Task The_checker_catches_a_container_that_loses_acknowledged_writes()
    {
        var (exit, stdout) = await RunAsync("--seeds 1..3 --steps 1500 --plant-bug lose-write");
        Assert.Equal(1, exit);
        Assert.Contains("VIOLATION [read]", stdout);
        Assert.Contains("replay: DOTNET_PROCESSOR_COUNT=1", stdout); // a failure says how to replay it
    }

    [Fact]
    public async Task The_checker_catches_a_container_that_ignores_flush()
    {
        var (exit, stdout) = await RunAsync("--seeds 1..6 --steps 1500 --plant-bug ignore-flush");
        Assert.Equal(1, exit);
        Assert.Contains("VIOLATION [read]", stdout);
    }

    private async Task<(int Exit, string Stdout)> RunAsync(string arguments)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "Tessera.Simulation.dll");
        var start = new ProcessStartInfo("dotnet", $"\"{dll}\" {arguments}")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.Environment["DOTNET_PROCESSOR_COUNT"] = "1";
        start.Environment.Remove("TESSERA_SIM_DISABLE");
        start.Environment.Remove("TESSERA_SIM_PLANT_BUG");
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(RunTimeout);
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"simulator {arguments} did not finish within {RunTimeout}");
        }
        string text = await stdout;
        output.WriteLine($"$ Tessera.Simulation {arguments} -> exit {process.ExitCode}");
        output.WriteLine(text);
        output.WriteLine(await stderr);
        return (process.ExitCode, text);
    }
}
