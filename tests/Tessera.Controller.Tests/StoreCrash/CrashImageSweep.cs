namespace Tessera.Controller.Tests.StoreCrash;

/// <summary>Checks every captured image and torn variants of it; collects violations rather than stopping at the first.</summary>
public sealed class CrashImageSweep
{
    public List<string> Problems { get; } = new();
    public int IntactChecked { get; private set; }
    public int TornChecked { get; private set; }
    public int TornRecovered { get; private set; }
    public int JobsResumed { get; private set; }

    /// <summary>Images with every trailing unsynced (synchronous=NORMAL) commit lost, as a power loss may leave them.</summary>
    public int PowerLossChecked { get; private set; }

    /// <summary>The most unsynced commits one power-loss image lost.</summary>
    public int MostCommitsLost { get; private set; }

    /// <summary>Torn images whose expected state differs from the intact image's: these prove the cut transaction was really undone.</summary>
    public int TornDiffering { get; private set; }

    public static async Task<CrashImageSweep> RunAsync(IReadOnlyList<StoreImage> images, string scratch, Func<string, string> lineageOf, Random random)
    {
        var sweep = new CrashImageSweep();
        var liveJobStates = JobStates(images[^1].Dump);
        for (int k = 0; k < images.Count; k++)
        {
            var image = images[k];
            string where = $"image {k} ({image.Label})";
            if (image.Dump.Contains("\n## migration_jobs\n", StringComparison.Ordinal) && HasRunningJob(image.Dump)) sweep.JobsResumed++;
            var problems = await RecoveryCheck.RunAsync(image, image.Dump, Path.Combine(scratch, "intact"), lineageOf, liveJobStates);
            foreach (var p in problems) sweep.Problems.Add($"{where}: {p}");
            if (problems.Count > 0) sweep.Problems.Add($"{where}: kept in {Keep(image, image.Dump)}");
            sweep.IntactChecked++;

            await PowerLossAsync(sweep, images, k, scratch, lineageOf, liveJobStates);

            if (image.Backfilled || WalTail.Of(image.Wal) is not { } tail) continue; // checkpointed frames were synced: they cannot tear
            // The state without the log's last transaction: the latest earlier image whose log did not end with it yet.
            int before = k - 1;
            while (before >= 0 && WalTail.Of(images[before].Wal)?.Key == tail.Key) before--;
            if (before < 0) continue;
            string expected = images[before].Dump;

            var variants = TornVariants(image.Wal, tail, random).ToList();
            int full = random.Next(variants.Count); // one variant per image goes through the whole controller start
            for (int v = 0; v < variants.Count; v++)
            {
                var (name, wal) = variants[v];
                var torn = image with { Wal = wal, Label = image.Label + ", " + name };
                string tornWhere = $"{where}, {name}";
                if (v == full)
                {
                    var found = await RecoveryCheck.RunAsync(torn, expected, Path.Combine(scratch, "torn"), lineageOf, liveJobStates);
                    foreach (var p in found) sweep.Problems.Add($"{tornWhere}: {p}");
                    if (found.Count > 0) sweep.Problems.Add($"{tornWhere}: kept in {Keep(torn, expected)}");
                    sweep.TornRecovered++;
                }
                else
                {
                    string dump = torn.PlainDump(Path.Combine(scratch, "torn-plain"));
                    if (dump != expected) sweep.Problems.Add($"{tornWhere}: the torn log does not read as the commit before (atomicity)");
                }
                sweep.TornChecked++;
                if (expected != image.Dump) sweep.TornDiffering++;
            }
        }
        return sweep;
    }

