using System.Diagnostics;
using System.Globalization;
using Tessera.Controller.Tests.StoreCrash;
using Xunit;
using Xunit.Abstractions;

namespace Tessera.Controller.Tests;

/// <summary>
/// The controller's store survives a crash at every commit point: a seeded workload runs through the real
/// controller while every commit is captured (the files as a crash right before the next write would leave them),
/// plus torn variants of each (the last transaction's WAL frames cut short or garbled, as a torn write leaves them).
/// Each image is reopened by a real ControllerCore start and checked: it holds exactly the last commit (or, torn,
/// the one before), epoch raised, no half-created snapshot, no location shared outside a lineage, allocator equal
/// to the segment map, every resumed migration finished, and the store takes new allocations and snapshots.
///
/// TESSERA_STORECRASH_SEED and TESSERA_STORECRASH_STEPS make a longer or different run (scripts/storecrash.sh).
/// </summary>
public sealed class StoreCrashTests(ITestOutputHelper output)
{
    private const int DefaultSeed = 6006;
    private const int DefaultSteps = 40;

    private static int FromEnvironment(string name, int fallback) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : fallback;

    [Fact]
    public async Task Store_survives_a_crash_at_every_commit_point()
    {
        int seed = FromEnvironment("TESSERA_STORECRASH_SEED", DefaultSeed);
        int steps = FromEnvironment("TESSERA_STORECRASH_STEPS", DefaultSteps);
        var clock = Stopwatch.StartNew();
        await using var cluster = await TestCluster.StartAsync();
        IReadOnlyList<StoreImage> images;
        CrashWorkload workload;
        using (var recorder = new CommitImageRecorder(cluster.Host.Core.Store))
        {
            workload = CrashWorkload.Create(cluster, seed);
            await workload.SetUpAsync();
            await workload.RunAsync(steps, recorder.Checkpoint);
            await workload.DisposeAsync();
            recorder.CaptureFinal();
            recorder.ThrowIfFailed();
            images = recorder.Images;
        }
        var workloadTime = clock.Elapsed;
        output.WriteLine($"seed {seed}, {steps} steps: {string.Join(", ", workload.Done.Select(kv => $"{kv.Key} {kv.Value}"))}");

        var sweep = await CrashImageSweep.RunAsync(images, Path.Combine(cluster.Directory, "images"), workload.LineageOf, new Random(seed));
        output.WriteLine($"{images.Count} commit images ({sweep.IntactChecked} intact, {sweep.TornChecked} torn, {sweep.TornRecovered} torn reopened by ControllerCore, {sweep.TornDiffering} torn ones differing from their intact image), " +
            $"{sweep.PowerLossChecked} power-loss images losing up to {sweep.MostCommitsLost} unsynced commits, {sweep.JobsResumed} migration jobs resumed; workload {workloadTime.TotalSeconds:F1} s, total {clock.Elapsed.TotalSeconds:F1} s");
        foreach (var p in sweep.Problems.Take(30)) output.WriteLine(p);

        Assert.True(sweep.Problems.Count == 0, $"seed {seed}: {sweep.Problems.Count} violations, first: {sweep.Problems.FirstOrDefault()}");
        // The workload must have reached the commits it exists to test, or the sweep proves little.
        foreach (var kind in new[] { "write fault", "zero fault", "snapshot", "clone", "migrate", "present", "unpresent", "checkpoint" })
            Assert.True(workload.Done.GetValueOrDefault(kind) > 0, $"seed {seed}: the workload never did '{kind}'");
        Assert.True(sweep.JobsResumed > 0, "no image caught a migration job in flight");
        Assert.True(sweep.PowerLossChecked > 0, "no image lost an unsynced commit");
        Assert.True(sweep.TornDiffering * 2 >= sweep.TornChecked, $"only {sweep.TornDiffering} of {sweep.TornChecked} torn images lost a logical change");
        Assert.True(sweep.TornChecked >= images.Count, $"only {sweep.TornChecked} torn images for {images.Count} commits");
    }
}
