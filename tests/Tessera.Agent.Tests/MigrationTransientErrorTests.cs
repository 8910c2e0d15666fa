using Grpc.Core;
using Grpc.Net.Client;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>A container that fails a given number of whole-chunk reads (the controller's migration copy), not a host's 4 KiB reads.</summary>
internal sealed class FlakyCopyContainer(MemoryContainer inner, int chunkBytes) : IStorageContainer
{
    public int FailNextCopyReads;

    public string Uri => inner.Uri;
    public long SizeBytes => inner.SizeBytes;

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        buffer.Length >= chunkBytes && Interlocked.Decrement(ref FailNextCopyReads) >= 0
            ? new(IoStatus.IoError)
            : inner.ReadAsync(offset, buffer, cancellationToken);

    public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => inner.WriteAsync(offset, data, cancellationToken);
    public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);
    public ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.ZeroAsync(offset, length, cancellationToken);
    public void Dispose() { }
}

public class MigrationTransientErrorTests
{
    private const int Seg = 256 << 10;

    // Proves one transient read error in a migration copy fails the job (rolled back, data intact) but not the
    // container: the controller probes it first, as for every other error report. Before the fix the runner marked
    // the source failed outright, and every segment on it answered EIO for good (found by the simulator, seed 17
    // with the extended events).
    [Fact]
    public async Task A_transient_error_in_a_migration_copy_fails_the_job_not_the_container()
    {
        var flaky = new FlakyCopyContainer(new MemoryContainer($"flaky://{Guid.NewGuid():N}", 64 << 20), Seg);
        ContainerRegistry.RegisterScheme("flaky", uri => uri == flaky.Uri ? flaky : throw new IOException($"no flaky container {uri}"));
        await using var c = await Cluster.StartAsync(addFilePool: false);
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "flaky", Uri = flaky.Uri });
        const long size = 4 * Seg;
        await c.CreateDiskAsync("d", size, Seg, "h1");
        var agent = await c.StartAgentAsync("h1");
        await using var nbd = await Cluster.OpenAsync(agent, "d");
        for (long off = 0; off < size; off += Seg) Assert.Equal(0u, await nbd.WriteAsync(off, Pattern.For(off, 4096, 1)));
        await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "pool1", Uri = "file://" + Path.Combine(c.Dir, "pool1.img"), SizeBytes = 64 << 20 });

        using var channel = GrpcChannel.ForAddress(c.Controller.Url);
        var ops = new Operations.OperationsClient(channel);
        flaky.FailNextCopyReads = 1;
        var failed = await WaitJobAsync(ops, (await ops.MigrateDiskAsync(new MigrateDiskRequest { Disk = "d", To = "pool1" })).Id);
        Assert.Equal("failed", failed.State);
        var view = (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single(x => x.Name == "flaky");
        Assert.True(view.Health == "ok", $"the container was marked failed: {view.FailureReason}");

        var back = new byte[4096];
        for (long off = 0; off < size; off += Seg)
        {
            Assert.Equal(0u, await nbd.ReadAsync(off, back));
            Assert.Equal(Pattern.For(off, 4096, 1), back);
        }
        var done = await WaitJobAsync(ops, (await ops.MigrateDiskAsync(new MigrateDiskRequest { Disk = "d", To = "pool1" })).Id);
        Assert.Equal("done", done.State);
        for (long off = 0; off < size; off += Seg)
        {
            Assert.Equal(0u, await nbd.ReadAsync(off, back));
            Assert.Equal(Pattern.For(off, 4096, 1), back);
        }
    }

    private static async Task<JobView> WaitJobAsync(Operations.OperationsClient ops, ulong id)
    {
        using var call = ops.WatchJob(new JobRef { Id = id }, deadline: DateTime.UtcNow + TimeSpan.FromSeconds(60));
        await foreach (var view in call.ResponseStream.ReadAllAsync())
            if (view.State != "running") return view;
        throw new TimeoutException($"job {id} ended the watch while running");
    }
}
