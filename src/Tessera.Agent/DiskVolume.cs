using System.Buffers;
using System.Runtime.CompilerServices;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Nbd;

namespace Tessera.Agent;

/// <summary>The controller's answer to a map fault, as the waiting piece sees it.</summary>
public readonly record struct FaultResult(bool Retry, IoStatus Status)
{
    public static FaultResult RetryLookup => new(true, IoStatus.Ok);
    public static FaultResult Fail(IoStatus status) => new(false, status);
}

/// <summary>Where a volume sends map faults (the agent core: coalescing, the controller link).</summary>
public interface IFaultSink
{
    ValueTask<FaultResult> FaultAsync(DiskVolume volume, long segment, bool write, MapEntry seen, CancellationToken cancellationToken);

    /// <summary>Asks the controller to return whole segments to Zero (a table change; no byte is written).</summary>
    ValueTask<FaultResult> ZeroFaultAsync(DiskVolume volume, long firstSegment, long count, CancellationToken cancellationToken);

    /// <summary>An ahead-request: a write fault no I/O waits on (DiskVolume.Ahead.cs). Not supported unless implemented.</summary>
    ValueTask<FaultResult> AheadFaultAsync(DiskVolume volume, long segment, CancellationToken cancellationToken) => new(FaultResult.Fail(IoStatus.NotSupported));

    /// <summary>False while the agent's lease is lapsed: no entry may then be used, every lookup faults.</summary>
    bool LeaseHolds() => true;
}

/// <summary>
/// One disk presented to this agent's host: its volatile table and its data path.
///
/// A request is split at segment boundaries. Each piece enters the volume's <see cref="InFlightGate"/>, looks its
/// entry up (one atomic load) and acts by the patent's rules: use the location, return zeros, fail with EIO, or
/// fault. A faulting piece leaves the gate, waits for the controller's answer and starts again; it never retries
/// on its own. Pieces of one request are issued together and their results gathered into one status.
///
/// The table object is replaced wholesale when the controller creates the table again (after a controller
/// restart or re-registration); the gate belongs to the volume, not the table, so a blocking command on the new
/// table also waits for pieces still using the old one.
/// </summary>
public sealed partial class DiskVolume
{
    private const int MaxRetriesPerPiece = 64;

    private readonly ContainerSet _containers;
    private readonly IFaultSink _faults;
    private readonly CancellationTokenSource _closed = new();
    private volatile MappingTable _table;
    private long _sizeBytes;

    public DiskVolume(ulong diskId, string name, long sizeBytes, int segmentSizeBytes, bool readOnly, string description,
        ContainerSet containers, IFaultSink faults)
    {
        if (segmentSizeBytes < MapEntry.PhysicalUnitBytes || (segmentSizeBytes & (segmentSizeBytes - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(segmentSizeBytes), "segment size must be a power of two of at least 64 KiB");
        DiskId = diskId;
        Name = name;
        SegmentShift = System.Numerics.BitOperations.Log2((uint)segmentSizeBytes);
        ReadOnly = readOnly;
        Description = description;
        _containers = containers;
        _faults = faults;
        _sizeBytes = sizeBytes;
        _table = new MappingTable(SegmentCountFor(sizeBytes));
    }

    public ulong DiskId { get; }
    public string Name { get; }
    public string Description { get; }
    public int SegmentShift { get; }
    public int SegmentSizeBytes => 1 << SegmentShift;
    public bool ReadOnly { get; internal set; }
    public long SizeBytes => Volatile.Read(ref _sizeBytes);
    public MappingTable Table => _table;
    public InFlightGate Gate { get; } = new();
    public CancellationToken Closed => _closed.Token;
    public bool IsClosed => _closed.IsCancellationRequested;

    internal long SegmentCountFor(long sizeBytes) => (sizeBytes + SegmentSizeBytes - 1) >> SegmentShift;

    /// <summary>Starts over with a table that is all Invalid (the patent's create-table command).</summary>
    internal void ReplaceTable(long sizeBytes, bool readOnly)
    {
        Volatile.Write(ref _sizeBytes, sizeBytes);
        ReadOnly = readOnly;
        _table = new MappingTable(SegmentCountFor(sizeBytes));
    }

    internal void Resize(long sizeBytes)
    {
        _table.Resize(SegmentCountFor(sizeBytes));
        Volatile.Write(ref _sizeBytes, sizeBytes);
    }

    internal void Close() => _closed.Cancel();

    // ---- the data path ----

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken)
    {
        if (!InRange(offset, buffer.Length)) return new(IoStatus.InvalidArgument);
        int firstLength = FirstPieceLength(offset, buffer.Length);
        if (firstLength == buffer.Length) return ReadPieceAsync(offset, buffer, zeroExtents, cancellationToken);
        return ReadSplitAsync(offset, buffer, zeroExtents, cancellationToken);
    }

    public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        if (!InRange(offset, data.Length)) return new(IoStatus.InvalidArgument);
        if (ReadOnly) return new(IoStatus.NotPermitted);
        NoteWrite(offset, data.Length); // a sequential writer asks for its next window early (DiskVolume.Ahead.cs)
        int firstLength = FirstPieceLength(offset, data.Length);
        if (firstLength == data.Length) return WritePieceAsync(offset, data, cancellationToken);
        return WriteSplitAsync(offset, data, cancellationToken);
    }

