using System.Net.Sockets;

namespace Tessera.Nbd;

/// <summary>
/// A socket stream whose "async" methods are blocking system calls that complete synchronously. With one dedicated
/// thread per connection (<see cref="NbdServerOptions.ThreadPerConnection"/>) this removes the thread-pool hop that
/// .NET's async sockets add to every receive: the reader thread sleeps in recv() and wakes up with the request,
/// as nbdkit's threads do. Cancellation shuts the receive side down, which wakes a blocked recv().
/// </summary>
internal sealed class BlockingSocketStream : Stream
{
    private readonly Socket _socket;
    private CancellationToken _registeredToken;
    private CancellationTokenRegistration _registration;
    private int _disposed;

    public BlockingSocketStream(Socket socket, TimeSpan sendTimeout)
    {
        _socket = socket;
        _socket.Blocking = true;
        // A client that stops reading replies must not pin a thread in send() forever.
        _socket.SendTimeout = (int)Math.Min(int.MaxValue, sendTimeout.TotalMilliseconds);
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        try { return _socket.Receive(buffer, SocketFlags.None); }
        catch (SocketException e) { throw new IOException(e.Message, e); }
        catch (ObjectDisposedException) { return 0; }
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (cancellationToken.CanBeCanceled && cancellationToken != _registeredToken)
        {
            _registration.Dispose();
            _registeredToken = cancellationToken;
            _registration = cancellationToken.UnsafeRegister(static s => ((BlockingSocketStream)s!).Interrupt(), this);
        }
        cancellationToken.ThrowIfCancellationRequested();
        int n = Read(buffer.Span);
        if (n == 0 && cancellationToken.IsCancellationRequested) throw new OperationCanceledException(cancellationToken);
        return new ValueTask<int>(n);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    private void Interrupt()
    {
        try { _socket.Shutdown(SocketShutdown.Receive); } catch (Exception) { }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        try
        {
            while (buffer.Length > 0) buffer = buffer[_socket.Send(buffer, SocketFlags.None)..];
        }
        catch (SocketException e) { throw new IOException(e.Message, e); }
    }

    private readonly List<ArraySegment<byte>> _gather = new(2);

    /// <summary>Sends the pending reply headers and a large payload with one sendmsg(). One sender at a time.</summary>
    public void WriteGather(byte[] head, int headCount, byte[] payload, int payloadOffset, int payloadCount)
    {
        try
        {
            _gather.Clear();
            if (headCount > 0) _gather.Add(new ArraySegment<byte>(head, 0, headCount));
            _gather.Add(new ArraySegment<byte>(payload, payloadOffset, payloadCount));
            int sent = _socket.Send(_gather, SocketFlags.None);
            if (sent < headCount)
            {
                Write(head.AsSpan(sent, headCount - sent));
                sent = headCount;
            }
            if (sent < headCount + payloadCount) Write(payload.AsSpan(payloadOffset + sent - headCount, headCount + payloadCount - sent));
        }
        catch (SocketException e) { throw new IOException(e.Message, e); }
    }

    /// <summary>
    /// Sends <paramref name="headCount"/> bytes of <paramref name="head"/>, then <paramref name="count"/> payload bytes
    /// of <paramref name="read"/> from <paramref name="skip"/> on, straight from the mappings, in sendmsg() calls that
    /// never wait for room in the socket. Returns how many of the headCount + count bytes went out; the caller sends the
    /// rest conventionally. One sender at a time. Throws <see cref="NbdMappedReadException"/> when a mapped page cannot
    /// be read (EFAULT), <see cref="IOException"/> when the socket fails.
    /// </summary>
    public unsafe long SendMappedWithoutWaiting(byte[] head, int headCount, NbdMappedRead read, long skip, int count)
    {
        var iov = stackalloc Native.IoVec[NbdMappedRead.MaxRanges + 1];
        long total = (long)headCount + count, sent = 0;
        bool added = false;
        try
        {
            _socket.SafeHandle.DangerousAddRef(ref added);
            int fd = (int)_socket.SafeHandle.DangerousGetHandle();
            fixed (byte* headBytes = head)
            {
                while (sent < total)
                {
                    int n = 0;
                    if (sent < headCount) iov[n++] = new Native.IoVec { Base = headBytes + sent, Length = (nuint)(headCount - sent) };
                    long from = skip + Math.Max(0, sent - headCount), left = total - Math.Max(sent, headCount);
                    for (int i = 0; i < read.Count && left > 0; i++)
                    {
                        long length = read.Length(i);
                        if (from >= length) { from -= length; continue; }
                        long take = Math.Min(length - from, left);
                        iov[n++] = new Native.IoVec { Base = (byte*)read.Mapping(i).Address + read.Offset(i) + from, Length = (nuint)take };
                        left -= take;
                        from = 0;
                    }
                    var message = new Native.MessageHeader { Iov = iov, IovLength = (nuint)n };
                    nint result = Native.sendmsg(fd, &message, Native.MSG_DONTWAIT | Native.MSG_NOSIGNAL);
                    if (result > 0) { sent += result; continue; }
                    if (result == 0) return sent;
                    int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                    if (errno == Native.EINTR) continue;
                    if (errno == Native.EAGAIN) return sent;
                    if (errno == Native.EFAULT) throw new NbdMappedReadException("a mapped page could not be read (EFAULT)");
                    throw new IOException($"sendmsg failed (errno {errno})");
                }
            }
            return sent;
        }
        catch (ObjectDisposedException e) { throw new IOException("connection closed while sending", e); }
        finally { if (added) _socket.SafeHandle.DangerousRelease(); }
    }

    /// <summary>Moves up to <paramref name="count"/> bytes that have already arrived into <paramref name="pipe"/>, without waiting (0 when none). The reader's call.</summary>
    public int SpliceArrived(SplicePipe pipe, int count)
    {
        bool added = false;
        try
        {
            _socket.SafeHandle.DangerousAddRef(ref added);
            return pipe.FillFromSocket((int)_socket.SafeHandle.DangerousGetHandle(), count);
        }
        catch (ObjectDisposedException e) { throw new IOException("connection closed while receiving", e); }
        finally { if (added) _socket.SafeHandle.DangerousRelease(); }
    }

    private static unsafe class Native
    {
        public const int EINTR = 4, EAGAIN = 11, EFAULT = 14;
        public const int MSG_DONTWAIT = 0x40, MSG_NOSIGNAL = 0x4000;

        public struct IoVec
        {
            public byte* Base;
            public nuint Length;
        }

        public struct MessageHeader
        {
            public nint Name;
            public uint NameLength;
            public IoVec* Iov;
            public nuint IovLength;
            public nint Control;
            public nuint ControlLength;
            public int Flags;
        }

        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
        public static extern nint sendmsg(int fd, MessageHeader* message, int flags);
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

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _registration.Dispose();
            try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
            _socket.Dispose();
        }
        base.Dispose(disposing);
    }
}
