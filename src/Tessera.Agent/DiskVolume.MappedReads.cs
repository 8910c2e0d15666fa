using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Nbd;

namespace Tessera.Agent;

/// <summary>
/// Reads sent from the containers' file mappings (docs/architecture.md, "Mapped reads"). The read looks every piece up
/// inside the in-flight gate, exactly as a buffered read does, and keeps the gate until the connection has handed the
/// bytes to the socket (which copies them) or copied out what did not fit: a blocking command that moves or frees a
/// segment waits for that, as it waits for a pread. Only pieces the table maps to a container with a mapping qualify;
/// anything else - a fault, zeros, an error state, a lapsed lease, another container kind - and the whole read takes
/// the buffered path.
/// </summary>
public sealed partial class DiskVolume
{
    private long _mappedReadsBegun;

    /// <summary>Reads sent from file mappings so far (diagnostics, tests).</summary>
    public long MappedReadsBegun => Volatile.Read(ref _mappedReadsBegun);

    /// <summary>Advisory: whether every piece of the range is mapped to a container with a mapping right now.</summary>
    internal bool CanMapRead(long offset, int length)
    {
        var probe = new HasMapping();
        return ForEachFilePiece(offset, length, write: false, ref probe);
    }

    internal bool TryBeginMappedRead(long offset, int length, VolumeMappedRead read)
    {
        var token = Gate.Enter();
        var plan = new AddToMappedRead(read);
        if (!ForEachFilePiece(offset, length, write: false, ref plan))
        {
            read.Clear();
            InFlightGate.Leave(token);
            return false;
        }
        read.Hold(token);
        Interlocked.Increment(ref _mappedReadsBegun);
        return true;
    }

    private readonly struct HasMapping : IFilePieceSink
    {
        public bool Add(ContainerSet.Slot slot, IFileBackedContainer container, long containerOffset, int length) => container.Mapping is not null;
    }

    private readonly struct AddToMappedRead(VolumeMappedRead read) : IFilePieceSink
    {
        public bool Add(ContainerSet.Slot slot, IFileBackedContainer container, long containerOffset, int length) =>
            container.Mapping is { } mapping && read.TryAdd(mapping, containerOffset, length);
    }
}

/// <summary>A mapped read of one <see cref="DiskVolume"/>: holds the disk's in-flight gate from the lookup until <see cref="End"/>.</summary>
internal sealed class VolumeMappedRead : NbdMappedRead
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
