using CsCheck;
using Tessera.Controller.Allocation;
using Xunit;

namespace Tessera.Controller.Tests;

public class AllocatorTests
{
    [Fact]
    public void Allocations_are_aligned_disjoint_and_fail_only_when_no_aligned_hole_exists()
    {
        // Proves, against a simple model (a bool per unit), that the bitmap allocator never hands out a used unit,
        // always aligns, frees exactly, and reports no space only when the model has no aligned free run.
        var op = Gen.Select(Gen.Int[0, 6], Gen.Int[0, 1000], Gen.Bool, (sizeLog, pick, free) => (Units: 1 << sizeLog, Pick: pick, Free: free));
        Gen.Select(Gen.Int[1, 300], op.Array[1, 200]).Sample(t =>
        {
            var (total, ops) = t;
            var space = new ContainerSpace(total);
            var model = new bool[total];
            var live = new List<(long First, int Units)>();
            foreach (var (units, pick, free) in ops)
            {
                if (free && live.Count > 0)
                {
                    var (first, n) = live[pick % live.Count];
                    live.Remove((first, n));
                    space.Free(first, n);
                    for (long u = first; u < first + n; u++) model[u] = false;
                    continue;
                }
                long got = space.Allocate(units);
                bool modelFits = false;
                for (long s = 0; s + units <= total && !modelFits; s += units)
                    modelFits = Enumerable.Range((int)s, units).All(u => !model[u]);
                if (got < 0)
                {
                    if (modelFits) throw new Exception($"no space reported for {units} units but the model has an aligned hole");
                    continue;
                }
                if (got % units != 0) throw new Exception($"allocation at {got} not aligned to {units}");
                if (got + units > total) throw new Exception("allocation past the end");
                for (long u = got; u < got + units; u++)
                {
                    if (model[u]) throw new Exception($"unit {u} handed out twice");
                    model[u] = true;
                }
                live.Add((got, units));
            }
            if (space.UsedUnits != model.Count(b => b)) throw new Exception("used count drifted");
        }, iter: 300);
    }

    [Fact]
    public void The_pool_spreads_allocations_to_the_emptiest_container()
    {
        // Proves new segments go to the container with the most free space, and none fit when all are full.
        var pool = new SpacePool();
        pool.AddContainer(1, 32);
        pool.AddContainer(2, 64);
        Assert.True(pool.TryAllocate(16, out var id, out _));
        Assert.Equal(2, id);
        Assert.True(pool.TryAllocate(16, out id, out _));
        Assert.Equal(2, id); // 48 free vs 32: still 2
        Assert.True(pool.TryAllocate(16, out id, out _));
        Assert.Equal(1, id); // 32 free vs 32: tie goes to the lower id
        Assert.True(pool.TryAllocate(16, out _, out _));
        Assert.True(pool.TryAllocate(16, out _, out _));
        Assert.True(pool.TryAllocate(16, out _, out _));
        Assert.False(pool.TryAllocate(16, out _, out _));
        Assert.Throws<InvalidOperationException>(() => pool.MarkUsed(1, 0, 16));
    }
}
