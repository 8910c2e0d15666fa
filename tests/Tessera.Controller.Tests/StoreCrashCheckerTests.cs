using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Controller.Store;
using Tessera.Controller.Tests.StoreCrash;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>
/// The crash-point checker can fail: images corrupted on purpose (a location mapped by two unrelated disks, a row
/// outside its container, a snapshot left half-created, an allocator out of step with the map, a state that is no
/// commit point) must each be reported. Without this, a sweep with zero violations would prove nothing.
/// </summary>
public sealed class StoreCrashCheckerTests
{
    private sealed record Fixture(TestCluster Cluster, StoreImage Final, StoreImage Earlier, Func<string, string> LineageOf) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => Cluster.DisposeAsync();
    }

    /// <summary>Two disks of different lineages (d1: 1 MiB segments, d2: 256 KiB), each with one written segment.</summary>
    private static async Task<Fixture> SetUpAsync()
    {
        var cluster = await TestCluster.StartAsync();
        using var recorder = new CommitImageRecorder(cluster.Host.Core.Store);
        await using var workload = CrashWorkload.Create(cluster, seed: 1);
        await workload.SetUpAsync();
        recorder.CaptureFinal();
        recorder.ThrowIfFailed();
        var images = recorder.Images;
        return new Fixture(cluster, images[^1], images[images.Count / 2], workload.LineageOf);
    }

    /// <summary>The final image with <paramref name="sql"/> applied through a plain connection.</summary>
    private static (StoreImage Image, string Dump) Corrupt(Fixture f, string name, string sql)
    {
        string directory = Path.Combine(f.Cluster.Directory, "corrupt-" + name);
        f.Final.WriteTo(directory);
        string path = Path.Combine(directory, StoreImage.DatabaseFileName);
        using (var db = LogicalDump.OpenPlain(path))
        using (var cmd = db.CreateCommand())
        {
            cmd.CommandText = sql;
            cmd.ExecuteNonQuery();
        } // closing the last connection checkpoints the log into the database file
        var bytes = File.ReadAllBytes(path);
        var image = f.Final with { Database = bytes, Wal = [], Label = name };
        return (image, image.PlainDump(Path.Combine(directory, "plain")));
    }

    private static async Task<List<string>> CheckAsync(Fixture f, StoreImage image, string expected, string name) =>
        await RecoveryCheck.RunAsync(image, expected, Path.Combine(f.Cluster.Directory, "check-" + name), f.LineageOf);

    [Fact]
    public async Task Unrelated_disks_sharing_a_location_are_reported()
    {
        await using var f = await SetUpAsync();
        Assert.Empty(await CheckAsync(f, f.Final, f.Final.Dump, "clean")); // the uncorrupted image passes
        var (image, dump) = Corrupt(f, "double-map", """
            INSERT INTO segments(disk_id, segment, container_id, physical_index, states)
            SELECT (SELECT id FROM disks WHERE name='d2'), 3, container_id, physical_index, 0
            FROM segments WHERE disk_id=(SELECT id FROM disks WHERE name='d1') AND segment=0
            """);
        var problems = await CheckAsync(f, image, dump, "double-map");
        Assert.Contains(problems, p => p.Contains("named by unrelated disks d1, d2", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_partly_overlapping_location_is_reported() =>
        await AssertReportedAndRefusedAsync("overlap", """
            INSERT INTO segments(disk_id, segment, container_id, physical_index, states)
            SELECT (SELECT id FROM disks WHERE name='d2'), 2, container_id, physical_index + 4, 0
            FROM segments WHERE disk_id=(SELECT id FROM disks WHERE name='d1') AND segment=0;
            """, "overlap the location at");

    [Fact]
    public async Task A_location_outside_its_container_is_reported() =>
        await AssertReportedAndRefusedAsync("outside",
            "INSERT INTO segments(disk_id, segment, container_id, physical_index, states) SELECT id, 5, 1, 1000000, 0 FROM disks WHERE name='d1'",
            "outside container");

    /// <summary>
    /// The invariant check names the corruption, and the controller itself refuses such a store (its allocator
    /// rebuild fails), which the sweep reports too.
    /// </summary>
    private static async Task AssertReportedAndRefusedAsync(string name, string corruptingSql, string expectedProblem)
    {
        await using var f = await SetUpAsync();
        var (image, dump) = Corrupt(f, name, corruptingSql);
        string directory = Path.Combine(f.Cluster.Directory, name + "-open");
        image.WriteTo(directory);
        using (var store = ControllerStore.Open(directory))
            Assert.Contains(StoreInvariants.Check(store, f.LineageOf, pool: null), p => p.Contains(expectedProblem, StringComparison.Ordinal));
        Assert.Contains(await CheckAsync(f, image, dump, name), p => p.Contains("the store does not open", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_state_that_is_no_commit_point_is_reported()
    {
        await using var f = await SetUpAsync();
        Assert.NotEqual(f.Earlier.Dump, f.Final.Dump);
        var problems = await CheckAsync(f, f.Final, f.Earlier.Dump, "atomicity");
        Assert.Contains(problems, p => p.Contains("does not hold the state of a commit point", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_half_created_snapshot_and_an_allocator_out_of_step_are_reported()
    {
        await using var f = await SetUpAsync();
        var (image, _) = Corrupt(f, "half-snapshot", """
            INSERT INTO disks(name, size_bytes, segment_size_bytes, created_at) SELECT 'd1@half', size_bytes, segment_size_bytes, created_at FROM disks WHERE name='d1';
            INSERT INTO snapshots(disk_id, parent_disk_id, name, ready) SELECT (SELECT id FROM disks WHERE name='d1@half'), id, 'half', 0 FROM disks WHERE name='d1';
            """);
        string directory = Path.Combine(f.Cluster.Directory, "half-open");
        image.WriteTo(directory);
        using (var store = ControllerStore.Open(directory)) // the store alone does not roll back: the checker must see it
            Assert.Contains(StoreInvariants.Check(store, f.LineageOf, pool: null), p => p.Contains("half-created snapshot d1@half", StringComparison.Ordinal));

        string coreDirectory = Path.Combine(f.Cluster.Directory, "pool-open");
        f.Final.WriteTo(coreDirectory);
        using var core = new ControllerCore(new ControllerOptions { DataDirectory = coreDirectory }, NullLoggerFactory.Instance);
        Assert.Empty(StoreInvariants.Check(core.Store, f.LineageOf, core.Pool));
        var rows = core.Store.AllSegments().Where(r => r.Entry.ContainerId != 0).ToList();
        var mapped = rows[0].Entry;
        core.Pool.Free(mapped.ContainerId, mapped.PhysicalIndex, 1);
        // A unit no row names: the last unit of a container, past every row on it (segments are at most 16 units here).
        var container = core.Store.ListContainers()[0];
        long lastUnit = container.SizeBytes / Tessera.Core.Mapping.MapEntry.PhysicalUnitBytes - 1;
        Assert.DoesNotContain(rows, r => r.Entry.ContainerId == container.Id && r.Entry.PhysicalIndex + 16 > lastUnit);
        core.Pool.MarkUsed(container.Id, lastUnit, 1);
        var problems = StoreInvariants.Check(core.Store, f.LineageOf, core.Pool);
        Assert.Contains(problems, p => p.Contains("named but free", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("used but unnamed", StringComparison.Ordinal) && !p.Contains(" 0 units used but unnamed", StringComparison.Ordinal));
    }
}
