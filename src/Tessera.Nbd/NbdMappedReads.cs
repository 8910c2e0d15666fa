using Tessera.Core.Containers;

namespace Tessera.Nbd;

/// <summary>
/// An export that can answer a large read with ranges of mapped container files (<see cref="FileMapping"/>): the
/// connection hands those ranges to send(), which copies the bytes once, from the page cache into the socket, where a
/// buffered read copies them twice (pread into the request's buffer, then send). See docs/architecture.md,
/// "Mapped reads".
/// </summary>
public interface INbdMappedReadExport
{
    /// <summary>A reusable plan, one per request slot of a connection (created once, so the steady path allocates nothing).</summary>
    NbdMappedRead CreateMappedRead();

    /// <summary>
    /// Whether the whole range could be sent from mappings right now. Advisory and holds nothing: the connection uses
    /// it to decide, when the request arrives, to resolve the read only when its reply is sent.
    /// </summary>
    bool CanMapRead(long offset, int length);

    /// <summary>
    /// Resolves the whole range into <paramref name="read"/> and holds whatever keeps those ranges the right ones (for
    /// an agent: the disk's in-flight gate) until <see cref="NbdMappedRead.End"/>; or returns false holding nothing,
    /// and the connection reads through <see cref="INbdExport.ReadAsync"/> instead.
    /// </summary>
    bool TryBeginMappedRead(long offset, int length, NbdMappedRead read);
}

/// <summary>
/// The mapped ranges one read is sent from, in order; contiguous ranges of one mapping are merged. Each mapping is
/// referenced from <see cref="TryAdd"/> to <see cref="End"/>, so a container closed meanwhile stays mapped until then.
/// </summary>
public abstract class NbdMappedRead
{
    /// <summary>Most ranges one read may need; a read that would need more is read into the buffer instead.</summary>
    public const int MaxRanges = 64;

    private readonly FileMapping?[] _mappings = new FileMapping?[MaxRanges];
    private readonly long[] _offsets = new long[MaxRanges];
    private readonly int[] _lengths = new int[MaxRanges];

    public int Count { get; private set; }

    public FileMapping Mapping(int i) => _mappings[i]!;
    public long Offset(int i) => _offsets[i];
    public int Length(int i) => _lengths[i];

    /// <summary>Total bytes the plan covers.</summary>
    public long TotalBytes
    {
        get
        {
            long total = 0;
            for (int i = 0; i < Count; i++) total += _lengths[i];
            return total;
        }
    }

    /// <summary>Appends a range (inside the mapping, checked); false when the plan is full, the range is outside the mapping or the mapping is closed.</summary>
    public bool TryAdd(FileMapping mapping, long offset, int length)
    {
        if (offset < 0 || length <= 0 || offset > mapping.SizeBytes - length) return false;
        int last = Count - 1;
        if (last >= 0 && ReferenceEquals(_mappings[last], mapping) && _offsets[last] + _lengths[last] == offset && _lengths[last] <= int.MaxValue - length)
        {
            _lengths[last] += length;
            return true;
        }
        if (Count == MaxRanges) return false;
        bool added = false;
        try { mapping.DangerousAddRef(ref added); }
        catch (ObjectDisposedException) { return false; }
        if (!added) return false;
        _mappings[Count] = mapping;
        _offsets[Count] = offset;
        _lengths[Count] = length;
        Count++;
        return true;
    }

    /// <summary>Copies <paramref name="count"/> bytes of the plan, from <paramref name="skip"/> on, with pread (not through the mapping).</summary>
    public void CopyTo(Span<byte> destination, long skip, int count)
    {
        for (int i = 0; i < Count && count > 0; i++)
        {
            if (skip >= _lengths[i]) { skip -= _lengths[i]; continue; }
            int n = (int)Math.Min(_lengths[i] - skip, count);
            var part = destination[..n];
            long position = _offsets[i] + skip;
            while (!part.IsEmpty)
            {
                int got;
                try { got = RandomAccess.Read(_mappings[i]!.File, part, position); }
                catch (Exception e) when (e is IOException or ObjectDisposedException or UnauthorizedAccessException)
                {
                    throw new NbdMappedReadException("reading the file failed: " + e.Message);
                }
                if (got == 0) throw new NbdMappedReadException("the file ended before the range did");
                part = part[got..];
                position += got;
            }
            destination = destination[n..];
            count -= n;
            skip = 0;
        }
    }

    /// <summary>Drops the ranges and their mapping references.</summary>
    public void Clear()
    {
        for (int i = 0; i < Count; i++)
        {
            _mappings[i]!.DangerousRelease();
            _mappings[i] = null;
        }
        Count = 0;
    }

    /// <summary>
    /// Releases what <see cref="INbdMappedReadExport.TryBeginMappedRead"/> held (and the ranges). Called exactly once per
    /// successful begin, as soon as the socket has the bytes or they were copied out (or the send gave up).
    /// </summary>
    public abstract void End();
}

/// <summary>A mapped range could not be read (EFAULT from send: an I/O error or a file cut short): the reply is cut off, the container is suspect.</summary>
internal sealed class NbdMappedReadException(string message) : IOException(message);
