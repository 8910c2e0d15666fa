using Tessera.Core.Mapping;
using Xunit;

namespace Tessera.Core.Tests;

public class InFlightGateTests
{
    // Proves a drain does not complete while a piece that entered before it is still in flight, and does once it leaves.
    [Fact]
    public async Task Drain_waits_for_older_pieces_only()
    {
        var gate = new InFlightGate();
        var old = gate.Enter();
        var drain = gate.DrainAsync();
        var newer = gate.Enter(); // entered after the drain: must not hold it up
        await Task.Delay(20);
        Assert.False(drain.IsCompleted);
        InFlightGate.Leave(old);
        await drain.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.True(drain.IsCompletedSuccessfully);
        InFlightGate.Leave(newer);
    }

    // Proves a drain with nothing in flight completes at once.
    [Fact]
    public void Drain_with_nothing_in_flight_completes_immediately()
    {
        var gate = new InFlightGate();
        InFlightGate.Leave(gate.Enter());
        Assert.True(gate.DrainAsync().IsCompleted);
    }

    // Proves a later drain also waits for pieces an earlier, still-pending drain is waiting for.
    [Fact]
    public async Task Later_drain_waits_for_pieces_of_earlier_generations()
    {
        var gate = new InFlightGate();
        var first = gate.Enter();
        var drain1 = gate.DrainAsync();
        var second = gate.Enter();
        var drain2 = gate.DrainAsync();
        InFlightGate.Leave(second);
        await Task.Delay(20);
        Assert.False(drain2.IsCompleted); // `first` is older than both drains
        Assert.False(drain1.IsCompleted);
        InFlightGate.Leave(first);
        await Task.WhenAll(drain1, drain2).WaitAsync(TimeSpan.FromSeconds(5));
    }

    // Proves under concurrency that when a drain completes, no piece that entered before it is still inside.
    [Fact]
    public async Task Drain_is_exact_under_concurrency()
    {
        var gate = new InFlightGate();
        long version = 0; // stands for the table: bumped before each drain
        var violations = 0;
        // Bounded by a count of drains, not by time: on a loaded machine a fixed window may complete none.
        const int wantedDrains = 200;
        const long wantedPieces = 2000;
        using var stop = new CancellationTokenSource();
        var active = new System.Collections.Concurrent.ConcurrentDictionary<long, long>(); // piece id -> version seen
        long nextId = 0;
        long pieces = 0;
        var workers = Enumerable.Range(0, 3).Select(_ => Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                var t = gate.Enter();
                long id = Interlocked.Increment(ref nextId);
                active[id] = Volatile.Read(ref version);
                Thread.SpinWait(50);
                active.TryRemove(id, out long _);
                InFlightGate.Leave(t);
                Interlocked.Increment(ref pieces);
            }
        })).ToArray();
        int drains = 0;
        try
        {
            while (drains < wantedDrains || Interlocked.Read(ref pieces) < wantedPieces) // both sides must have run
            {
                long v = Interlocked.Increment(ref version);
                await gate.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30)); // a drain that never ends is a bug too
                foreach (var seen in active.Values) if (seen < v) Interlocked.Increment(ref violations);
                drains++;
                if (Interlocked.Read(ref pieces) < wantedPieces) await Task.Yield(); // let the workers get a core
            }
        }
        finally
        {
            stop.Cancel();
            await Task.WhenAll(workers);
        }
        Assert.Equal(0, violations);
        Assert.True(drains >= wantedDrains);
    }
}
