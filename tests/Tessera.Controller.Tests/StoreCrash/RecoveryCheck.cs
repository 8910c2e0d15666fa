using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Controller.Store;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Tests.StoreCrash;

/// <summary>
/// Opens one crash image the way a restarted controller does (ControllerCore: epoch raise, snapshot rollback,
/// allocator rebuild, migration resume), checks the invariants, finishes any resumed job, and then proves the
/// store still works by allocating a segment and taking a snapshot on it.
/// </summary>
public static class RecoveryCheck
{
    public static readonly TimeSpan JobTimeout = TimeSpan.FromSeconds(30);

    /// <param name="expectedDump">The logical state the image must hold before recovery touches it.</param>
    /// <param name="liveJobStates">How each migration job ended in the live run (id to state); a resumed job may end
    /// "failed" only where it failed live too (a full pool is a fair end, and then every row must still be live).</param>
    public static async Task<List<string>> RunAsync(StoreImage image, string expectedDump, string scratch, Func<string, string> lineageOf,
        IReadOnlyDictionary<long, string>? liveJobStates = null)
    {
        var problems = new List<string>();
        string plain = image.PlainDump(Path.Combine(scratch, "plain"));
        if (plain != expectedDump)
            problems.Add("the image does not hold the state of a commit point: " + FirstDifference(expectedDump, plain));

        string dataDirectory = Path.Combine(scratch, "core");
        image.WriteTo(dataDirectory);
        ulong epochBefore = LogicalDump.EpochOf(plain);
        // No agent will register, and a restarted controller holds changes of presented disks for one lease while
        // their hosts may still run on old tables: a 1 ms lease (below what ControllerOptions.Validate allows a real
        // controller) makes that grace vanish without faking time, which the migration runner, started inside the
        // constructor, would race with.
        var options = new ControllerOptions { DataDirectory = dataDirectory, LeaseMs = 1 };
        ControllerCore core;
        try
        {
            core = new ControllerCore(options, NullLoggerFactory.Instance);
        }
        catch (Exception e)
        {
            problems.Add("the store does not open: " + e.Message);
            return problems;
        }
        try
        {
            var store = core.Store;
            if (store.Epoch <= epochBefore) problems.Add($"epoch {store.Epoch} is not above the crashed controller's {epochBefore}");
            problems.AddRange(StoreInvariants.Check(store, lineageOf, pool: null).Select(p => "after start: " + p));

            var resumed = store.ListMigrationJobs(unfinishedOnly: true);
            if (!await AllJobsFinishedAsync(core))
            {
                problems.Add($"migration jobs did not finish within {JobTimeout}: {string.Join("; ", store.ListMigrationJobs(true))}");
                return problems;
            }
            foreach (var job in resumed)
            {
                var now = store.GetMigrationJob(job.Id)!;
                bool failedLiveToo = liveJobStates is not null && liveJobStates.GetValueOrDefault(job.Id) == "failed";
                if (now.State != "done")
                {
                    if (!failedLiveToo) problems.Add($"resumed migration job {job.Id} ended {now.State}: {now.Message}");
                    continue;
                }
                long left = job.Kind == MigrationJobRow.KindDisk
                    ? (store.GetDisk(job.DiskId) is null ? 0 : store.RowsOfDiskNotOn(job.DiskId, job.TargetContainer).Count)
                    : store.RowsOnContainer(job.SourceContainer).Count;
                if (left > 0) problems.Add($"resumed migration job {job.Id} left {left} segments behind");
            }
            problems.AddRange(StoreInvariants.Check(store, lineageOf, core.Pool).Select(p => "with no job running: " + p));

            problems.AddRange(await FurtherOperationsAsync(core));
            problems.AddRange(StoreInvariants.Check(store, lineageOf, core.Pool).Select(p => "after new operations: " + p));
        }
        finally
        {
            core.Dispose();
        }
        return problems;
    }

    private static async Task<bool> AllJobsFinishedAsync(ControllerCore core)
    {
        using var timeout = new CancellationTokenSource(JobTimeout);
        while (true)
        {
            var changed = core.Migrations.Changed; // before the check, so no change is missed
            if (core.Store.ListMigrationJobs(unfinishedOnly: true).Count == 0) return true;
            try
            {
                await changed.WaitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                return false;
            }
        }
    }

    /// <summary>A thin allocation on an unmapped segment of some writable disk, then a snapshot of that disk.</summary>
    private static async Task<List<string>> FurtherOperationsAsync(ControllerCore core)
    {
        var problems = new List<string>();
        var store = core.Store;
        var writable = store.ListDisks().Where(d => store.GetSnapshot(d.Id) is null).ToList();
        if (writable.Count == 0) return problems;
        foreach (var disk in writable)
        {
            long segment = Enumerable.Range(0, (int)disk.SegmentCount).Select(s => (long)s).FirstOrDefault(s => store.GetEntry(disk.Id, s) == MapEntry.Zero, -1);
            if (segment < 0) continue;
            if (!core.Pool.TryAllocate(disk.UnitsPerSegment, out ushort container, out long first)) return problems; // full: nothing to prove
            store.SetEntries(disk.Id, [(segment, MapEntry.Mapped(container, first))]);
            if (store.GetEntry(disk.Id, segment).ContainerId != container) problems.Add($"a new allocation on {disk.Name} was not stored");
            var snapshotDisk = await core.Coordinator.CreateSnapshotAsync(disk.Id, "after-crash");
            if (store.GetSnapshot(snapshotDisk.Id) is not { Ready: true }) problems.Add($"a snapshot of {disk.Name} after the crash is not ready");
            return problems;
        }
        return problems;
    }

    private static string FirstDifference(string expected, string actual)
    {
        var e = expected.Split('\n');
        var a = actual.Split('\n');
        for (int i = 0; i < Math.Max(e.Length, a.Length); i++)
        {
            string el = i < e.Length ? e[i] : "<end>";
            string al = i < a.Length ? a[i] : "<end>";
            if (el != al) return $"line {i + 1}: expected '{el}', found '{al}'";
        }
        return "same";
    }
}
