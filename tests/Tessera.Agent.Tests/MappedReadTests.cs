using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>
/// Reads sent from the containers' file mappings (DiskVolume.MappedReads.cs): the plan points at the bytes the table
/// maps, the disk's in-flight gate stays held until the connection ends the read (so a blocking command waits for the
/// send), and anything the table does not map to a file (thin, never written) takes the buffered path with nothing
/// held. Moves under large reads: MigrationTests.Migrate_disk_there_and_back_under_large_reads.
/// </summary>
public class MappedReadTests
{
    private const int Seg = 64 << 10;

    [Fact]
    public async Task A_mapped_read_holds_the_gate_until_it_ends_and_points_at_the_mapped_bytes()
    {
        await using var c = await Cluster.StartAsync();
        var agent = await c.StartAgentAsync("h1");
        await c.CreateDiskAsync("d", 4 << 20, Seg, "h1");
        await using var client = await Cluster.OpenAsync(agent, "d");
        const long offset = 3 * Seg / 2; // spans three segments, starting mid-segment
        const int length = 2 * Seg;
        var written = OffsetPattern.Make(offset, length, 0xD15C_0001);
        Assert.Equal(0u, await client.WriteAsync(offset, written));
        var volume = agent.Core.FindVolume("d")!;

        Assert.True(volume.CanMapRead(offset, length));
        var read = new VolumeMappedRead();
        Assert.True(volume.TryBeginMappedRead(offset, length, read));
        var drain = volume.Gate.DrainAsync();
        Assert.False(drain.IsCompleted); // the read is still "in flight": a blocking command must wait for its send

        // The ranges, read back in order, are exactly the bytes written at the disk offset.
        Assert.Equal(length, read.TotalBytes);
        var sent = new byte[length];
        read.CopyTo(sent, 0, length);
        Assert.Equal(written, sent);
        var tail = new byte[Seg];
        read.CopyTo(tail, Seg, Seg);
        Assert.Equal(written[Seg..], tail);

        read.End();
        await drain.WaitAsync(Cluster.Timeout);
        Assert.Equal(0, read.Count);
    }

    [Fact]
    public async Task Unmapped_segments_take_the_buffered_path_and_hold_nothing()
    {
        await using var c = await Cluster.StartAsync();
        var agent = await c.StartAgentAsync("h1");
        await c.CreateDiskAsync("d", 4 << 20, Seg, "h1");
        await using var client = await Cluster.OpenAsync(agent, "d");
        Assert.Equal(0u, await client.WriteAsync(0, OffsetPattern.Make(0, Seg, 7)));
        var volume = agent.Core.FindVolume("d")!;

        // Segment 1 was never written: thin, no place in any file. A read covering it is neither offered nor held.
        Assert.False(volume.CanMapRead(0, 2 * Seg));
        var read = new VolumeMappedRead();
        Assert.False(volume.TryBeginMappedRead(0, 2 * Seg, read));
        Assert.Equal(0, read.Count);
        Assert.True(volume.Gate.DrainAsync().IsCompleted, "a refused mapped read left the gate held");

        // Over NBD the same read still answers: written bytes, then zeros.
        long mapped = volume.MappedReadsBegun;
        var buffer = new byte[2 * Seg];
        Assert.Equal(0u, await client.ReadAsync(0, buffer));
        Assert.Equal(OffsetPattern.Make(0, Seg, 7), buffer[..Seg]);
        Assert.All(buffer[Seg..], b => Assert.Equal(0, b));
        Assert.Equal(mapped, volume.MappedReadsBegun);
    }

    [Fact]
    public async Task Large_reads_over_nbd_return_what_was_written_across_segments()
    {
        // End to end through the real connection: reads at and above the mapped-read threshold, aligned and not, over
        // data that encodes its own offset, next to reads below the threshold.
        await using var c = await Cluster.StartAsync();
        var agent = await c.StartAgentAsync("h1");
        await c.CreateDiskAsync("d", 8 << 20, Seg, "h1");
        await using var client = await Cluster.OpenAsync(agent, "d");
        var image = OffsetPattern.Make(0, 8 << 20, 0xFEED);
        for (int o = 0; o < image.Length; o += 1 << 20) Assert.Equal(0u, await client.WriteAsync(o, image.AsMemory(o, 1 << 20)));
        var volume = agent.Core.FindVolume("d")!;
        long mapped = volume.MappedReadsBegun;
        var reads = new (long Offset, int Length)[] { (0, 1 << 20), (4096, 1 << 20), (Seg - 8, 3 * Seg), (5 << 20, 3 << 20), (12345 * 8, 4096), (7 << 20, Seg) };
        foreach (var (offset, length) in reads)
        {
            var buffer = new byte[length];
            Assert.Equal(0u, await client.ReadAsync(offset, buffer));
            Assert.True(image.AsSpan((int)offset, length).SequenceEqual(buffer), $"read at {offset} (+{length}) differs");
        }
        Assert.Equal(reads.Count(r => r.Length >= 32 << 10), volume.MappedReadsBegun - mapped);
        Assert.True(volume.Gate.DrainAsync().Wait(Cluster.Timeout), "a read left the gate held");
    }
}
