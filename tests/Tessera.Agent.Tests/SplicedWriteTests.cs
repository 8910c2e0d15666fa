using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>
/// Writes spliced from the socket into the containers' files (DiskVolume.SplicedWrites.cs): the plan points at the
/// places the table maps for writing, the disk's in-flight gate stays held until the plan ends, segments that need a
/// fault (thin, never written) are neither offered nor held, and over NBD large writes - spliced or, where the table
/// says no, buffered - land where the disk reads them back.
/// </summary>
public class SplicedWriteTests
{
    private const int Seg = 64 << 10;

    [Fact]
    public async Task A_spliced_write_holds_the_gate_until_it_ends_and_points_at_the_mapped_places()
    {
        await using var c = await Cluster.StartAsync();
        var agent = await c.StartAgentAsync("h1");
        await c.CreateDiskAsync("d", 4 << 20, Seg, "h1");
        await using var client = await Cluster.OpenAsync(agent, "d");
        const long offset = 3 * Seg / 2; // spans three segments, starting mid-segment
        const int length = 2 * Seg;
        Assert.Equal(0u, await client.WriteAsync(offset, OffsetPattern.Make(offset, length, 1)));
        var volume = agent.Core.FindVolume("d")!;

        Assert.True(volume.CanSpliceWrite(offset, length));
        var write = new VolumeSplicedWrite();
        Assert.True(volume.TryBeginSplicedWrite(offset, length, write));
        var drain = volume.Gate.DrainAsync();
        Assert.False(drain.IsCompleted); // the write is in flight until its plan ends

        // Writing new bytes at the planned places is what the disk then reads at the offset.
        var next = OffsetPattern.Make(offset, length, 2);
        int at = 0;
        for (int i = 0; i < write.Count; i++)
        {
            RandomAccess.Write(write.File(i), next.AsSpan(at, write.Length(i)), write.Offset(i));
            at += write.Length(i);
        }
        Assert.Equal(length, at);
        write.End(-1, 0);
        await drain.WaitAsync(Cluster.Timeout);
        Assert.Equal(0, write.Count);
        var back = new byte[length];
        Assert.Equal(0u, await client.ReadAsync(offset, back));
        Assert.Equal(next, back);
    }

    [Fact]
    public async Task Segments_that_need_a_fault_are_not_offered_and_hold_nothing()
    {
        await using var c = await Cluster.StartAsync();
        var agent = await c.StartAgentAsync("h1");
        await c.CreateDiskAsync("d", 4 << 20, Seg, "h1");
        await using var client = await Cluster.OpenAsync(agent, "d");
        Assert.Equal(0u, await client.WriteAsync(0, OffsetPattern.Make(0, Seg, 7)));
        var volume = agent.Core.FindVolume("d")!;

        // Segment 1 was never written: its first write must fault. Neither offered nor held.
        Assert.False(volume.CanSpliceWrite(0, 2 * Seg));
        var write = new VolumeSplicedWrite();
        Assert.False(volume.TryBeginSplicedWrite(0, 2 * Seg, write));
        Assert.Equal(0, write.Count);
        Assert.True(volume.Gate.DrainAsync().IsCompleted, "a refused spliced write left the gate held");
    }

    [Fact]
    public async Task Large_writes_over_nbd_land_where_they_are_read_back_spliced_or_not()
    {
        // Through the real connection: a thin disk's first large writes fault (buffered path), rewrites of the same
        // places are spliced; aligned and not, across segments, next to small writes, with data encoding its offset
        // and a generation, checked against a reference image.
        await using var c = await Cluster.StartAsync();
        var agent = await c.StartAgentAsync("h1");
        await c.CreateDiskAsync("d", 8 << 20, Seg, "h1");
        await using var client = await Cluster.OpenAsync(agent, "d");
        var volume = agent.Core.FindVolume("d")!;
        var image = new byte[8 << 20];
        long splicedAfterFirst = 0;
        var writes = new (long Offset, int Length)[] { (0, 1 << 20), (4096 + 8, 512 << 10), (Seg - 8, 3 * Seg), (5 << 20, 1 << 20), (12345 * 8, 4096), (7 << 20, 256 << 10) };
        for (int generation = 1; generation <= 3; generation++)
        {
            foreach (var (offset, length) in writes)
            {
                var data = OffsetPattern.Make(offset, length, (ulong)generation << 56);
                Assert.Equal(0u, await client.WriteAsync(offset, data, fua: generation == 3));
                data.CopyTo(image, (int)offset);
            }
            var back = new byte[1 << 20];
            for (int o = 0; o < image.Length; o += back.Length)
            {
                Assert.Equal(0u, await client.ReadAsync(o, back));
                Assert.True(image.AsSpan(o, back.Length).SequenceEqual(back), $"generation {generation}: the MiB at {o} differs from the reference");
            }
            if (generation == 1) splicedAfterFirst = volume.SplicedWritesBegun;
        }
        // Generation 1 mostly faulted (thin); generations 2 and 3 rewrote mapped places: every write of 128 KiB or more spliced.
        Assert.Equal(2 * writes.Count(w => w.Length >= 128 << 10), volume.SplicedWritesBegun - splicedAfterFirst);
        Assert.True(volume.Gate.DrainAsync().Wait(Cluster.Timeout), "a write left the gate held");
    }
}
