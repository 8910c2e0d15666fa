using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Tessera.Core.Containers;

/// <summary>
/// A regular file or block device. Positioned reads and writes (pread/pwrite through <see cref="RandomAccess"/>),
/// fdatasync on flush, hole punching for zeroing where the file system supports it.
///
/// Reads and writes run synchronously on the calling thread: for data in the page cache a pread is a
/// microsecond or two, far cheaper than a hop to another thread. Callers that must not block (the NBD reader
/// loop) already run each request on the thread pool.
///
/// An agent's NBD server also asks for a read-only mapping of the file (<see cref="Mapping"/>, made on first use, so
/// the controller's containers never map), to send large reads from the page cache with one copy instead of two.
/// </summary>
public sealed class FileContainer : IStorageContainer, IFileBackedContainer
{
    private readonly SafeFileHandle _handle;
    private readonly long _sizeBytes;
    private readonly object _mappingLock = new();
    private FileMapping? _mapping;
    private volatile bool _mappingDecided;
    private int _punchHoleUnsupported;

    private FileContainer(string uri, SafeFileHandle handle, long sizeBytes)
    {
        Uri = uri;
        _handle = handle;
        _sizeBytes = sizeBytes;
    }

    public string Uri { get; }

    public FileMapping? Mapping => _mappingDecided ? _mapping : MapOnce();

    private FileMapping? MapOnce()
    {
        lock (_mappingLock)
        {
            if (!_mappingDecided)
            {
                _mapping = FileMapping.TryCreate(_handle, _sizeBytes);
                _mappingDecided = true;
            }
            return _mapping;
        }
    }

    public SafeFileHandle? FileHandle => _handle;

    public long SizeBytes => _sizeBytes;

    /// <summary>Opens an existing file or block device for reading and writing.</summary>
    public static FileContainer Open(string uri)
    {
        if (!ContainerUri.TryParseFile(uri, out var path, out var error)) throw new ArgumentException(error, nameof(uri));
        if (!File.Exists(path)) throw new FileNotFoundException($"container file {path} does not exist", path);
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        long size = RandomAccess.GetLength(handle);
        if (size == 0) size = Native.DeviceSize(handle); // block devices report 0 through stat
        return new FileContainer(uri, handle, size);
    }

    /// <summary>Creates a sparse file of <paramref name="sizeBytes"/> (refuses to overwrite one that exists).</summary>
    public static void CreateSparse(string uri, long sizeBytes)
    {
        if (!ContainerUri.TryParseFile(uri, out var path, out var error)) throw new ArgumentException(error, nameof(uri));
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
        RandomAccess.SetLength(handle, sizeBytes);
    }

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        try
        {
            var span = buffer.Span;
            while (!span.IsEmpty)
            {
                int n = RandomAccess.Read(_handle, span, offset);
                if (n == 0)
                {
                    span.Clear(); // past the end of a file that was truncated under us: zeros, like a hole
                    break;
                }
                span = span[n..];
                offset += n;
            }
            return new(IoStatus.Ok);
        }
        catch (IOException)
        {
            return new(IoStatus.IoError);
        }
        catch (UnauthorizedAccessException)
        {
            return new(IoStatus.IoError);
        }
    }

    public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        try
        {
            RandomAccess.Write(_handle, data.Span, offset);
            return new(IoStatus.Ok);
        }
        catch (IOException)
        {
            return new(IoStatus.IoError);
        }
        catch (UnauthorizedAccessException)
        {
            return new(IoStatus.IoError);
        }
    }

    public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default) =>
        new(Native.FdataSync(_handle) ? IoStatus.Ok : IoStatus.IoError);

    public async ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        if (Volatile.Read(ref _punchHoleUnsupported) == 0)
        {
            if (Native.PunchHole(_handle, offset, length)) return IoStatus.Ok;
            Volatile.Write(ref _punchHoleUnsupported, 1);
        }
        var zeros = new byte[Math.Min(length, 1 << 20)];
        while (length > 0)
        {
            int n = (int)Math.Min(length, zeros.Length);
            var status = await WriteAsync(offset, zeros.AsMemory(0, n), cancellationToken);
            if (status != IoStatus.Ok) return status;
            offset += n;
            length -= n;
        }
        return IoStatus.Ok;
    }

    public void Dispose()
    {
        lock (_mappingLock)
        {
            _mappingDecided = true; // no mapping after this
            _mapping?.Dispose(); // unmaps once the last send holding it returns
        }
        _handle.Dispose();
    }

    private static class Native
    {
        private const int FALLOC_FL_KEEP_SIZE = 0x01;
        private const int FALLOC_FL_PUNCH_HOLE = 0x02;
        private const ulong BLKGETSIZE64 = 0x80081272;

        [DllImport("libc", SetLastError = true)]
        private static extern int fdatasync(int fd);

        [DllImport("libc", SetLastError = true)]
        private static extern int fallocate(int fd, int mode, long offset, long len);

        [DllImport("libc", SetLastError = true)]
        private static extern int ioctl(int fd, ulong request, out long value);

        public static bool FdataSync(SafeFileHandle handle)
        {
            if (!OperatingSystem.IsLinux())
            {
                RandomAccess.FlushToDisk(handle);
                return true;
            }
            return fdatasync((int)handle.DangerousGetHandle()) == 0;
        }

        public static bool PunchHole(SafeFileHandle handle, long offset, long length) =>
            OperatingSystem.IsLinux() && fallocate((int)handle.DangerousGetHandle(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0;

        public static long DeviceSize(SafeFileHandle handle) =>
            OperatingSystem.IsLinux() && ioctl((int)handle.DangerousGetHandle(), BLKGETSIZE64, out var size) == 0 ? size : 0;
    }
}
