namespace Tessera.Core.Containers;

/// <summary>
/// A container held in memory: the simulated twin of <see cref="FileContainer"/> for tests and simulation.
/// It can be told to fail (every operation returns <see cref="IoStatus.IoError"/>) and to hold operations at a
/// barrier, so tests can keep an I/O in flight for as long as they need.
/// </summary>
public sealed class MemoryContainer(string uri, long sizeBytes) : IStorageContainer
{
    private readonly byte[] _data = new byte[sizeBytes];
    private volatile TaskCompletionSource? _barrier;

    public string Uri { get; } = uri;
    public long SizeBytes { get; } = sizeBytes;
    public bool Failed { get; set; }
    public long Flushes;
    public long Writes;

    /// <summary>Holds every later operation until <see cref="ReleaseOperations"/>.</summary>
    public void HoldOperations() => _barrier = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

    public void ReleaseOperations() => Interlocked.Exchange(ref _barrier, null)?.TrySetResult();

    /// <summary>Raw view for assertions.</summary>
    public ReadOnlySpan<byte> Peek(long offset, int length) => _data.AsSpan((int)offset, length);

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Run(offset, buffer.Length, () => _data.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span));

    public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) =>
        Run(offset, data.Length, () => { data.Span.CopyTo(_data.AsSpan((int)offset)); Interlocked.Increment(ref Writes); });

    public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default) =>
        Run(0, 0, () => Interlocked.Increment(ref Flushes));

    public ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Run(offset, length, () => _data.AsSpan((int)offset, (int)length).Clear());

    public void Dispose() { }

    private ValueTask<IoStatus> Run(long offset, long length, Action action)
    {
        if (offset < 0 || length < 0 || offset + length > SizeBytes) return new(IoStatus.InvalidArgument);
        var barrier = _barrier;
        if (barrier is null)
        {
            if (Failed) return new(IoStatus.IoError);
            lock (_data) action();
            return new(IoStatus.Ok);
        }
        return Later(barrier.Task, action);
    }

    private async ValueTask<IoStatus> Later(Task barrier, Action action)
    {
        await barrier;
        if (Failed) return IoStatus.IoError;
        lock (_data) action();
        return IoStatus.Ok;
    }
}
