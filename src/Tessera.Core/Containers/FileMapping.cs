using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Tessera.Core.Containers;

/// <summary>
/// A read-only shared mapping of a whole container file, so a server can hand a socket the bytes of a read straight
/// from the page cache: send() copies them once, into the socket's own buffers, instead of pread() copying them into
/// a buffer and send() copying them again (docs/architecture.md, "Mapped reads").
///
/// Only the kernel ever touches the mapped memory (as the source of a send). A page it cannot read - an I/O error,
/// or a file truncated under us - then fails that one system call with EFAULT; user code reading the mapping would
/// get SIGBUS instead, which is why nothing here exposes the bytes as a span.
///
/// The mapping is reference-counted like any <see cref="SafeHandle"/>: a sender holds a reference
/// (<see cref="SafeHandle.DangerousAddRef"/>) for the duration of its system call, so disposing the container while a
/// send is in progress unmaps only after that send returns.
/// </summary>
public sealed class FileMapping : SafeHandle
{
    private FileMapping(nint address, long sizeBytes, SafeFileHandle file) : base(0, ownsHandle: true)
    {
        SetHandle(address);
        SizeBytes = sizeBytes;
        File = file;
    }

    /// <summary>Length of the mapping: the container's size.</summary>
    public long SizeBytes { get; }

    /// <summary>The mapped file, for reading a range the conventional way (pread) when a send cannot take it all.</summary>
    public SafeFileHandle File { get; }

    /// <summary>Address of the first byte. Valid only while a reference is held.</summary>
    public nint Address => handle;

    public override bool IsInvalid => handle == 0 || handle == -1;

    /// <summary>Maps the whole file read-only and shared; null where that is not possible (not Linux, mmap refused).</summary>
    public static FileMapping? TryCreate(SafeFileHandle file, long sizeBytes)
    {
        if (!OperatingSystem.IsLinux() || sizeBytes <= 0) return null;
        bool added = false;
        try
        {
            file.DangerousAddRef(ref added);
            nint address = Native.mmap(0, (nuint)sizeBytes, Native.PROT_READ, Native.MAP_SHARED, (int)file.DangerousGetHandle(), 0);
            return address == -1 ? null : new FileMapping(address, sizeBytes, file);
        }
        catch (ObjectDisposedException) { return null; }
        finally { if (added) file.DangerousRelease(); }
    }

    protected override bool ReleaseHandle() => Native.munmap(handle, (nuint)SizeBytes) == 0;

    private static class Native
    {
        public const int PROT_READ = 1, MAP_SHARED = 1;

        [DllImport("libc", SetLastError = true)]
        public static extern nint mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

        [DllImport("libc", SetLastError = true)]
        public static extern int munmap(nint address, nuint length);
    }
}

/// <summary>
/// A container backed by an open file, which an NBD server may move bytes to and from directly: large reads are sent
/// from its <see cref="Mapping"/>, large writes spliced into its <see cref="FileHandle"/>.
/// </summary>
public interface IFileBackedContainer
{
    /// <summary>The container's mapping, or null when it has none (reads then go through <see cref="IStorageContainer.ReadAsync"/>).</summary>
    FileMapping? Mapping { get; }

    /// <summary>The open file (read-write), or null when writes must go through <see cref="IStorageContainer.WriteAsync"/>.</summary>
    SafeFileHandle? FileHandle { get; }
}
