using System.Runtime.CompilerServices;

namespace Tessera.Core.Mapping;

/// <summary>
/// The in-flight gate that gives a table command its blocking flag (patent [0036]-[0037]).
///
/// Contract: a blocking command changes the table at once, then calls <see cref="DrainAsync"/>; the task it
/// returns completes only when every piece that entered the gate before the call has left. Pieces that enter
/// after the call are not waited for - they looked the table up after the change, so they already obey it.
///
/// How: pieces count themselves into the current <em>generation</em>. <see cref="DrainAsync"/> closes the
/// current generation, opens a new one for later pieces and waits for the closed generation and every older
/// one to reach zero. A piece reads the current generation, increments it, then checks it is still current;
/// if a drain closed it in between, the piece backs out and retries in the new one. That check is what
/// makes the order "table change, close generation" sufficient: a piece counted in a closed generation
/// entered before the close, and a piece that entered after the close does its lookup after the table change.
///
/// A piece that faults must <see cref="Leave"/> before waiting for the controller and enter again to retry:
/// otherwise a blocking command issued by the controller while it prepares the fault's answer would wait for
/// the piece that waits for the controller.
///
/// The hot path is two interlocked operations on one counter and allocates nothing; a drain allocates one
/// small generation object (drains are rare control-path events).
/// </summary>
public sealed class InFlightGate
{
    private Generation _current = new(previous: null);
    private readonly object _drainLock = new();

    /// <summary>Enters the gate. Pass the returned token to <see cref="Leave"/> exactly once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public GateToken Enter()
    {
        while (true)
        {
            var g = Volatile.Read(ref _current);
            Interlocked.Increment(ref g.Count);
            if (ReferenceEquals(Volatile.Read(ref _current), g)) return new GateToken(g);
            g.Release();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Leave(GateToken token) => token.Generation.Release();

    /// <summary>Completes when every piece that entered before this call has left.</summary>
    public Task DrainAsync()
    {
        Generation closed;
        lock (_drainLock)
        {
            closed = _current;
            Volatile.Write(ref _current, new Generation(closed));
            // Inside the lock so the next drain always finds this generation's AllDrained already chained.
            closed.Close();
        }
        return closed.AllDrained;
    }

    /// <summary>Pieces currently inside the gate (diagnostics only; racy by nature).</summary>
    public long InFlightApproximate
    {
        get
        {
            long n = 0;
            for (var g = Volatile.Read(ref _current); g != null; g = g.Previous) n += Math.Max(0, Volatile.Read(ref g.Count) - (g.IsClosed ? 0 : 1));
            return n;
        }
    }

    public readonly struct GateToken
    {
        internal readonly Generation Generation;
        internal GateToken(Generation g) => Generation = g;
    }

    internal sealed class Generation
    {
        // Starts at 1: the generation's own "open" reference, dropped by Close.
        public long Count = 1;
        public Generation? Previous;
        public volatile bool IsClosed;
        private readonly TaskCompletionSource _ownDrained = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private Task? _allDrained;

        public Generation(Generation? previous) => Previous = previous;

        public Task AllDrained => _allDrained!;

        public void Close()
        {
            var prev = Previous;
            _allDrained = prev is null || prev._allDrained is null || prev._allDrained.IsCompleted
                ? _ownDrained.Task
                : Task.WhenAll(_ownDrained.Task, prev._allDrained);
            IsClosed = true;
            Release();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Release()
        {
            if (Interlocked.Decrement(ref Count) == 0)
            {
                _ownDrained.TrySetResult();
                Previous = null; // let drained history be collected
            }
        }
    }
}
