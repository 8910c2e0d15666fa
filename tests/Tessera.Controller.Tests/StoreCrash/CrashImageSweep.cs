namespace Tessera.Controller.Tests.StoreCrash;

/// <summary>Checks every captured image and torn variants of it; collects violations rather than stopping at the first.</summary>
public sealed class CrashImageSweep
{
    public List<string> Problems { get; } = new();
    public int IntactChecked { get; private set; }
    public int TornChecked { get; private set; }
    public int TornRecovered { get; private set; }
    public int JobsResumed { get; private set; }

    /// <summary>Torn images whose expected state differs from the intact image's: these prove the cut transaction was really undone.</summary>
    public int TornDiffering { get; private set; }

    public static async Task<CrashImageSweep> RunAsync(IReadOnlyList<StoreImage> images, string scratch, Func<string, string> lineageOf, Random random)
    {
        var sweep = new CrashImageSweep();
        for (int k = 0; k < images.Count; k++)
        {
            var image = images[k];
            string where = $"image {k} ({image.Label})";
            if (image.Dump.Contains("\n## migration_jobs\n", StringComparison.Ordinal) && HasRunningJob(image.Dump)) sweep.JobsResumed++;
            foreach (var p in await RecoveryCheck.RunAsync(image, image.Dump, Path.Combine(scratch, "intact"), lineageOf))
                sweep.Problems.Add($"{where}: {p}");
            sweep.IntactChecked++;

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
                    foreach (var p in await RecoveryCheck.RunAsync(torn, expected, Path.Combine(scratch, "torn"), lineageOf))
                        sweep.Problems.Add($"{tornWhere}: {p}");
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
