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
    /// Room left in the socket's send buffer (its size less the bytes not yet acknowledged), so a send of that many
    /// bytes is not expected to wait for the client. 0 when the kernel does not say.
    /// </summary>
    public long SendSpaceBytes()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        bool added = false;
        try
        {
            _socket.SafeHandle.DangerousAddRef(ref added);
            int fd = (int)_socket.SafeHandle.DangerousGetHandle();
            if (Native.ioctl(fd, Native.SIOCOUTQ, out int queued) != 0) return 0;
            int size = 0, sizeLength = sizeof(int);
            if (Native.getsockopt(fd, Native.SOL_SOCKET, Native.SO_SNDBUF, ref size, ref sizeLength) != 0) return 0;
            return (long)size - queued;
        }
        catch (ObjectDisposedException) { return 0; }
        finally { if (added) _socket.SafeHandle.DangerousRelease(); }
    }

    /// <summary>
    /// Sends the pending reply headers, then <paramref name="count"/> bytes of <paramref name="read"/> starting
    /// <paramref name="skip"/> bytes into it, straight from the files (sendfile). One sender at a time. Throws
    /// <see cref="NbdFileReadException"/> when a file fails, <see cref="IOException"/> when the socket does.
    /// </summary>
    public void SendFile(byte[] head, int headCount, NbdFileRead read, long skip, int count)
    {
        bool added = false;
        try
        {
            _socket.SafeHandle.DangerousAddRef(ref added);
            int socket = (int)_socket.SafeHandle.DangerousGetHandle();
            SendAll(socket, head, headCount);
            for (int i = 0; i < read.Count && count > 0; i++)
            {
                long length = read.Length(i);
                if (skip >= length) { skip -= length; continue; }
                long offset = read.Offset(i) + skip;
                int n = (int)Math.Min(length - skip, count);
                skip = 0;
                SendFileRange(socket, read.File(i), offset, n);
                count -= n;
            }
        }
        catch (ObjectDisposedException e) { throw new IOException("connection closed while sending", e); }
        finally { if (added) _socket.SafeHandle.DangerousRelease(); }
    }

    private static unsafe void SendAll(int socket, byte[] data, int count)
    {
        int sent = 0;
        while (sent < count)
        {
            nint n;
            fixed (byte* p = &data[sent]) n = Native.send(socket, p, count - sent, Native.MSG_MORE);
            if (n >= 0) { sent += (int)n; continue; }
            int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            if (errno != Native.EINTR) throw new IOException(errno == Native.EAGAIN ? "send timed out" : $"send failed (errno {errno})");
        }
    }

    private static void SendFileRange(int socket, Microsoft.Win32.SafeHandles.SafeFileHandle file, long offset, int count)
    {
        bool added = false;
        try
        {
            file.DangerousAddRef(ref added);
            int fd = (int)file.DangerousGetHandle();
            long end = offset + count;
            while (offset < end)
            {
                nint n = Native.sendfile(socket, fd, ref offset, (nint)(end - offset));
                if (n > 0) continue;
                if (n == 0) throw new NbdFileReadException("the file ended before the range did");
                int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                if (errno == Native.EINTR) continue;
                if (errno == Native.EIO) throw new NbdFileReadException("reading the file failed (EIO)");
                throw new IOException(errno == Native.EAGAIN ? "send timed out" : $"sendfile failed (errno {errno})");
            }
        }
        catch (ObjectDisposedException e) { throw new NbdFileReadException("the file was closed: " + e.Message); }
        finally { if (added) file.DangerousRelease(); }
    }

    private static class Native
    {
        public const int EINTR = 4, EIO = 5, EAGAIN = 11;
        public const int MSG_MORE = 0x8000;
        public const int SOL_SOCKET = 1, SO_SNDBUF = 7;
        public const ulong SIOCOUTQ = 0x5411;

        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
        public static extern nint sendfile(int outFd, int inFd, ref long offset, nint count);

        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
        public static extern unsafe nint send(int fd, byte* buffer, nint count, int flags);

        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
        public static extern int ioctl(int fd, ulong request, out int value);

        [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
        public static extern int getsockopt(int fd, int level, int name, ref int value, ref int length);
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