    /// <summary>
    /// A power loss keeps the log up to its last synced commit: every relaxed commit after it may vanish. The image
    /// is cut back to the end of the earliest state those relaxed commits started from, which must read as that
    /// state and recover like any other (the store's claim in ExecOrdered).
    /// </summary>
    private static async Task PowerLossAsync(CrashImageSweep sweep, IReadOnlyList<StoreImage> images, int k, string scratch, Func<string, string> lineageOf,
        IReadOnlyDictionary<long, string> liveJobStates)
    {
        var image = images[k];
        if (WalTail.Of(image.Wal) is not { } tail) return;
        int oldest = -1;
        for (int j = k - 1; j >= 0 && images[j].NextCommitRelaxed && !images[j + 1].Backfilled; j--)
            if (WalTail.Of(images[j].Wal) is { } t && t.Salt1 == tail.Salt1 && t.Salt2 == tail.Salt2) oldest = j;
            else break;
        if (oldest < 0) return;
        var earlier = WalTail.Of(images[oldest].Wal)!.Value;
        if (earlier.Key == tail.Key) return; // the relaxed commits wrote nothing: nothing to lose
        var cut = image with { Wal = image.Wal[..(int)earlier.TransactionEnd], Label = $"{image.Label}, power loss back to image {oldest}" };
        var found = await RecoveryCheck.RunAsync(cut, images[oldest].Dump, Path.Combine(scratch, "power"), lineageOf, liveJobStates);
        foreach (var p in found) sweep.Problems.Add($"image {k} ({cut.Label}): {p}");
        if (found.Count > 0) sweep.Problems.Add($"image {k} ({cut.Label}): kept in {Keep(cut, images[oldest].Dump)}");
        sweep.PowerLossChecked++;
        sweep.MostCommitsLost = Math.Max(sweep.MostCommitsLost, k - oldest);
    }

    /// <summary>Saves a failing image (database, log, expected dump) where the test's temporary files do not get deleted.</summary>
    public static string Keep(StoreImage image, string expectedDump)
    {
        string directory = Path.Combine(Path.GetTempPath(), "tessera-storecrash-failures", $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-image{image.Index}-{Guid.NewGuid():N}"[..40]);
        image.WriteTo(directory);
        File.WriteAllText(Path.Combine(directory, "expected.dump"), expectedDump);
        File.WriteAllText(Path.Combine(directory, "label.txt"), image.Label);
        return directory;
    }

    /// <summary>Job id to state ("running", "done", "failed") from a dump's migration_jobs rows (id first, state sixth).</summary>
    private static Dictionary<long, string> JobStates(string dump)
    {
        var states = new Dictionary<long, string>();
        bool inJobs = false;
        foreach (var line in dump.Split('\n'))
        {
            if (line.StartsWith("## ", StringComparison.Ordinal)) inJobs = line == "## migration_jobs";
            else if (inJobs && line.Split('|') is { Length: > 5 } cells) states[long.Parse(cells[0], System.Globalization.CultureInfo.InvariantCulture)] = cells[5];
        }
        return states;
    }

    private static bool HasRunningJob(string dump)
    {
        bool inJobs = false;
        foreach (var line in dump.Split('\n'))
        {
            if (line.StartsWith("## ", StringComparison.Ordinal)) inJobs = line == "## migration_jobs";
            else if (inJobs && line.Split('|') is { Length: > 5 } cells && cells[5] == "running") return true;
        }
        return false;
    }

    /// <summary>
    /// The last transaction's frames cut at its first byte, inside it, one byte short of its end; its commit frame
    /// with a 512-byte sector of garbage; and its first frame with one flipped byte. Each must read as if the
    /// transaction never committed.
    /// </summary>
    public static IEnumerable<(string Name, byte[] Wal)> TornVariants(byte[] wal, WalTail tail, Random random)
    {
        yield return ("log cut at the transaction's start", wal[..(int)tail.TransactionStart]);
        long inside = tail.TransactionStart + 1 + random.NextInt64(tail.TransactionEnd - tail.TransactionStart - 1);
        yield return ($"log cut at byte {inside}", wal[..(int)inside]);
        yield return ("log one byte short", wal[..(int)(tail.TransactionEnd - 1)]);

        var sector = (byte[])wal.Clone();
        long commitFrame = tail.TransactionEnd - tail.FrameBytes;
        long sectorAt = commitFrame + 512L * random.Next(tail.FrameBytes / 512);
        random.NextBytes(sector.AsSpan((int)sectorAt, (int)Math.Min(512, tail.TransactionEnd - sectorAt)));
        yield return ($"torn sector at byte {sectorAt}", sector);

        var flipped = (byte[])wal.Clone();
        long flipAt = tail.TransactionStart + random.NextInt64(tail.FrameBytes);
        flipped[flipAt] ^= (byte)(1 << random.Next(8));
        yield return ($"bit flipped at byte {flipAt}", flipped);
    }
}
