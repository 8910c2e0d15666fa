using Tessera.Core.Containers;
using Tessera.Core.Mapping;

namespace Tessera.Agent;

/// <summary>
/// The one walk behind mapped reads and spliced writes (DiskVolume.MappedReads.cs, DiskVolume.SplicedWrites.cs): each
/// piece of a range as the table maps it now, on a file-backed container, handed to a sink that checks it or adds it
/// to a plan. A piece that is not mapped for this kind of access (a fault, zeros, an error state, a lapsed lease, another
/// container kind) or that the sink refuses ends the walk with false.
/// </summary>
public sealed partial class DiskVolume
{
    private interface IFilePieceSink
    {
        bool Add(ContainerSet.Slot slot, IFileBackedContainer container, long containerOffset, int length);
    }

    private bool ForEachFilePiece<TSink>(long offset, int length, bool write, ref TSink sink) where TSink : struct, IFilePieceSink
    {
        if (length <= 0 || !InRange(offset, length) || IsClosed || (write && ReadOnly)) return false;
        for (long position = offset, end = offset + length; position < end;)
        {
            int n = FirstPieceLength(position, end - position);
            var entry = Lookup(position >> SegmentShift);
            if (entry.ActionFor(write) != EntryAction.Map
                || _containers.Get(entry.ContainerId) is not { Container: IFileBackedContainer container } slot
                || !sink.Add(slot, container, entry.ContainerOffset + (position & (SegmentSizeBytes - 1)), n))
                return false;
            position += n;
        }
        return true;
    }
}
