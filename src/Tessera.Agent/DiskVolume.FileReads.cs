using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Nbd;

namespace Tessera.Agent;

/// <summary>
/// Reads answered from the containers' files with sendfile (docs/architecture.md, "Zero-copy reads"). The read looks
/// every piece up inside the in-flight gate, exactly like a buffered read, and keeps the gate until the connection
/// has handed the last byte to the socket: a blocking command that moves or frees a segment therefore waits for the
/// send, as it waits for a pread. Only pieces the table maps to a container that promises the send-file rule
/// (<see cref="ISendFileSource"/>) qualify; anything else - a fault, zeros, an error state, a lapsed lease, another
/// container kind - and the whole read takes the buffered path.
/// </summary>
public sealed partial class DiskVolume
{
    private long _fileReadsBegun;

    /// <summary>Reads answered from files so far (diagnostics, tests).</summary>
    public long FileReadsBegun => Volatile.Read(ref _fileReadsBegun);

    internal bool TryBeginFileRead(long offset, int length, VolumeFileRead read)
    {
        if (length <= 0 || !InRange(offset, length)) return false;
        var token = Gate.Enter();
        long position = offset, end = offset + length;
        while (position < end)
        {
            int n = (int)Math.Min(end - position, SegmentSizeBytes - (position & (SegmentSizeBytes - 1)));
            var entry = Lookup(position >> SegmentShift);
            if (entry.ActionFor(write: false) != EntryAction.Map
                || _containers.Get(entry.ContainerId)?.Container is not ISendFileSource source
                || !source.TryGetSendFileHandle(out var file)
                || !read.TryAdd(file, entry.ContainerOffset + (position & (SegmentSizeBytes - 1)), n))
            {
                InFlightGate.Leave(token);
                read.Clear();
                return false;
            }
            position += n;
        }
        read.Hold(token);
        Interlocked.Increment(ref _fileReadsBegun);
        return true;
    }
}

/// <summary>A file read of one <see cref="DiskVolume"/>: holds the disk's in-flight gate from the lookup until <see cref="End"/>.</summary>
internal sealed class VolumeFileRead : NbdFileRead
{
    private InFlightGate.GateToken _token;
    private bool _holding;

    internal void Hold(InFlightGate.GateToken token)
    {
        _token = token;
        _holding = true;
    }

    public override void End()
    {
        Clear();
        if (!_holding) return;
        _holding = false;
        InFlightGate.Leave(_token);
    }
}
