using Microsoft.Win32.SafeHandles;

namespace Tessera.Nbd;

/// <summary>
/// An export that can take a write's payload straight from the socket into files: the connection splices the payload
/// into a pipe (no copy), asks the export where the range lives, and splices the pipe into those file ranges (one
/// copy, into the page cache), where recv() into a buffer and pwrite() from it copy twice. See docs/architecture.md,
/// "Spliced writes".
/// </summary>
public interface INbdSplicedWriteExport
{
    /// <summary>A reusable plan, one per connection (spliced writes run one at a time, on the reader).</summary>
    NbdSplicedWrite CreateSplicedWrite();

    /// <summary>Advisory, holds nothing: whether the whole range could be written to files right now (no fault needed).</summary>
    bool CanSpliceWrite(long offset, int length);

    /// <summary>
    /// Resolves the whole range into <paramref name="write"/> and holds whatever keeps those file ranges the right ones
    /// (for an agent: the disk's in-flight gate) until <see cref="NbdSplicedWrite.End"/>; or returns false holding
    /// nothing, and the connection writes through <see cref="INbdExport.WriteAsync"/> instead.
    /// </summary>
    bool TryBeginSplicedWrite(long offset, int length, NbdSplicedWrite write);
}

/// <summary>The file ranges one write goes to, in payload order; contiguous ranges of one file are merged.</summary>
public abstract class NbdSplicedWrite : NbdRangePlan<SafeFileHandle>
{
    public SafeFileHandle File(int i) => Source(i);

    /// <summary>Appends a range; false when the plan is full. A new range (not merged) gets index <see cref="NbdRangePlan{T}.Count"/> - 1.</summary>
    public bool TryAdd(SafeFileHandle file, long offset, int length) => TryAddRange(file, offset, length);

    /// <summary>
    /// Releases what the begin held, after the payload went to the files (<paramref name="failedRange"/> is -1) or the
    /// range at that index refused it (<paramref name="errno"/> says why; earlier ranges were written, that one perhaps
    /// in part). Called exactly once per successful begin.
    /// </summary>
    public abstract void End(int failedRange, int errno);
}
