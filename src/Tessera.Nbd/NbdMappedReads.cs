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
public abstract class NbdMappedRead : NbdRangePlan<FileMapping>
{
    public FileMapping Mapping(int i) => Source(i);

    /// <summary>Total bytes the plan covers.</summary>
    public long TotalBytes
    {
        get
        {
            long total = 0;
            for (int i = 0; i < Count; i++) total += Length(i);
            return total;
        }
    }

    /// <summary>Appends a range (inside the mapping, checked); false when the plan is full, the range is outside the mapping or the mapping is closed.</summary>
    public bool TryAdd(FileMapping mapping, long offset, int length) =>
        offset >= 0 && length > 0 && offset <= mapping.SizeBytes - length && TryAddRange(mapping, offset, length);

    protected override bool Acquire(FileMapping mapping)
    {
        bool added = false;
        try { mapping.DangerousAddRef(ref added); }
        catch (ObjectDisposedException) { return false; }
        return added;
    }

    protected override void Release(FileMapping mapping) => mapping.DangerousRelease();

    /// <summary>Copies <paramref name="count"/> bytes of the plan, from <paramref name="skip"/> on, with pread (not through the mapping).</summary>
    public void CopyTo(Span<byte> destination, long skip, int count)
    {
        for (int i = 0; i < Count && count > 0; i++)
        {
            if (skip >= Length(i)) { skip -= Length(i); continue; }
            int n = (int)Math.Min(Length(i) - skip, count);
            var part = destination[..n];
            long position = Offset(i) + skip;
            while (!part.IsEmpty)
            {
                int got;
                try { got = RandomAccess.Read(Source(i).File, part, position); }
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

    /// <summary>
    /// Releases what <see cref="INbdMappedReadExport.TryBeginMappedRead"/> held (and the ranges). Called exactly once per
    /// successful begin, as soon as the socket has the bytes or they were copied out (or the send gave up).
    /// </summary>
    public abstract void End();
}

/// <summary>A mapped range could not be read (EFAULT from send: an I/O error or a file cut short): the reply is cut off, the container is suspect.</summary>
internal sealed class NbdMappedReadException(string message) : IOException(message);
