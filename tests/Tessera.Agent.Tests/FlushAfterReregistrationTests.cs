using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>
/// Found by the deterministic simulation (seed 27, with power loss): every registration re-sends the container
/// list and the agent replaced each container's slot, and with it the "written since the last flush" flag. A
/// write acknowledged before a reconnect was then skipped by the next FLUSH, which still answered OK, and a power
/// loss lost the write.
/// </summary>
public class FlushAfterReregistrationTests
{
    [Fact]
    public async Task A_flush_after_the_container_list_is_resent_still_flushes_what_was_written_before()
    {
        var container = new CountingContainer();
        var set = new ContainerSet(new ContainerRegistry(_ => container));
        set.Upsert(1, "c", "test://c", failed: false);
        var volume = new DiskVolume(7, "d", 1 << 20, MapEntry.PhysicalUnitBytes, readOnly: false, "", set, new NoFaults());
        volume.Table.Set(0, MapEntry.Mapped(1, 0));

        Assert.Equal(IoStatus.Ok, await volume.WriteAsync(0, new byte[512], CancellationToken.None));
        set.Upsert(1, "c", "test://c", failed: false); // what a re-registration does
        Assert.Equal(IoStatus.Ok, await set.FlushDirtyAsync(CancellationToken.None));

        Assert.Equal(1, container.Flushes);
        Assert.Equal(IoStatus.Ok, await set.FlushDirtyAsync(CancellationToken.None));
        Assert.Equal(1, container.Flushes); // nothing written since: nothing to flush
    }

    private sealed class NoFaults : IFaultSink
    {
        public ValueTask<FaultResult> FaultAsync(DiskVolume volume, long segment, bool write, MapEntry seen, CancellationToken cancellationToken) =>
            new(FaultResult.Fail(IoStatus.IoError));

        public ValueTask<FaultResult> ZeroFaultAsync(DiskVolume volume, long firstSegment, long count, CancellationToken cancellationToken) =>
            new(FaultResult.Fail(IoStatus.IoError));
    }

    private sealed class CountingContainer : IStorageContainer
    {
        public int Flushes;
        public string Uri => "test://c";
        public long SizeBytes => 1 << 20;
        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default)
        {
            Flushes++;
            return new(IoStatus.Ok);
        }
        public ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default) => new(IoStatus.Ok);
        public void Dispose() { }
    }
}
