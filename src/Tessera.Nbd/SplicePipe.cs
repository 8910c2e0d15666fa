using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Tessera.Nbd;

/// <summary>
/// A connection's pipe for spliced writes (NbdConnection.SplicedWrites.cs): splice() moves a write's payload from the
/// socket into the pipe by reference, then copies it from the pipe into the file's page cache - one copy where
/// recv() into a buffer and pwrite() from it are two. Empty between writes: after a failure that may have left bytes
/// of unknown count in it (an exception from any method here), the owner discards it.
/// </summary>
internal sealed class SplicePipe : IDisposable
{
    private readonly int _readFd;
    private readonly int _writeFd;
    private int _disposed;

    private SplicePipe(int readFd, int writeFd)
    {
        _readFd = readFd;
        _writeFd = writeFd;
    }

    /// <summary>A pipe of (at least, where the kernel allows) <paramref name="capacityBytes"/>; null when pipes or splice are unavailable.</summary>
    public static SplicePipe? TryCreate(int capacityBytes)
    {
        if (!OperatingSystem.IsLinux()) return null;
        Span<int> fds = stackalloc int[2];
        if (Native.pipe2(ref MemoryMarshal.GetReference(fds), Native.O_CLOEXEC) != 0) return null;
        // Above /proc/sys/fs/pipe-max-size (1 MiB by default) only a process with CAP_SYS_RESOURCE may go: then halve.
        for (int size = capacityBytes; size >= 64 * 1024 && Native.fcntl(fds[1], Native.F_SETPIPE_SZ, size) < 0; size /= 2) { }
        int capacity = Native.fcntl(fds[1], Native.F_GETPIPE_SZ, 0);
        // Past the per-user pipe quota (pipe-user-pages-soft) new pipes get one page: too small to be worth splicing.
        if (capacity < 64 * 1024)
        {
            Native.close(fds[0]);
            Native.close(fds[1]);
            return null;
        }
        return new SplicePipe(fds[0], fds[1]);
    }

    /// <summary>Copies bytes the connection already received into the (empty) pipe.</summary>
    public unsafe void Write(ReadOnlySpan<byte> data)
    {
        fixed (byte* p = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = Native.write(_writeFd, p + done, (nuint)(data.Length - done));
                if (n > 0) { done += (int)n; continue; }
                int errno = Marshal.GetLastPInvokeError();
                if (n < 0 && errno == Native.EINTR) continue;
                throw new IOException($"writing to the splice pipe failed (errno {errno})");
            }
        }
    }

    /// <summary>
    /// Moves up to <paramref name="count"/> bytes that have already arrived on the socket into the (empty) pipe, without
    /// waiting for more: 0 when nothing is there. Fewer than asked when the pipe fills (it holds pages, and the socket's
    /// may be partly filled). Throws <see cref="Protocol.NbdProtocolException"/> when the client has closed the
    /// connection, <see cref="IOException"/> on other failures.
    /// </summary>
    public int FillFromSocket(int socketFd, int count)
    {
        // SPLICE_F_NONBLOCK covers only the pipe: on a blocking socket splice() would wait for data. Ask first.
        if (Native.ioctl(socketFd, Native.FIONREAD, out int arrived) != 0)
            throw new IOException($"FIONREAD on the socket failed (errno {Marshal.GetLastPInvokeError()})");
        if (arrived <= 0) return 0;
        count = Math.Min(count, arrived);
        while (true)
        {
            nint n = Native.splice(socketFd, 0, _writeFd, 0, (nuint)count, Native.SPLICE_F_MOVE | Native.SPLICE_F_NONBLOCK);
            if (n > 0) return (int)n;
            if (n == 0) throw new Protocol.NbdProtocolException("connection closed in the middle of write payload");
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Native.EINTR) continue;
            if (errno == Native.EAGAIN) return 0;
            throw new IOException($"splice from the socket failed (errno {errno})");
        }
    }

    /// <summary>Reads exactly <paramref name="destination"/>.Length bytes out of the pipe (the caller knows they are there).</summary>
    public unsafe void Drain(Span<byte> destination)
    {
        fixed (byte* p = destination)
        {
            int done = 0;
            while (done < destination.Length)
            {
                nint n = Native.read(_readFd, p + done, (nuint)(destination.Length - done));
                if (n > 0) { done += (int)n; continue; }
                int errno = Marshal.GetLastPInvokeError();
                if (n < 0 && errno == Native.EINTR) continue;
                throw new IOException($"reading the splice pipe failed (errno {errno})");
            }
        }
    }

    /// <summary>
    /// Copies <paramref name="count"/> bytes from the pipe into <paramref name="file"/> at <paramref name="offset"/>;
    /// false (errno set) when the file refuses, with <paramref name="moved"/> bytes taken out of the pipe before that.
    /// </summary>
    public unsafe bool SpliceTo(SafeFileHandle file, long offset, int count, out int moved, out int errno)
    {
        errno = 0;
        moved = 0;
        bool added = false;
        try
        {
            file.DangerousAddRef(ref added);
            int fd = (int)file.DangerousGetHandle();
            while (count > 0)
            {
                long position = offset;
                nint n = Native.splice(_readFd, 0, fd, (nint)(&position), (nuint)count, Native.SPLICE_F_MOVE);
                if (n > 0)
                {
                    offset += n;
                    count -= (int)n;
                    moved += (int)n;
                    continue;
                }
                errno = n == 0 ? Native.EIO : Marshal.GetLastPInvokeError();
                if (n < 0 && errno == Native.EINTR) continue;
                return false;
            }
            return true;
        }
        catch (ObjectDisposedException)
        {
            errno = Native.EBADF;
            return false;
        }
        finally { if (added) file.DangerousRelease(); }
    }

    /// <summary>Throws away <paramref name="count"/> bytes left in the pipe after a failed write, so it can be used again.</summary>
    public void Discard(int count)
    {
        Span<byte> scratch = stackalloc byte[4096];
        while (count > 0)
        {
            int n = Math.Min(count, scratch.Length);
            Drain(scratch[..n]);
            count -= n;
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Native.close(_readFd);
        Native.close(_writeFd);
    }

    private static unsafe class Native
    {
        public const int O_CLOEXEC = 0x80000;
        public const int F_SETPIPE_SZ = 1031, F_GETPIPE_SZ = 1032;
        public const uint SPLICE_F_MOVE = 1, SPLICE_F_NONBLOCK = 2;
        public const int EINTR = 4, EIO = 5, EBADF = 9, EAGAIN = 11;
        public const ulong FIONREAD = 0x541B;

        [DllImport("libc", SetLastError = true)]
        public static extern int ioctl(int fd, ulong request, out int value);
        [DllImport("libc", SetLastError = true)]
        public static extern int pipe2(ref int fds, int flags);

        [DllImport("libc", SetLastError = true)]
        public static extern int fcntl(int fd, int command, int argument);

        [DllImport("libc", SetLastError = true)]
        public static extern nint splice(int fdIn, nint offsetIn, int fdOut, nint offsetOut, nuint length, uint flags);

        [DllImport("libc", SetLastError = true)]
        public static extern nint write(int fd, byte* buffer, nuint count);

        [DllImport("libc", SetLastError = true)]
        public static extern nint read(int fd, byte* buffer, nuint count);

        [DllImport("libc", SetLastError = true)]
        public static extern int close(int fd);
    }
}
