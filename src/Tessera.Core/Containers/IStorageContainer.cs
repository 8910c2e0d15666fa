namespace Tessera.Core.Containers;

/// <summary>
/// Where bytes live: a file, a block device, or (later) a remote NBD export. Deliberately small so that every
/// kind - and the simulated and fault-injecting twins used by tests - implements the same five operations.
/// Failures are returned as <see cref="IoStatus.IoError"/>, never thrown, so one failed container cannot tear
/// down a connection that also reads other containers.
/// </summary>
public interface IStorageContainer : IDisposable
{
    string Uri { get; }

    long SizeBytes { get; }

    ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default);

    ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default);

    /// <summary>Makes every write acknowledged before the call durable (fdatasync for files).</summary>
    ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>Makes the range read as zeros (punches a hole where the container can, writes zeros otherwise).</summary>
    ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default);
}
