using System.Runtime.CompilerServices;

namespace Tessera.Core.Mapping;

/// <summary>The per-entry state flags of the patent (240, 250, 260, 270).</summary>
[Flags]
public enum EntryStates : byte
{
    None = 0,
    Invalid = 1,
    NoWrite = 2,
    Zero = 4,
    Error = 8,
    All = Invalid | NoWrite | Zero | Error,
}

/// <summary>What the agent does with one piece of a request, decided from an entry alone.</summary>
public enum EntryAction : byte
{
    /// <summary>Use the location.</summary>
    Map,
    /// <summary>Return zeros without touching a container (reads of a Zero entry).</summary>
    ReadZeros,
    /// <summary>Send a map fault to the controller and wait for its response.</summary>
    Fault,
    /// <summary>Fail with EIO; the location is ignored.</summary>
    Error,
}

/// <summary>
/// One mapping table entry packed into 64 bits so that a lookup is one atomic load:
/// bits 0..3 are the state flags, bits 4..19 the container id, bits 20..63 the physical index.
/// The physical index counts <see cref="PhysicalUnitBytes"/> (64 KiB, the smallest segment size) units from the
/// start of the container, so disks with different segment sizes can share one container.
/// </summary>
public readonly record struct MapEntry(ulong Raw)
{
    public const int ContainerIdBits = 16;
    public const int PhysicalIndexBits = 44;
    public const ushort MaxContainerId = ushort.MaxValue;
    public const int PhysicalUnitShift = 16;
    public const int PhysicalUnitBytes = 1 << PhysicalUnitShift;
    public const long MaxPhysicalIndex = (1L << PhysicalIndexBits) - 1;

    private const int StateBits = 4;
    private const ulong StateMask = 0xF;

    /// <summary>The entry every new table starts with and that lost entries revert to.</summary>
    public static MapEntry Invalid => new((ulong)EntryStates.Invalid);

    /// <summary>A segment that reads as zeros and has no storage yet (thin provisioning).</summary>
    public static MapEntry Zero => new((ulong)EntryStates.Zero);

    public static MapEntry Error => new((ulong)EntryStates.Error);

    public static MapEntry Mapped(ushort containerId, long physicalIndex, EntryStates states = EntryStates.None)
    {
        if ((ulong)physicalIndex > MaxPhysicalIndex) throw new ArgumentOutOfRangeException(nameof(physicalIndex));
        return new(((ulong)physicalIndex << (StateBits + ContainerIdBits)) | ((ulong)containerId << StateBits) | ((ulong)states & StateMask));
    }

    public EntryStates States => (EntryStates)(Raw & StateMask);
    public ushort ContainerId => (ushort)(Raw >> StateBits);
    public long PhysicalIndex => (long)(Raw >> (StateBits + ContainerIdBits));

    /// <summary>Byte offset of the location inside its container.</summary>
    public long ContainerOffset => PhysicalIndex << PhysicalUnitShift;

    /// <summary>True when the location means something: no Invalid, Zero or Error flag voids it.</summary>
    public bool HasLocation => (States & (EntryStates.Invalid | EntryStates.Zero | EntryStates.Error)) == 0;

    public MapEntry WithStates(EntryStates set, EntryStates clear) =>
        new((Raw & ~StateMask) | (((ulong)States & ~(ulong)clear | (ulong)set) & StateMask));

    /// <summary>
    /// The patent's rules: Invalid wins over everything, then Error, then Zero, then NoWrite.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public EntryAction ActionFor(bool write)
    {
        var s = States;
        if (s == EntryStates.None) return EntryAction.Map;
        if ((s & EntryStates.Invalid) != 0) return EntryAction.Fault;
        if ((s & EntryStates.Error) != 0) return EntryAction.Error;
        if ((s & EntryStates.Zero) != 0) return write ? EntryAction.Fault : EntryAction.ReadZeros;
        return write ? EntryAction.Fault : EntryAction.Map; // NoWrite
    }

    public override string ToString() => HasLocation || States == EntryStates.NoWrite
        ? $"{ContainerId}:{PhysicalIndex}{(States == EntryStates.None ? "" : " " + States)}"
        : States.ToString();
}
