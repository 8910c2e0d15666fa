namespace Tessera.Core.Streams;

/// <summary>
/// The ordered, bounded send side of one stream whose writer takes one write at a time (a gRPC stream).
///
/// A message sent while no write is in flight is written at once on the sender's thread, instead of being queued
/// for a pump task to wake up and write: on the map-fault path that wake-up was one thread hand-off per message
/// in each direction, and under CPU load every hand-off waits for a core. Messages sent while a write is in flight
/// queue behind it and are written, in order, by whoever finishes that write (the write's continuation).
///
/// Guarantees:
/// <list type="bullet">
/// <item>Order: messages reach the writer in the order their <see cref="TrySend"/> calls took the lock, and never
/// two writes overlap. A message is written inline only when nothing is in flight or queued, so it cannot overtake.</item>
/// <item>Bound: at most <c>capacity</c> messages wait; <see cref="TrySend"/> returns false past that (the owner ends
/// the session, as before), and after <see cref="Complete"/> or a failed write.</item>
/// <item>The sender is never blocked by the stream: it pays only the synchronous part of one write (serialising
/// and handing the frame to the transport), and when others queued behind it meanwhile, their writes are handed to
/// the thread pool rather than done while the sender may hold its locks.</item>
/// <item><see cref="Finished"/> completes once the queue is completed (or failed) and no write is in flight, so the
/// owner can dispose the stream knowing nothing will touch it again.</item>
/// </list>
/// </summary>
public sealed class InlineSendQueue<T> where T : class
{
    private readonly object _lock = new();
    private readonly Queue<T> _waiting = new();
    private readonly int _capacity;
    private readonly Action<Exception> _writeFailed;
    private readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Func<T, Task>? _write; // null until the stream is attached; guarded by _lock
    private bool _writing;          // a write is in flight or a drain owns the stream; guarded by _lock
    private bool _completed;        // guarded by _lock

    /// <param name="capacity">Most messages waiting behind a write in flight.</param>
    /// <param name="writeFailed">Called once, outside the lock, when a write throws or faults; the queue is completed first.</param>
    public InlineSendQueue(int capacity, Action<Exception> writeFailed)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _capacity = capacity;
        _writeFailed = writeFailed;
    }

    /// <summary>Completes once the queue is completed and no write is in flight (never faults).</summary>
    public Task Finished => _finished.Task;

    /// <summary>Messages waiting behind a write in flight (tests, diagnostics).</summary>
    public int WaitingCount
    {
        get { lock (_lock) return _waiting.Count; }
    }

    /// <summary>
    /// Starts writing to the stream: what was sent before goes first, in order. Call once.
    /// </summary>
    public void Attach(Func<T, Task> write)
    {
        lock (_lock)
        {
            if (_write != null) throw new InvalidOperationException("the queue is already attached to a stream");
            _write = write;
            if (_completed || _waiting.Count == 0) return;
            _writing = true;
        }
        _ = DrainAsync(null);
    }

    /// <summary>Writes or queues <paramref name="message"/>. False when the queue is full, completed or failed.</summary>
    public bool TrySend(T message)
    {
        Func<T, Task> write;
        lock (_lock)
        {
            if (_completed) return false;
            if (_writing || _write is null)
            {
                if (_waiting.Count >= _capacity) return false;
                _waiting.Enqueue(message);
                return true;
            }
            _writing = true;
            write = _write;
        }

        Task written;
        try
        {
            written = write(message);
        }
        catch (Exception e)
        {
            Fail(e);
            return true; // handed to the stream, which broke: the owner hears of it through writeFailed
        }
        if (!written.IsCompleted)
        {
            _ = DrainAsync(written);
            return true;
        }
        if (!written.IsCompletedSuccessfully)
        {
            Fail(written.Exception?.InnerException ?? new OperationCanceledException("the write was cancelled"));
            return true;
        }
        lock (_lock)
        {
            if (_completed || _waiting.Count == 0)
            {
                ReleaseLocked();
                return true;
            }
        }
        // Others queued behind this write: the sender may hold locks, so their writes go to the pool.
        ThreadPool.UnsafeQueueUserWorkItem(static q => _ = q.DrainAsync(null), this, preferLocal: false);
        return true;
    }

    /// <summary>Stops writing: messages still waiting are dropped, later sends fail. A write in flight finishes.</summary>
    public void Complete()
    {
        lock (_lock)
        {
            if (_completed) return;
            _completed = true;
            _waiting.Clear();
            if (_writing) return; // the writer completes Finished when its write returns
        }
        _finished.TrySetResult();
    }

    /// <summary>Owns the stream: waits for <paramref name="inFlight"/>, then writes what waits until nothing does.</summary>
    private async Task DrainAsync(Task? inFlight)
    {
        try
        {
            if (inFlight != null) await inFlight.ConfigureAwait(false);
            while (true)
            {
                T next;
                Func<T, Task> write;
                lock (_lock)
                {
                    if (_completed || _waiting.Count == 0)
                    {
                        ReleaseLocked();
                        return;
                    }
                    next = _waiting.Dequeue();
                    write = _write!;
                }
                await write(next).ConfigureAwait(false);
            }
        }
        catch (Exception e)
        {
            Fail(e);
        }
    }

    /// <summary>Gives the stream up (under the lock); completes <see cref="Finished"/> when the queue was completed meanwhile.</summary>
    private void ReleaseLocked()
    {
        _writing = false;
        if (_completed) _finished.TrySetResult(); // RunContinuationsAsynchronously: nothing runs under our lock
    }

    private void Fail(Exception e)
    {
        lock (_lock)
        {
            _completed = true;
            _waiting.Clear();
            _writing = false;
        }
        try
        {
            _writeFailed(e);
        }
        finally
        {
            _finished.TrySetResult();
        }
    }
}