    /// <summary>
    /// Makes the range read as zeros. Whole segments become a table change made by the controller (they return
    /// to Zero and their space is freed) unless <paramref name="noHole"/> asks to keep them allocated; partial
    /// segments are zeroed in place. With <paramref name="fastZero"/>, anything that would write fails with
    /// <see cref="IoStatus.NotSupported"/> before any change is made.
    /// </summary>
    public async ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fastZero, bool noHole, CancellationToken cancellationToken)
    {
        if (!InRange(offset, length)) return IoStatus.InvalidArgument;
        if (ReadOnly) return IoStatus.NotPermitted;
        var (firstWhole, wholeCount) = noHole ? (0L, 0L) : WholeSegments(offset, length);
        long wholeStart = firstWhole << SegmentShift, wholeEnd = Math.Min(SizeBytes, (firstWhole + wholeCount) << SegmentShift);
        if (wholeCount == 0) wholeStart = wholeEnd = offset + length;
        if (fastZero && (!await PartIsZeroAsync(offset, wholeStart - offset, cancellationToken) || !await PartIsZeroAsync(wholeEnd, offset + length - wholeEnd, cancellationToken)))
            return IoStatus.NotSupported;
        var status = await ZeroInPlaceAsync(offset, wholeStart - offset, cancellationToken);
        if (status == IoStatus.Ok && wholeCount > 0) status = await ZeroWholeSegmentsAsync(firstWhole, wholeCount, cancellationToken);
        if (status == IoStatus.Ok) status = await ZeroInPlaceAsync(wholeEnd, offset + length - wholeEnd, cancellationToken);
        return status;
    }

    /// <summary>TRIM: whole segments are released to Zero; partial segments keep their data (TRIM is a hint).</summary>
    public async ValueTask<IoStatus> TrimAsync(long offset, long length, CancellationToken cancellationToken)
    {
        if (!InRange(offset, length)) return IoStatus.InvalidArgument;
        if (ReadOnly) return IoStatus.NotPermitted;
        var (firstWhole, wholeCount) = WholeSegments(offset, length);
        return wholeCount == 0 ? IoStatus.Ok : await ZeroWholeSegmentsAsync(firstWhole, wholeCount, cancellationToken);
    }

    /// <summary>Segments fully covered by the range; the disk's last, partial segment counts as whole when covered to the end.</summary>
    private (long First, long Count) WholeSegments(long offset, long length)
    {
        long first = (offset + SegmentSizeBytes - 1) >> SegmentShift;
        long end = offset + length;
        long endSegment = end == SizeBytes ? SegmentCountFor(end) : end >> SegmentShift;
        return endSegment > first ? (first, endSegment - first) : (first, 0);
    }

    private async ValueTask<IoStatus> ZeroWholeSegmentsAsync(long first, long count, CancellationToken cancellationToken)
    {
        // Nothing to ask for when the table already says Zero for every segment (common for fresh thin disks).
        // Entries not loaded yet are loaded first (one read fault brings a window of them).
        bool allZero = true;
        for (long s = first; s < first + count && allZero; s++)
        {
            var entry = Lookup(s);
            if ((entry.States & EntryStates.Invalid) != 0)
            {
                var loaded = await FaultAndWaitAsync(s, write: false, entry, 0, cancellationToken);
                if (loaded != IoStatus.Ok) return loaded;
                entry = Lookup(s);
            }
            allZero = entry.States == EntryStates.Zero;
        }
        if (allZero) return IoStatus.Ok;
        if (IsClosed) return IoStatus.Shutdown;
        var result = await _faults.ZeroFaultAsync(this, first, count, cancellationToken);
        return result.Retry ? IoStatus.Ok : result.Status;
    }

    private async ValueTask<IoStatus> ZeroInPlaceAsync(long offset, long length, CancellationToken cancellationToken)
    {
        while (length > 0)
        {
            int n = FirstPieceLength(offset, length);
            var status = await ZeroPieceAsync(offset, n, fastZero: false, cancellationToken);
            if (status != IoStatus.Ok) return status;
            offset += n;
            length -= n;
        }
        return IoStatus.Ok;
    }

    /// <summary>True when every segment touching the range already reads as zeros because of its table state.</summary>
    private async ValueTask<bool> PartIsZeroAsync(long offset, long length, CancellationToken cancellationToken)
    {
        while (length > 0)
        {
            int n = FirstPieceLength(offset, length);
            long segment = offset >> SegmentShift;
            var entry = Lookup(segment);
            if ((entry.States & EntryStates.Invalid) != 0)
            {
                if (await FaultAndWaitAsync(segment, write: false, entry, 0, cancellationToken) != IoStatus.Ok) return false;
                entry = Lookup(segment);
            }
            if (entry.ActionFor(write: false) != EntryAction.ReadZeros) return false;
            offset += n;
            length -= n;
        }
        return true;
    }

    /// <summary>Appends base:allocation extents for the range, loading entries that are not in the table yet.</summary>
    public async ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken cancellationToken)
    {
        if (!InRange(offset, length)) return IoStatus.InvalidArgument;
        while (length > 0)
        {
            int n = FirstPieceLength(offset, length);
            long segment = offset >> SegmentShift;
            for (int attempt = 0; ; attempt++)
            {
                var entry = Lookup(segment);
                var action = entry.ActionFor(write: false);
                if (action == EntryAction.Fault)
                {
                    var status = await FaultAndWaitAsync(segment, write: false, entry, attempt, cancellationToken);
                    if (status != IoStatus.Ok) return status;
                    continue;
                }
                extents.Add(offset, n, action == EntryAction.ReadZeros ? NbdExtentFlags.Hole | NbdExtentFlags.Zero : NbdExtentFlags.Data);
                break;
            }
            offset += n;
            length -= n;
        }
        return IoStatus.Ok;
    }

    private async ValueTask<IoStatus> ReadSplitAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken)
    {
        int pieces = PieceCount(offset, buffer.Length);
        var pending = ArrayPool<ValueTask<IoStatus>>.Shared.Rent(pieces);
        try
        {
            int i = 0;
            for (int done = 0; done < buffer.Length; i++)
            {
                int n = FirstPieceLength(offset + done, buffer.Length - done);
                pending[i] = ReadPieceAsync(offset + done, buffer.Slice(done, n), zeroExtents, cancellationToken);
                done += n;
            }
            var status = await GatherAsync(pending, i);
            // Pieces that waited on a fault finish out of order; NBD replies want the holes in offset order.
            zeroExtents?.SortByOffset();
            return status;
        }
        finally
        {
            ArrayPool<ValueTask<IoStatus>>.Shared.Return(pending, clearArray: true);
        }
    }

    private async ValueTask<IoStatus> WriteSplitAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        int pieces = PieceCount(offset, data.Length);
        var pending = ArrayPool<ValueTask<IoStatus>>.Shared.Rent(pieces);
        try
        {
            int i = 0;
            for (int done = 0; done < data.Length; i++)
            {
                int n = FirstPieceLength(offset + done, data.Length - done);
                pending[i] = WritePieceAsync(offset + done, data.Slice(done, n), cancellationToken);
                done += n;
            }
            return await GatherAsync(pending, i);
        }
        finally
        {
            ArrayPool<ValueTask<IoStatus>>.Shared.Return(pending, clearArray: true);
        }
    }

    /// <summary>Awaits every piece (each ValueTask exactly once) and returns the first failure, if any.</summary>
    private static async ValueTask<IoStatus> GatherAsync(ValueTask<IoStatus>[] pending, int count)
    {
        var result = IoStatus.Ok;
        for (int i = 0; i < count; i++)
        {
            var status = await pending[i];
            if (result == IoStatus.Ok) result = status;
        }
        return result;
    }

    private ValueTask<IoStatus> ReadPieceAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken) =>
        PieceAsync(offset, new ReadOp(offset, buffer, zeroExtents), cancellationToken);

    private ValueTask<IoStatus> WritePieceAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        PieceAsync(offset, new WriteOp(data), cancellationToken);

    /// <summary>What one piece does with its container or with a Zero entry; a struct so the JIT specialises each path.</summary>
    private interface IPieceOp
    {
        bool IsWrite { get; }
        ValueTask<IoStatus> Run(IStorageContainer container, long containerOffset, CancellationToken cancellationToken);
        /// <summary>The entry says Zero and this is a read: fill zeros or record a hole.</summary>
        IoStatus ReadZeros();
    }

    private readonly struct ReadOp(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents) : IPieceOp
    {
        public bool IsWrite => false;

        public ValueTask<IoStatus> Run(IStorageContainer container, long containerOffset, CancellationToken cancellationToken) =>
            container.ReadAsync(containerOffset, buffer, cancellationToken);

        public IoStatus ReadZeros()
        {
            if (zeroExtents is null) buffer.Span.Clear();
            else lock (zeroExtents) zeroExtents.Add(offset, buffer.Length, NbdExtentFlags.Hole | NbdExtentFlags.Zero);
            return IoStatus.Ok;
        }
    }

    private readonly struct WriteOp(ReadOnlyMemory<byte> data) : IPieceOp
    {
        public bool IsWrite => true;

        public ValueTask<IoStatus> Run(IStorageContainer container, long containerOffset, CancellationToken cancellationToken) =>
            container.WriteAsync(containerOffset, data, cancellationToken);

        public IoStatus ReadZeros() => throw new InvalidOperationException("a write never reads zeros");
    }

    /// <summary>One piece inside one segment. Completes synchronously (no allocation) on the mapped path.</summary>
    private ValueTask<IoStatus> PieceAsync<TOp>(long offset, TOp op, CancellationToken cancellationToken) where TOp : struct, IPieceOp =>
        TryStart(offset, op, cancellationToken, out var result, out var seen) ? result : PieceAfterFaultAsync(offset, op, seen, cancellationToken);

    private async ValueTask<IoStatus> PieceAfterFaultAsync<TOp>(long offset, TOp op, MapEntry seen, CancellationToken cancellationToken) where TOp : struct, IPieceOp
    {
        long segment = offset >> SegmentShift;
        for (int attempt = 0; ; attempt++)
        {
            var status = await FaultAndWaitAsync(segment, op.IsWrite, seen, attempt, cancellationToken);
            if (status != IoStatus.Ok) return status;
            if (TryStart(offset, op, cancellationToken, out var result, out seen)) return await result;
        }
    }

    /// <summary>
    /// Enters the gate, looks the entry up and acts on it. False (with the entry seen) when the piece must fault;
    /// the piece has then already left the gate, so it never holds a blocking command up while it waits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryStart<TOp>(long offset, TOp op, CancellationToken cancellationToken, out ValueTask<IoStatus> result, out MapEntry seen) where TOp : struct, IPieceOp
    {
        var token = Gate.Enter();
        seen = Lookup(offset >> SegmentShift);
        switch (seen.ActionFor(op.IsWrite))
        {
            case EntryAction.Map:
                var slot = _containers.Get(seen.ContainerId);
                if (slot?.Container is null)
                {
                    InFlightGate.Leave(token);
                    result = new(IoStatus.IoError);
                    return true;
                }
                var io = op.Run(slot.Container, seen.ContainerOffset + (offset & (SegmentSizeBytes - 1)), cancellationToken);
                if (io.IsCompleted)
                {
                    InFlightGate.Leave(token);
                    result = new(Completed(io.Result, slot, op.IsWrite));
                }
                else
                {
                    result = LeaveWhenDone(io, token, slot, op.IsWrite);
                }
                return true;
            case EntryAction.ReadZeros:
                InFlightGate.Leave(token);
                result = new(op.ReadZeros());
                return true;
            case EntryAction.Error:
                InFlightGate.Leave(token);
                result = new(IoStatus.IoError);
                return true;
            default:
                InFlightGate.Leave(token);
                result = default;
                return false;
        }
    }

    private static async ValueTask<IoStatus> LeaveWhenDone(ValueTask<IoStatus> io, InFlightGate.GateToken token, ContainerSet.Slot slot, bool write)
    {
        try { return Completed(await io, slot, write); }
        finally { InFlightGate.Leave(token); }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static IoStatus Completed(IoStatus status, ContainerSet.Slot slot, bool write)
    {
        if (write && status == IoStatus.Ok) MarkDirty(slot);
        return status;
    }

    private async ValueTask<IoStatus> ZeroPieceAsync(long offset, int length, bool fastZero, CancellationToken cancellationToken)
    {
        long segment = offset >> SegmentShift;
        for (int attempt = 0; ; attempt++)
        {
            var token = Gate.Enter();
            var entry = Lookup(segment);
            var action = entry.ActionFor(write: true);
            if (action == EntryAction.Map)
            {
                try
                {
                    if (fastZero) return IoStatus.NotSupported; // zeroing here would write, not change the table
                    var slot = _containers.Get(entry.ContainerId);
                    if (slot?.Container is null) return IoStatus.IoError;
                    var status = await slot.Container.ZeroAsync(entry.ContainerOffset + (offset & (SegmentSizeBytes - 1)), length, cancellationToken);
                    if (status == IoStatus.Ok) MarkDirty(slot);
                    return status;
                }
                finally { InFlightGate.Leave(token); }
            }
            InFlightGate.Leave(token);
            if (action == EntryAction.Error) return IoStatus.IoError;
            // A Zero segment already reads as zeros: nothing to write, and no reason to allocate it.
            if ((entry.States & (EntryStates.Invalid | EntryStates.Zero)) == EntryStates.Zero) return IoStatus.Ok;
            var faulted = await FaultAndWaitAsync(segment, write: (entry.States & EntryStates.Invalid) == 0, entry, attempt, cancellationToken);
            if (faulted != IoStatus.Ok) return faulted;
        }
    }

    /// <summary>
    /// The entry to act on: Invalid while the agent's lease is lapsed, so I/O stops at the lapse itself, not at the next
    /// tick of the lease check (an I/O admitted before the lapse may still complete after it, within the margin the
    /// controller keeps beyond the agent's lease: docs/architecture.md, "Leases").
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private MapEntry Lookup(long segment) => _faults.LeaseHolds() ? _table.Get(segment) : MapEntry.Invalid;

    private async ValueTask<IoStatus> FaultAndWaitAsync(long segment, bool write, MapEntry seen, int attempt, CancellationToken cancellationToken)
    {
        if (attempt >= MaxRetriesPerPiece) return IoStatus.IoError; // the controller keeps answering "retry" to an entry that still faults
        if (IsClosed) return IoStatus.Shutdown;
        var result = await _faults.FaultAsync(this, segment, write, seen, cancellationToken);
        return result.Retry ? IoStatus.Ok : result.Status;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MarkDirty(ContainerSet.Slot slot)
    {
        if (Volatile.Read(ref slot.Dirty.Value) == 0) Volatile.Write(ref slot.Dirty.Value, 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool InRange(long offset, long length) => offset >= 0 && length >= 0 && offset + length <= SizeBytes;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int FirstPieceLength(long offset, long length) =>
        (int)Math.Min(length, SegmentSizeBytes - (offset & (SegmentSizeBytes - 1)));

    private int PieceCount(long offset, int length) =>
        (int)(((offset + length - 1) >> SegmentShift) - (offset >> SegmentShift) + 1);
}
