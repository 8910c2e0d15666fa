using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>
/// Found by the deterministic simulation (seed 27, slow container flushes and power loss): a FLUSH that found the
/// dirty flag already cleared by a FLUSH still in progress answered OK at once, before anything was durable.
/// </summary>
public class ConcurrentFlushTests
{
    [Fact]
    public async Task A_flush_does_not_answer_before_a_running_flush_that_took_its_writes_finished()
    {
        var container = new HeldFlushContainer();
        var set = new ContainerSet(new ContainerRegistry(_ => container));
        set.Upsert(1, "c", "test://c", failed: false);
        var volume = new DiskVolume(7, "d", 1 << 20, MapEntry.PhysicalUnitBytes, readOnly: false, "", set, new NoFaultSink());
        volume.Table.Set(0, MapEntry.Mapped(1, 0));
        Assert.Equal(IoStatus.Ok, await volume.WriteAsync(0, new byte[512], CancellationToken.None));

        var first = set.FlushDirtyAsync(CancellationToken.None).AsTask(); // takes the flag, its device flush hangs
        var second = set.FlushDirtyAsync(CancellationToken.None).AsTask();
        Assert.False(second.IsCompleted, "the second flush answered while the write was not durable yet");

        container.Release();
        Assert.Equal(IoStatus.Ok, await first.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(IoStatus.Ok, await second.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    private sealed class NoFaultSink : IFaultSink
    {
        public ValueTask<FaultResult> FaultAsync(DiskVolume volume, long segment, bool write, MapEntry seen, CancellationToken cancellationToken) =>
            new(FaultResult.Fail(IoStatus.IoError));

        public ValueTask<FaultResult> ZeroFaultAsync(DiskVolume volume, long firstSegment, long count, CancellationToken cancellationToken) =>
            new(FaultResult.Fail(IoStatus.IoError));
    }

    private sealed class HeldFlushContainer : IStorageContainer
    {
        private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public void Release() => _release.TrySetResult();
        public string Uri => "test://c";
        public long SizeBytes => 1 << 20;
        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public async ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default)
        {
            await _release.Task;
            return IoStatus.Ok;
        }
        public ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public void Dispose() { }
    }
}
