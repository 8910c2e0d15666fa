namespace Tessera.Simulation;

/// <summary>
/// Simulated true time and every timer of the run in one ordered queue. Nothing advances time but the driver:
/// <see cref="FireNext"/> jumps to the earliest due timer. Ties break by creation order, so a replay fires timers
/// in exactly the same order.
/// </summary>
public sealed class SimClock
{
    private readonly SortedSet<(long DueNs, long Seq)> _queue = new();
    private readonly Dictionary<long, (long DueNs, SimTimer Timer)> _timers = new();
    private long _nextSeq;

    /// <summary>True simulated time in nanoseconds since the start of the run.</summary>
    public long NowNs { get; private set; }

    public int PendingTimers => _queue.Count;

    public long? NextDueNs => _queue.Count == 0 ? null : _queue.Min.DueNs;

    internal long Schedule(SimTimer timer, long dueNs)
    {
        lock (_queue)
        {
            long seq = ++_nextSeq;
            long due = Math.Max(dueNs, NowNs);
            _queue.Add((due, seq));
            _timers[seq] = (due, timer);
            return seq;
        }
    }

    internal void Cancel(long seq)
    {
        lock (_queue)
        {
            if (_timers.Remove(seq, out var t)) _queue.Remove((t.DueNs, seq));
        }
    }

    /// <summary>Removes the earliest timer, advances time to it and returns it (null when none is left).</summary>
    public SimTimer? TakeNext(long? notAfterNs = null)
    {
        lock (_queue)
        {
            while (_queue.Count > 0)
            {
                var first = _queue.Min;
                if (notAfterNs is { } limit && first.DueNs > limit) return null;
                _queue.Remove(first);
                if (!_timers.Remove(first.Seq, out var entry)) continue;
                var timer = entry.Timer;
                if (first.DueNs > NowNs) NowNs = first.DueNs;
                timer.Taken(first.Seq);
                if (timer.Owner.Dead) continue;
                return timer;
            }
            return null;
        }
    }

    /// <summary>Moves time forward without firing anything (used when nothing is due before <paramref name="ns"/>).</summary>
    public void AdvanceTo(long ns)
    {
        lock (_queue) if (ns > NowNs) NowNs = ns;
    }
}

/// <summary>
/// One node's clock: true time scaled by a rate near 1 (clock skew within the lease margin). Only durations
/// measured on one node are compared by the product, so a rate error is the skew that matters, not an offset.
/// </summary>
public sealed class NodeTime(SimClock clock, double rate, string name) : TimeProvider
{
    private static readonly DateTimeOffset Epoch = new(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);

    public SimClock Clock { get; } = clock;
    public double Rate { get; } = rate;
    public string Name { get; } = name;

    /// <summary>A crashed node's timers never fire again.</summary>
    public bool Dead { get; set; }

    public override long TimestampFrequency => 1_000_000_000;

    public override long GetTimestamp() => (long)(Clock.NowNs * Rate);

    public override DateTimeOffset GetUtcNow() => Epoch.AddTicks(GetTimestamp() / 100);

    public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) =>
        new SimTimer(this, callback, state, dueTime, period);

    internal long TrueDelayNs(TimeSpan local) => (long)Math.Ceiling(local.Ticks * 100 / Rate);
}

public sealed class SimTimer : ITimer
{
    private readonly TimerCallback _callback;
    private readonly object? _state;
    private TimeSpan _period;
    private long _seq;
    private long _dueNs;

    internal SimTimer(NodeTime owner, TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        Owner = owner;
        _callback = callback;
        _state = state;
        Change(dueTime, period);
    }

    public NodeTime Owner { get; }

    public bool Change(TimeSpan dueTime, TimeSpan period)
    {
        lock (this)
        {
            if (_seq != 0) Owner.Clock.Cancel(_seq);
            _seq = 0;
            _period = period;
            if (dueTime == Timeout.InfiniteTimeSpan) return true;
            _dueNs = Owner.Clock.NowNs + Owner.TrueDelayNs(dueTime < TimeSpan.Zero ? TimeSpan.Zero : dueTime);
            _seq = Owner.Clock.Schedule(this, _dueNs);
            return true;
        }
    }

    internal void Taken(long seq)
    {
        lock (this)
        {
            if (_seq != seq) return;
            _seq = 0;
            if (_period > TimeSpan.Zero && _period != Timeout.InfiniteTimeSpan)
            {
                _dueNs = Owner.Clock.NowNs + Owner.TrueDelayNs(_period);
                _seq = Owner.Clock.Schedule(this, _dueNs);
            }
        }
    }

    public void Fire() => _callback(_state);

    public void Dispose()
    {
        lock (this)
        {
            if (_seq != 0) Owner.Clock.Cancel(_seq);
            _seq = 0;
        }
    }

    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}
