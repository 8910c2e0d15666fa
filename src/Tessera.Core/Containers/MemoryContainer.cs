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

    // The operations are spelled out rather than passed as lambdas: a capturing lambda is two allocations per I/O,
    // and the benchmarks run the agent's data path over this container to prove that path allocates nothing.
    private enum Op : byte { Read, Write, Flush, Zero }

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Run(Op.Read, offset, buffer.Length, buffer, default);

    public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) =>
        Run(Op.Write, offset, data.Length, default, data);

    public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default) =>
        Run(Op.Flush, 0, 0, default, default);

    public ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        Run(Op.Zero, offset, length, default, default);

    public void Dispose() { }

    private ValueTask<IoStatus> Run(Op op, long offset, long length, Memory<byte> into, ReadOnlyMemory<byte> from)
    {
        if (offset < 0 || length < 0 || offset + length > SizeBytes) return new(IoStatus.InvalidArgument);
        var barrier = _barrier;
        if (barrier is null)
        {
            if (Failed) return new(IoStatus.IoError);
            Apply(op, offset, length, into, from);
            return new(IoStatus.Ok);
        }
        return Later(barrier.Task, op, offset, length, into, from);
    }

    private async ValueTask<IoStatus> Later(Task barrier, Op op, long offset, long length, Memory<byte> into, ReadOnlyMemory<byte> from)
    {
        await barrier;
        if (Failed) return IoStatus.IoError;
        Apply(op, offset, length, into, from);
        return IoStatus.Ok;
    }

    private void Apply(Op op, long offset, long length, Memory<byte> into, ReadOnlyMemory<byte> from)
    {
        lock (_data)
        {
            switch (op)
            {
                case Op.Read:
                    _data.AsSpan((int)offset, (int)length).CopyTo(into.Span);
                    break;
                case Op.Write:
                    from.Span.CopyTo(_data.AsSpan((int)offset));
                    Interlocked.Increment(ref Writes);
                    break;
                case Op.Flush:
                    Interlocked.Increment(ref Flushes);
                    break;
                case Op.Zero:
                    _data.AsSpan((int)offset, (int)length).Clear();
                    break;
            }
        }
    }
}
