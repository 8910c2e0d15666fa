using Tessera.Core;
using Tessera.Core.Containers;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>
/// Concurrent flushes of the agent's containers (two NBD connections, or a FLUSH and a FUA write overlapping on one):
/// a flush must not be answered while a write completed before it is still on its way to stable storage.
/// </summary>
public class ContainerFlushTests
{
    /// <summary>A container whose flush waits for the test to open <see cref="FlushGate"/>.</summary>
    private sealed class GatedFlushContainer(string uri) : IStorageContainer
    {
        public TaskCompletionSource FlushGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public int FlushesStarted;
        public int FlushesFinished;

        public string Uri => uri;
        public long SizeBytes => 1 << 20;
        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public void Dispose() { }

        public async ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref FlushesStarted);
            await FlushGate.Task.WaitAsync(cancellationToken);
            Interlocked.Increment(ref FlushesFinished);
            return IoStatus.Ok;
        }
    }

    private static (ContainerSet Set, ContainerSet.Slot Slot, GatedFlushContainer Container) NewSet()
    {
        var container = new GatedFlushContainer("gated://c1");
        var set = new ContainerSet(new ContainerRegistry(uri => uri == container.Uri ? container : throw new IOException("no such container")));
        var slot = set.Upsert(1, "c1", container.Uri, failed: false);
        return (set, slot, container);
    }

    [Fact]
    public async Task SecondFlushWaitsForTheFlushThatClearedTheDirtyFlag()
    {
        // Proves a flush that finds the dirty flag already cleared by a flush still in fdatasync is not answered
        // before that fdatasync returns: the write completed before both flushes is not durable until then.
        var (set, slot, container) = NewSet();
        Volatile.Write(ref slot.Dirty.Value, 1); // a write completed (and was acknowledged) before either flush
        var first = set.FlushDirtyAsync(CancellationToken.None).AsTask();
        Assert.Equal(1, Volatile.Read(ref container.FlushesStarted));
        var second = set.FlushDirtyAsync(CancellationToken.None).AsTask();
        Assert.False(second.IsCompleted, "the second flush answered while the first flush's fdatasync was still running");
        Assert.False(first.IsCompleted);

        container.FlushGate.SetResult();
        Assert.Equal(IoStatus.Ok, await first.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(IoStatus.Ok, await second.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(1, container.FlushesFinished); // nothing was written after the first flush began: one fdatasync covers both
    }

    [Fact]
    public async Task WriteCompletedDuringAFlushIsFlushedByTheNextOne()
    {
        // Proves a write that completes while a flush is running (after it cleared the flag) is not lost: the next
        // flush, queued behind the first, finds it dirty and flushes the container again.
        var (set, slot, container) = NewSet();
        Volatile.Write(ref slot.Dirty.Value, 1);
        var first = set.FlushDirtyAsync(CancellationToken.None).AsTask();
        Assert.Equal(0, Volatile.Read(ref slot.Dirty.Value));
        Volatile.Write(ref slot.Dirty.Value, 1); // the write completes during the first fdatasync
        var second = set.FlushDirtyAsync(CancellationToken.None).AsTask();
        Assert.False(second.IsCompleted);

        container.FlushGate.SetResult();
        Assert.Equal(IoStatus.Ok, await first.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(IoStatus.Ok, await second.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(2, container.FlushesFinished);
        Assert.Equal(0, Volatile.Read(ref slot.Dirty.Value));
    }
}
