using System.Collections.Concurrent;
using Tessera.Core.Streams;
using Xunit;

namespace Tessera.Core.Tests;

public class InlineSendQueueTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    private sealed record Message(int Sender, int Sequence);

    /// <summary>
    /// A stream writer that records what it is given, fails the test on overlapping writes (a gRPC stream throws on
    /// them), and completes each write either at once or later on the pool, as a transport does.
    /// </summary>
    private sealed class RecordingStream
    {
        private int _inFlight;
        public readonly ConcurrentQueue<Message> Written = new();
        public volatile bool Overlapped;
        public Func<Message, bool> CompleteLater = _ => false;

        public Task WriteAsync(Message message)
        {
            if (Interlocked.Increment(ref _inFlight) != 1) Overlapped = true;
            Written.Enqueue(message);
            if (!CompleteLater(message))
            {
                Interlocked.Decrement(ref _inFlight);
                return Task.CompletedTask;
            }
            return Task.Run(async () =>
            {
                await Task.Yield();
                Interlocked.Decrement(ref _inFlight);
            });
        }
    }

    // Proves the lever itself: a message sent while the stream is idle is written on the sender's own thread, before
    // TrySend returns, with no task to wake. Breaks if sends are queued for a pump again.
    [Fact]
    public void Idle_stream_is_written_inline_on_the_senders_thread()
    {
        int writerThread = -1;
        var queue = new InlineSendQueue<Message>(16, e => Assert.Fail("write failed: " + e));
        queue.Attach(_ =>
        {
            writerThread = Environment.CurrentManagedThreadId;
            return Task.CompletedTask;
        });
        Assert.True(queue.TrySend(new Message(0, 0)));
        Assert.Equal(Environment.CurrentManagedThreadId, writerThread);
        Assert.Equal(0, queue.WaitingCount);
    }

    // Proves order and exclusivity under concurrent senders, with writes that sometimes complete later: every message
    // is written exactly once, no two writes overlap, and each sender's messages keep their order (a message written
    // inline past one still waiting would break it).
    [Fact]
    public async Task Concurrent_senders_keep_their_order_and_never_overlap_writes()
    {
        const int senders = 4, perSender = 5_000;
        var stream = new RecordingStream { CompleteLater = m => m.Sequence % 7 == 3 };
        var queue = new InlineSendQueue<Message>(senders * perSender, e => Assert.Fail("write failed: " + e));
        queue.Attach(stream.WriteAsync);

        using var start = new Barrier(senders);
        var threads = Enumerable.Range(0, senders).Select(s => new Thread(() =>
        {
            start.SignalAndWait();
            for (int i = 0; i < perSender; i++)
                if (!queue.TrySend(new Message(s, i))) throw new InvalidOperationException("send refused below capacity");
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => Assert.True(t.Join(Bound)));

        var deadline = DateTime.UtcNow + Bound;
        while (stream.Written.Count < senders * perSender && DateTime.UtcNow < deadline) await Task.Delay(5);
        Assert.Equal(senders * perSender, stream.Written.Count);
        Assert.False(stream.Overlapped, "two writes were in flight at once");
        var next = new int[senders];
        foreach (var m in stream.Written)
        {
            Assert.Equal(next[m.Sender], m.Sequence);
            next[m.Sender]++;
        }
        queue.Complete();
        await queue.Finished.WaitAsync(Bound);
    }

    // Proves the memory bound: while a write hangs (a peer that stopped reading), exactly `capacity` messages wait and
    // the next send is refused, which is what makes the owner end the session.
    [Fact]
    public async Task Full_queue_refuses_sends_while_a_write_hangs()
    {
        var hang = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var written = new List<int>();
        var queue = new InlineSendQueue<Message>(3, e => Assert.Fail("write failed: " + e));
        queue.Attach(m =>
        {
            lock (written) written.Add(m.Sequence);
            return m.Sequence == 0 ? hang.Task : Task.CompletedTask;
        });

        Assert.True(queue.TrySend(new Message(0, 0))); // in flight, never completes until released
        for (int i = 1; i <= 3; i++) Assert.True(queue.TrySend(new Message(0, i)));
        Assert.False(queue.TrySend(new Message(0, 4)));
        Assert.Equal(3, queue.WaitingCount);

        hang.SetResult();
        var deadline = DateTime.UtcNow + Bound;
        while (queue.WaitingCount > 0 && DateTime.UtcNow < deadline) await Task.Delay(5);
        lock (written) Assert.Equal([0, 1, 2, 3], written);
    }

    // Proves what the owner relies on to dispose the stream: Finished waits for the write in flight after Complete,
    // waiting messages are dropped, and nothing is written or accepted after Complete.
    [Fact]
    public async Task Complete_drops_waiting_messages_and_finishes_after_the_write_in_flight()
    {
        var hang = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int writes = 0;
        var queue = new InlineSendQueue<Message>(8, e => Assert.Fail("write failed: " + e));
        queue.Attach(m =>
        {
            Interlocked.Increment(ref writes);
            return m.Sequence == 0 ? hang.Task : Task.CompletedTask;
        });
        Assert.True(queue.TrySend(new Message(0, 0)));
        Assert.True(queue.TrySend(new Message(0, 1)));
        queue.Complete();
        Assert.False(queue.TrySend(new Message(0, 2)));
        Assert.False(queue.Finished.IsCompleted);

        hang.SetResult();
        await queue.Finished.WaitAsync(Bound);
        Assert.Equal(1, Volatile.Read(ref writes));
        Assert.Equal(0, queue.WaitingCount);
    }

    // Proves a broken stream is reported once and ends the queue, whether the write throws at once or faults later.
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Failed_write_is_reported_once_and_ends_the_queue(bool throwsInline)
    {
        int failures = 0;
        var queue = new InlineSendQueue<Message>(8, _ => Interlocked.Increment(ref failures));
        if (throwsInline)
            queue.Attach(m => m.Sequence == 1 ? throw new IOException("stream broken") : Task.CompletedTask);
        else
            queue.Attach(async m =>
            {
                await Task.Yield(); // so the second message waits and the drain, not the sender, meets the failure
                if (m.Sequence == 1) throw new IOException("stream broken");
            });
        Assert.True(queue.TrySend(new Message(0, 0)));
        queue.TrySend(new Message(0, 1));
        await queue.Finished.WaitAsync(Bound);
        Assert.Equal(1, Volatile.Read(ref failures));
        Assert.False(queue.TrySend(new Message(0, 2)));
    }

    // Proves messages sent before the stream exists (Registered is queued before the writer starts) go first, in order.
    [Fact]
    public async Task Messages_sent_before_attach_are_written_first_in_order()
    {
        var stream = new RecordingStream();
        var queue = new InlineSendQueue<Message>(8, e => Assert.Fail("write failed: " + e));
        for (int i = 0; i < 3; i++) Assert.True(queue.TrySend(new Message(0, i)));
        queue.Attach(stream.WriteAsync);
        Assert.True(queue.TrySend(new Message(0, 3)));
        var deadline = DateTime.UtcNow + Bound;
        while (stream.Written.Count < 4 && DateTime.UtcNow < deadline) await Task.Delay(5);
        Assert.Equal([0, 1, 2, 3], stream.Written.Select(m => m.Sequence));
    }
}
