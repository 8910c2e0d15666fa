using Microsoft.Win32.SafeHandles;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Nbd;

namespace Tessera.Agent;

/// <summary>
/// Writes spliced from the socket into the containers' files (docs/architecture.md, "Spliced writes"). The connection
/// has the whole payload in its pipe before it asks; the write then looks every piece up inside the in-flight gate,
/// exactly as a buffered write does, and keeps the gate until the pipe has been spliced into the files: a blocking
/// command waits for it as for a pwrite, and it never waits for the client while holding the gate. Only pieces the
/// table maps for writing to a file-backed container qualify; anything else - a fault (thin, NoWrite), an error state,
/// a lapsed lease, another container kind - and the write takes the buffered path.
/// </summary>
public sealed partial class DiskVolume
{
    private long _splicedWritesBegun;

    /// <summary>Writes spliced into container files so far (diagnostics, tests).</summary>
    public long SplicedWritesBegun => Volatile.Read(ref _splicedWritesBegun);

    /// <summary>Advisory: whether every piece of the range is mapped for writing to a file-backed container right now.</summary>
    internal bool CanSpliceWrite(long offset, int length)
    {
        var probe = new HasFile();
        return ForEachFilePiece(offset, length, write: true, ref probe);
    }

    internal bool TryBeginSplicedWrite(long offset, int length, VolumeSplicedWrite write)
    {
        var token = Gate.Enter();
        var plan = new AddToSplicedWrite(write);
        if (!ForEachFilePiece(offset, length, write: true, ref plan))
        {
            write.Clear();
            InFlightGate.Leave(token);
            return false;
        }
        write.Hold(this, token);
        NoteWrite(offset, length); // as WriteAsync does: a sequential writer asks for its next window early
        Interlocked.Increment(ref _splicedWritesBegun);
        return true;
    }

    private readonly struct HasFile : IFilePieceSink
    {
        public bool Add(ContainerSet.Slot slot, IFileBackedContainer container, long containerOffset, int length) => container.FileHandle is not null;
    }

    private readonly struct AddToSplicedWrite(VolumeSplicedWrite write) : IFilePieceSink
    {
        public bool Add(ContainerSet.Slot slot, IFileBackedContainer container, long containerOffset, int length) =>
            container.FileHandle is { } file && write.TryAdd(slot, file, containerOffset, length);
    }

    /// <summary>After a spliced write: the containers written are dirty (a flush must cover them); a refusing one is reported.</summary>
    internal void EndSplicedWrite(ContainerSet.Slot?[] slots, int count, int failedRange, int errno)
    {
        int written = failedRange < 0 ? count : failedRange + 1; // the failed range may hold part of the payload
        for (int i = 0; i < written; i++) MarkDirty(slots[i]!);
        if (failedRange >= 0) _containers.OnIoError(slots[failedRange]!.Id, $"write failed (errno {errno})");
    }
}

/// <summary>A spliced write of one <see cref="DiskVolume"/>: holds the disk's in-flight gate from the lookup until <see cref="End"/>.</summary>
internal sealed class VolumeSplicedWrite : NbdSplicedWrite
{
    private readonly ContainerSet.Slot?[] _slots = new ContainerSet.Slot?[MaxRanges];
    private DiskVolume? _volume;
    private InFlightGate.GateToken _token;

    internal bool TryAdd(ContainerSet.Slot slot, SafeFileHandle file, long offset, int length)
    {
        int before = Count;
        if (!TryAdd(file, offset, length)) return false;
        if (Count > before) _slots[Count - 1] = slot;
        return true;
    }

    internal void Hold(DiskVolume volume, InFlightGate.GateToken token)
    {
        _volume = volume;
        _token = token;
    }

    public override void End(int failedRange, int errno)
    {
        var volume = _volume;
        if (volume is null) return;
        _volume = null;
        try { volume.EndSplicedWrite(_slots, Count, failedRange, errno); }
        finally
        {
            Array.Clear(_slots, 0, Count);
            Clear();
            InFlightGate.Leave(_token);
        }
    }
}
