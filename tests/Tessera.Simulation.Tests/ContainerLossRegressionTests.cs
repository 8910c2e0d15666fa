using Xunit;

namespace Tessera.Simulation.Tests;

public partial class SimulationTests
{
    // Seed 30000782 with 3000 steps: container c0 is lost while job 8 moves a segment of d2 off it. The move finished
    // its copy, the failure marked the segment's rows Error, and the relocation carried them to c1, where no live row
    // named the unit (bug 16: the pool kept it); and a TRIM of k5 released a segment of c0 while the marking waited for
    // k5's lock, then the marking pushed Error for it (bug 17: h0's final read of k5 failed on a Zero segment).
    // Seed 30003228: an allocation took a never-used unit of c2 while zeroing another segment, c2's probe failed, and
    // the allocation committed a live row on the failed container (bug 17). MigrationSourceFailedTests and
    // ContainerFailureRaceTests (controller tests) prove both fixes whatever these seeds do on later builds.
    [Theory]
    [InlineData(30000782)]
    [InlineData(30003228)]
    public async Task Regression_a_container_failing_during_a_move_or_an_allocation_leaves_no_live_row_and_no_leak(int seed)
    {
        await AssertSeedPassesAsync($"--seed {seed} --steps 3000");
    }
}
