using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>Thin allocation without zeroing, through a real controller, agent and NBD over a file container.</summary>
public class HighWaterEndToEndTests
{
    private const int Seg = 64 << 10;
    private const int Block = 4096;

    // Proves both halves of the rule on real bytes: a never-used unit (not zeroed by the controller) reads zeros
    // around a first write, and a unit freed by one disk and reused by another (zeroed) shows none of the old bytes.
    [Fact]
    public async Task Fresh_and_reused_units_read_zeros()
    {
        await using var c = await Cluster.StartAsync(addFilePool: false);
        // Exactly four segments: the second disk has to reuse the first one's units.
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "small", Uri = "file://" + Path.Combine(c.Dir, "small.img"), SizeBytes = 4 * Seg });
        await c.CreateDiskAsync("a", 4 * Seg, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using (var nbd = await Cluster.OpenAsync(agent, "a"))
        {
            for (int s = 0; s < 4; s++) Assert.Equal(0u, await nbd.WriteAsync((long)s * Seg, Pattern.For((long)s * Seg, Block, 1)));
            var back = new byte[4 * Seg];
            Assert.Equal(0u, await nbd.ReadAsync(0, back));
            for (int s = 0; s < 4; s++)
            {
                Assert.Equal(Pattern.For((long)s * Seg, Block, 1), back.AsSpan(s * Seg, Block).ToArray());
                Assert.False(back.AsSpan(s * Seg + Block, Seg - Block).ContainsAnyExcept((byte)0), $"fresh segment {s} holds non-zero bytes");
            }
            Assert.Equal(0u, await nbd.WriteAsync(0, Pattern.For(0, 4 * Seg, 2))); // fill every byte
            Assert.Equal(0u, await nbd.FlushAsync());
            Assert.Equal(0u, await nbd.WriteZeroesAsync(0, 4 * Seg)); // whole segments: the space is freed
            Assert.Equal(0ul, (await c.Admin.GetDiskAsync(new DiskRef { Name = "a" })).AllocatedSegments);
        }

        await c.CreateDiskAsync("b", 4 * Seg, Seg, "h1");
        await using (var nbd = await Cluster.OpenAsync(agent, "b"))
        {
            for (int s = 0; s < 4; s++) Assert.Equal(0u, await nbd.WriteAsync((long)s * Seg + Block, Pattern.For((long)s * Seg + Block, Block, 3)));
            var container = (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single();
            Assert.Equal(4ul, container.UsedSegments);
            var back = new byte[4 * Seg];
            Assert.Equal(0u, await nbd.ReadAsync(0, back));
            for (int s = 0; s < 4; s++)
            {
                int at = s * Seg;
                Assert.False(back.AsSpan(at, Block).ContainsAnyExcept((byte)0), $"reused segment {s} shows disk a's bytes before the write");
                Assert.Equal(Pattern.For((long)at + Block, Block, 3), back.AsSpan(at + Block, Block).ToArray());
                Assert.False(back.AsSpan(at + 2 * Block, Seg - 2 * Block).ContainsAnyExcept((byte)0), $"reused segment {s} shows disk a's bytes after the write");
            }
        }
    }
}
