using Tessera.Core;
using Tessera.Core.Containers;

namespace Tessera.Agent;

/// <summary>
/// Wraps a container so that every <see cref="IoStatus.IoError"/> it returns is reported (the controller then
/// probes the container and marks it failed if the probe fails too). Results pass through unchanged.
/// </summary>
internal sealed class ReportingContainer(IStorageContainer inner, uint id, ContainerSet owner) : IStorageContainer, IFileBackedContainer
{
    /// <summary>Passed through: a mapped read that fails is read again through <see cref="ReadAsync"/>, which reports it.</summary>
    public FileMapping? Mapping => (inner as IFileBackedContainer)?.Mapping;

    /// <summary>Passed through: a spliced write that fails is reported by the disk (DiskVolume.SplicedWrites.cs).</summary>
    public Microsoft.Win32.SafeHandles.SafeFileHandle? FileHandle => (inner as IFileBackedContainer)?.FileHandle;

    public string Uri => inner.Uri;
    public long SizeBytes => inner.SizeBytes;

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Watch(inner.ReadAsync(offset, buffer, cancellationToken), "read");

    public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) =>
        Watch(inner.WriteAsync(offset, data, cancellationToken), "write");

    public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default) => Watch(inner.FlushAsync(cancellationToken), "flush");

    public ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Watch(inner.ZeroAsync(offset, length, cancellationToken), "zero");

    public void Dispose() { } // the registry owns the inner container

    private ValueTask<IoStatus> Watch(ValueTask<IoStatus> io, string what)
    {
        if (io.IsCompletedSuccessfully)
        {
            var status = io.Result;
            if (status == IoStatus.IoError) owner.OnIoError(id, what + " failed");
            return new(status);
        }
        return Later(io, what);
    }

    private async ValueTask<IoStatus> Later(ValueTask<IoStatus> io, string what)
    {
        var status = await io.ConfigureAwait(false);
        if (status == IoStatus.IoError) owner.OnIoError(id, what + " failed");
        return status;
    }
}
