using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>Ahead-requests through a real agent, controller and NBD (docs/architecture.md, "Ahead-requests").</summary>
public class AheadRequestEndToEndTests
{
    private const int Seg = 64 << 10;

    // Proves a sequential NBD writer on a fresh thin disk makes its agent send ahead-requests that the real controller
    // serves (they allocate: the disk ends up with more segments than were written, within what the distance and the
    // window allow), and that every byte written reads back, the segments past the writer reading zeros.
    [Fact]
    public async Task Sequential_writer_sends_ahead_requests_that_the_controller_serves()
    {
        await using var c = await Cluster.StartAsync(allocateAheadSegments: 8);
        await c.CreateDiskAsync("d", 128L * Seg, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d");

        const int Written = 48;
        for (int s = 0; s < Written; s++) Assert.Equal(0u, await nbd.WriteAsync((long)s * Seg, Pattern.For((long)s * Seg, Seg, 1)));
        Assert.True(Interlocked.Read(ref agent.Core.Counters.AheadRequestsSent) > 0, "no ahead-request was sent");
        long allocated = (long)(await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments;
        Assert.InRange(allocated, Written + 1, Written + DiskVolume.AheadDistanceSegments + 8);

        var buf = new byte[Seg];
        for (int s = 0; s < Written + 4; s++)
        {
            Assert.Equal(0u, await nbd.ReadAsync((long)s * Seg, buf));
            if (s < Written) Assert.Equal(Pattern.For((long)s * Seg, Seg, 1), buf);
            else Assert.All(buf, b => Assert.Equal(0, b));
        }
    }
}
