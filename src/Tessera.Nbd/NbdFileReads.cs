using Microsoft.Win32.SafeHandles;

namespace Tessera.Nbd;

/// <summary>
/// An export that can answer a read with ranges of open files, which the connection sends with sendfile(): the
/// kernel hands page-cache pages to the socket instead of the server copying them into its buffer and out again.
/// For a 1 MiB read that is two copies of the three a served read costs (the client's own receive is the third).
/// </summary>
public interface INbdFileReadExport
{
    /// <summary>A reusable plan, one per request slot of a connection (created once, so the steady path allocates nothing).</summary>
    NbdFileRead CreateFileRead();

    /// <summary>
    /// Resolves the whole range into <paramref name="read"/> and holds whatever keeps those file ranges the right
    /// ones until <see cref="NbdFileRead.End"/>; or returns false, holding nothing, when any part cannot be served
    /// from a file right now (the connection then reads into its buffer through <see cref="INbdExport.ReadAsync"/>).
    /// </summary>
    bool TryBeginFileRead(long offset, int length, NbdFileRead read);
}

/// <summary>The file ranges one read is sent from, in order. Contiguous ranges of one file are merged.</summary>
public abstract class NbdFileRead
{
    /// <summary>Most ranges one read may need; a read that would need more is served from the buffer instead.</summary>
    public const int MaxRanges = 64;

    private readonly SafeFileHandle?[] _files = new SafeFileHandle?[MaxRanges];
    private readonly long[] _offsets = new long[MaxRanges];
    private readonly int[] _lengths = new int[MaxRanges];

    public int Count { get; private set; }

    public SafeFileHandle File(int i) => _files[i]!;
    public long Offset(int i) => _offsets[i];
    public int Length(int i) => _lengths[i];

    /// <summary>Appends a range; false when the plan is full.</summary>
    public bool TryAdd(SafeFileHandle file, long offset, int length)
    {
        int last = Count - 1;
        if (last >= 0 && ReferenceEquals(_files[last], file) && _offsets[last] + _lengths[last] == offset && _lengths[last] <= int.MaxValue - length)
        {
            _lengths[last] += length;
            return true;
        }
        if (Count == MaxRanges) return false;
        _files[Count] = file;
        _offsets[Count] = offset;
        _lengths[Count] = length;
        Count++;
        return true;
    }

    public void Clear()
    {
        Array.Clear(_files, 0, Count);
        Count = 0;
    }

    /// <summary>Releases what <see cref="INbdFileReadExport.TryBeginFileRead"/> held. Called exactly once per successful begin, after the last byte was handed to the socket (or the send gave up).</summary>
    public abstract void End();
}

/// <summary>sendfile() failed on the file side (EIO, or the file ended early): the reply is cut off, the container is suspect.</summary>
internal sealed class NbdFileReadException(string message) : IOException(message);
