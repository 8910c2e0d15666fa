using System.Threading.Tasks.Sources;

namespace Tessera.Benchmarks;

/// <summary>
/// The client end of an NBD connection without a socket. Bytes given to <see cref="Feed"/> are what the client
/// sends; replies are counted and dropped. A read that finds no input stays pending on a reusable value-task
/// source, and <see cref="Feed"/> completes it inline, so one Feed runs the server's reader loop synchronously
/// through parse, dispatch, export, reply and send, and returns when the server waits for its next request.
/// Nothing here allocates per request, so whatever the memory diagnoser reports belongs to the server.
/// </summary>
public sealed class ScriptedStream : Stream, IValueTaskSource<int>
{
    private ManualResetValueTaskSourceCore<int> _core; // continuations run inline: RunContinuationsAsynchronously = false
    private readonly byte[] _input;
    private int _start, _end;
    private Memory<byte> _pendingRead;
    private bool _readPending;

    public ScriptedStream(int inputCapacityBytes) => _input = new byte[inputCapacityBytes];

    public long BytesWritten;

    public void Feed(ReadOnlySpan<byte> data)
    {
        if (_readPending)
        {
            int n = Math.Min(data.Length, _pendingRead.Length);
            data[..n].CopyTo(_pendingRead.Span);
            Append(data[n..]);
            _readPending = false;
            _pendingRead = default;
            _core.SetResult(n);
            return;
        }
        Append(data);
    }

    private void Append(ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty) return;
        if (_start == _end) _start = _end = 0;
        if (_input.Length - _end < data.Length) throw new InvalidOperationException("scripted input overflow");
        data.CopyTo(_input.AsSpan(_end));
        _end += data.Length;
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_end > _start)
        {
            int n = Math.Min(buffer.Length, _end - _start);
            _input.AsSpan(_start, n).CopyTo(buffer.Span);
            _start += n;
            return new(n);
        }
        if (_readPending) throw new InvalidOperationException("two reads pending");
        _core.Reset();
        _pendingRead = buffer;
        _readPending = true;
        return new(this, _core.Version);
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        BytesWritten += buffer.Length;
        return default;
    }

    public override void Write(ReadOnlySpan<byte> buffer) => BytesWritten += buffer.Length;
    public override void Write(byte[] buffer, int offset, int count) => BytesWritten += count;
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override void Flush() { }

    /// <summary>Ends the connection: a pending read sees end of stream.</summary>
    public void Close(bool _)
    {
        if (!_readPending) return;
        _readPending = false;
        _core.SetResult(0);
    }

    int IValueTaskSource<int>.GetResult(short token) => _core.GetResult(token);
    ValueTaskSourceStatus IValueTaskSource<int>.GetStatus(short token) => _core.GetStatus(token);
    void IValueTaskSource<int>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
