using System.Diagnostics;

namespace Tessera.Simulation;

/// <summary>
/// Runs product code one step at a time on a thread pool of exactly one worker. The product's continuations all
/// land on the pool; with one worker and the driver enqueuing only while the pool is idle, the order in which
/// work runs is a function of what was enqueued, so a seed replays exactly.
///
/// Quiescence: a sentinel is queued to the global queue. The worker takes its local queue first, then the global
/// queue in FIFO order, so when the sentinel runs every item queued before it ran and the local queue is empty;
/// if nothing was queued meanwhile (<see cref="ThreadPool.PendingWorkItemCount"/> is 0 inside the sentinel,
/// where nothing else can run) the pool is idle.
/// </summary>
public static class PoolDriver
{
    /// <summary>Real time allowed for one step; longer means product code blocked the only worker (a hang).</summary>
    public static TimeSpan StepTimeout { get; set; } = TimeSpan.FromSeconds(20);

    public static Exception? Fatal { get; private set; }

    public static void Configure()
    {
        if (Environment.ProcessorCount != 1)
            throw new InvalidOperationException($"the simulator needs DOTNET_PROCESSOR_COUNT=1 in its environment (processor count is {Environment.ProcessorCount})");
        if (!ThreadPool.SetMinThreads(1, 1) || !ThreadPool.SetMaxThreads(1, 1))
            throw new InvalidOperationException("could not limit the thread pool to one worker");
        ThreadPool.GetMaxThreads(out int worker, out int io);
        if (worker != 1) throw new InvalidOperationException($"thread pool still allows {worker} workers");
        _ = io;
    }

    /// <summary>Runs <paramref name="action"/> on the pool worker and waits until the pool is idle again.</summary>
    public static void Run(Action action)
    {
        ThreadPool.UnsafeQueueUserWorkItem(_ =>
        {
            try { action(); }
            catch (Exception e) { Fatal ??= e; }
        }, null);
        WaitIdle();
    }

    public static void WaitIdle()
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            using var done = new ManualResetEventSlim();
            long pending = -1;
            ThreadPool.UnsafeQueueUserWorkItem(_ =>
            {
                pending = ThreadPool.PendingWorkItemCount;
                done.Set();
            }, null);
            var left = StepTimeout - watch.Elapsed;
            if (left <= TimeSpan.Zero || !done.Wait(left))
                throw new TimeoutException($"the pool did not become idle within {StepTimeout.TotalSeconds} s: product code blocked the only worker");
            if (pending == 0) return;
        }
    }
}
