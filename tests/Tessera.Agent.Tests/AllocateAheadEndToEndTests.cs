using Grpc.Net.Client;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>Sequential allocate-ahead through a real agent and NBD (docs/architecture.md, "Sequential allocate-ahead").</summary>
public class AllocateAheadEndToEndTests
{
    private const int Seg = 64 << 10;
    private const int Segments = 64;

    // Proves segments mapped ahead of a sequential writer behave exactly like Zero ones: they read zeros until written,
    // a snapshot taken while they are mapped but unwritten keeps reading zeros after the disk writes them (copy on
    // write of a zero segment), WRITE_ZEROES returns them to Zero and frees them, and every written byte reads back.
    [Fact]
    public async Task Segments_mapped_ahead_read_zeros_snapshot_and_trim_like_zero_ones()
    {
        await using var c = await Cluster.StartAsync(allocateAheadSegments: 8);
        await c.CreateDiskAsync("d", (long)Segments * Seg, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d");

        const int Written = 12;
        for (int s = 0; s < Written; s++) Assert.Equal(0u, await nbd.WriteAsync((long)s * Seg, Pattern.For((long)s * Seg, Seg, 1)));
        long allocated = (long)(await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments;
        Assert.True(allocated > Written, $"nothing was mapped ahead ({allocated} segments for {Written} written); the test proves nothing");
        // The last fault's window (8) past the writer, or an ahead-request's segment up to AheadDistanceSegments past
        // it plus that request's own window (docs/architecture.md, "Ahead-requests"): whichever the timing gave.
        Assert.True(allocated <= Written + DiskVolume.AheadDistanceSegments + 8, $"{allocated} segments mapped: more than the bound allows");
        int ahead = Written; // the first segment mapped but never written

        var buf = new byte[Seg];
        Assert.Equal(0u, await nbd.ReadAsync((long)ahead * Seg, buf));
        Assert.All(buf, b => Assert.Equal(0, b));

        using (var channel = GrpcChannel.ForAddress(c.Controller.Url))
            await new Snapshots.SnapshotsClient(channel).CreateSnapshotAsync(new CreateSnapshotRequest { Disk = "d", Name = "s" });
        var data = Pattern.For((long)ahead * Seg, Seg, 2);
        Assert.Equal(0u, await nbd.WriteAsync((long)ahead * Seg, data));
        Assert.Equal(0u, await nbd.ReadAsync((long)ahead * Seg, buf));
        Assert.Equal(data, buf);

        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "d@s", Host = "h1", ReadOnly = true });
        await using (var sn = await Cluster.OpenAsync(agent, "d@s"))
        {
            Assert.Equal(0u, await sn.ReadAsync((long)ahead * Seg, buf));
            Assert.All(buf, b => Assert.Equal(0, b)); // the snapshot saw the segment unwritten
            Assert.Equal(0u, await sn.ReadAsync(3L * Seg, buf));
            Assert.Equal(Pattern.For(3L * Seg, Seg, 1), buf);
        }

        // The next segment mapped ahead, still unwritten: WRITE_ZEROES gives it back.
        long before = (long)(await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments;
        Assert.Equal(0u, await nbd.WriteZeroesAsync((long)(ahead + 1) * Seg, Seg));
        Assert.Equal(before - 1, (long)(await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments);
        Assert.Equal(0u, await nbd.ReadAsync((long)(ahead + 1) * Seg, buf));
        Assert.All(buf, b => Assert.Equal(0, b));

        for (int s = 0; s < Written; s++)
        {
            Assert.Equal(0u, await nbd.ReadAsync((long)s * Seg, buf));
            Assert.Equal(Pattern.For((long)s * Seg, Seg, 1), buf);
        }
    }
}
