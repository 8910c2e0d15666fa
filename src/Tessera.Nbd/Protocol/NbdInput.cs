using System.Runtime.CompilerServices;

namespace Tessera.Nbd.Protocol;

/// <summary>A client broke the protocol; only its connection ends. The message is the logged reason.</summary>
public sealed class NbdProtocolException(string reason) : Exception(reason);

/// <summary>
/// Buffered reader over a transport stream. Headers are parsed straight out of <see cref="Buffered"/> when they are
/// already there (the common case: one receive brings many requests); large payloads bypass the buffer and are read
/// directly into their destination, so a write payload is copied at most once.
/// </summary>
internal sealed class NbdInput(Stream stream, int bufferBytes)
{
    private readonly byte[] _buffer = new byte[bufferBytes];
    private int _start;
    private int _end;

    public int BufferedCount => _end - _start;

    public ReadOnlySpan<byte> Buffered => _buffer.AsSpan(_start, _end - _start);

    public void Consume(int count)
    {
        _start += count;
        if (_start == _end) _start = _end = 0;
    }

    /// <summary>
    /// Ensures at least <paramref name="count"/> bytes are buffered. Returns false on a clean end of stream before any
    /// of them arrived; throws <see cref="NbdProtocolException"/> on an end of stream part-way through.
    /// Pooled builder: the reader suspends here once per request when requests arrive one at a time (QD1), and the
    /// default builder would allocate a state-machine box each time.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> FillAsync(int count, string what, CancellationToken ct)
    {
        if (count > _buffer.Length) throw new InvalidOperationException("fill larger than the receive buffer");
        if (_end - _start >= count) return true;
        if (_buffer.Length - _start < count)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }
        while (_end - _start < count)
        {
            int n = await stream.ReadAsync(_buffer.AsMemory(_end), ct).ConfigureAwait(false);
            if (n == 0)
            {
                if (_end == _start) return false;
                throw new NbdProtocolException($"connection closed in the middle of {what}");
            }
            _end += n;
        }
        return true;
    }

    /// <summary>Reads exactly destination.Length bytes, or throws <see cref="NbdProtocolException"/>.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadExactAsync(Memory<byte> destination, string what, CancellationToken ct)
    {
        int fromBuffer = Math.Min(destination.Length, _end - _start);
        if (fromBuffer > 0)
        {
            _buffer.AsSpan(_start, fromBuffer).CopyTo(destination.Span);
            Consume(fromBuffer);
            destination = destination[fromBuffer..];
        }
        if (destination.Length == 0) return;
        if (destination.Length < _buffer.Length / 2)
        {
            // Small remainder: refill the buffer so the following headers arrive with it.
            if (!await FillAsync(destination.Length, what, ct).ConfigureAwait(false))
                throw new NbdProtocolException($"connection closed in the middle of {what}");
            _buffer.AsSpan(_start, destination.Length).CopyTo(destination.Span);
            Consume(destination.Length);
            return;
        }
        while (destination.Length > 0)
        {
            int n = await stream.ReadAsync(destination, ct).ConfigureAwait(false);
            if (n == 0) throw new NbdProtocolException($"connection closed in the middle of {what}");
            destination = destination[n..];
        }
    }

    /// <summary>Discards <paramref name="count"/> bytes (an option or payload the server does not use).</summary>
    public async ValueTask SkipAsync(long count, string what, CancellationToken ct)
    {
        while (count > 0)
        {
            if (_end == _start && !await FillAsync(1, what, ct).ConfigureAwait(false))
                throw new NbdProtocolException($"connection closed in the middle of {what}");
            int n = (int)Math.Min(count, _end - _start);
            Consume(n);
            count -= n;
        }
    }
}
