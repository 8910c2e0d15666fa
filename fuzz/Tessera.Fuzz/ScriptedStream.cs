namespace Tessera.Fuzz;

/// <summary>
/// The peer of a fuzzed parser: reads return the fuzz input (in one piece, or as asked, so a run is the same every
/// time), then end of stream; writes are counted and dropped. Optionally the input comes in two parts: the first is
/// served one byte per read (so a parser never buffers past what it asked for), the second only after
/// <see cref="ReleaseSecondPart"/>. A read that finds the first part used up reports end of stream when it runs on
/// <see cref="FirstPartOnlyThreadId"/> (the harness thread, where a synchronous handshake runs) or before the second
/// part was announced; on any other thread (a background reader loop) it waits for the second part. This lets the
/// client harness register its requests before any reply is parsed, so the cookies match the same way every run.
/// </summary>
public sealed class ScriptedStream : Stream
{
    private readonly byte[] _first;
    private readonly byte[] _second;
    private int _firstAt, _secondAt;
    private readonly TaskCompletionSource _secondReleased = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile bool _secondAnnounced;
    private volatile bool _disposed;

    private readonly bool _twoParts;

    public ScriptedStream(byte[] input)
    {
        _first = input;
        _second = [];
    }

    public ScriptedStream(byte[] first, byte[] second)
    {
        _first = first;
        _second = second;
        _twoParts = true;
    }

    public int FirstPartOnlyThreadId { get; set; } = -1;

    private bool SecondPartIsForThisReader => _secondAnnounced && Environment.CurrentManagedThreadId != FirstPartOnlyThreadId;

    /// <summary>Bytes the code under test wrote to its peer.</summary>
    public long BytesWritten { get; private set; }

    /// <summary>Reads from now on wait for the second part instead of reporting end of stream.</summary>
    public void AnnounceSecondPart() => _secondAnnounced = true;

    public void ReleaseSecondPart()
    {
        _secondAnnounced = true;
        _secondReleased.TrySetResult();
    }

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_firstAt < _first.Length) return TakeFirst(buffer);
        if (!SecondPartIsForThisReader) return 0;
        _secondReleased.Task.GetAwaiter().GetResult();
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Take(_second, ref _secondAt, buffer);
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_firstAt < _first.Length) return TakeFirst(buffer.Span);
        if (!SecondPartIsForThisReader) return 0;
        await _secondReleased.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Take(_second, ref _secondAt, buffer.Span);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    private int TakeFirst(Span<byte> buffer) => Take(_first, ref _firstAt, _twoParts ? buffer[..Math.Min(1, buffer.Length)] : buffer);

    private static int Take(byte[] source, ref int at, Span<byte> buffer)
    {
        int n = Math.Min(buffer.Length, source.Length - at);
        source.AsSpan(at, n).CopyTo(buffer);
        at += n;
        return n;
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        BytesWritten += buffer.Length;
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Write(buffer.Span);
        return ValueTask.CompletedTask;
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        Write(buffer.AsSpan(offset, count));
        return Task.CompletedTask;
    }

    public override void Flush() { }
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        _disposed = true;
        _secondReleased.TrySetResult(); // a reader still waiting sees the stream closed
        base.Dispose(disposing);
    }
}
