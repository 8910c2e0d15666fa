using System.Runtime.CompilerServices;

namespace Tessera.Core.Mapping;

/// <summary>
/// The volatile per-(agent, disk) mapping table.
///
/// Entries live in fixed-size chunks allocated the first time an entry inside them is set, so memory
/// follows what the controller has loaded rather than the disk's size: a 64 TiB disk with 1 MiB segments
/// costs one 512 KiB spine of chunk references until entries are loaded. A missing chunk reads as all
/// <see cref="EntryStates.Invalid"/>, and so does a freshly allocated one: entries are stored XOR-ed with the
/// Invalid bit, so the zero-filled memory the runtime hands out already means "Invalid" and needs no fill.
///
/// Lookups are one volatile load of the chunk reference and one of the entry. Each entry is written with a
/// single 64-bit store, so a reader sees either the old or the new entry, never a mix; range updates are
/// atomic per entry, as the patent asks. Ordering between an update and the I/O that used the old entry is
/// the job of <see cref="InFlightGate"/>, not of this class.
/// </summary>
public sealed class MappingTable
{
    public const int ChunkShift = 12;
    public const int ChunkEntries = 1 << ChunkShift;
    private const int ChunkMask = ChunkEntries - 1;
    private const ulong StoredXor = (ulong)EntryStates.Invalid;

    private volatile ulong[]?[] _chunks;
    private long _segmentCount;

    public MappingTable(long segmentCount)
    {
        if (segmentCount < 0) throw new ArgumentOutOfRangeException(nameof(segmentCount));
        _segmentCount = segmentCount;
        _chunks = new ulong[]?[ChunkCount(segmentCount)];
    }

    public long SegmentCount => Volatile.Read(ref _segmentCount);

    /// <summary>Number of chunks that hold loaded entries (for memory accounting and tests).</summary>
    public int LoadedChunkCount
    {
        get
        {
            int n = 0;
            foreach (var c in _chunks) if (c != null) n++;
            return n;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public MapEntry Get(long segment)
    {
        var chunks = _chunks;
        long chunkIndex = segment >> ChunkShift;
        if ((ulong)chunkIndex >= (ulong)chunks.Length) return MapEntry.Invalid;
        var chunk = Volatile.Read(ref chunks[chunkIndex]);
        if (chunk is null) return MapEntry.Invalid;
        return new MapEntry(Volatile.Read(ref chunk[segment & ChunkMask]) ^ StoredXor);
    }

    public void Set(long segment, MapEntry entry)
    {
        CheckRange(segment, 1);
        Volatile.Write(ref ChunkFor(segment)[segment & ChunkMask], entry.Raw ^ StoredXor);
    }

    /// <summary>Sets <paramref name="count"/> entries; entry i gets <paramref name="entryAt"/>(i).</summary>
    public void SetRange(long first, long count, Func<long, MapEntry> entryAt)
    {
        CheckRange(first, count);
        for (long i = 0; i < count; i++)
        {
            long s = first + i;
            Volatile.Write(ref ChunkFor(s)[s & ChunkMask], entryAt(i).Raw ^ StoredXor);
        }
    }

    /// <summary>
    /// Sets <paramref name="count"/> entries to one value, a chunk at a time (a 1 Mi-entry range command is 256
    /// span fills, not a million calls). Invalid over a whole chunk drops the chunk instead: the table reads it as
    /// Invalid and the memory is returned. Each 8-byte store is atomic, so a concurrent reader sees the old or the
    /// new entry, never a mix, exactly as with <see cref="Set"/>.
    /// </summary>
    public void Fill(long first, long count, MapEntry entry)
    {
        CheckRange(first, count);
        ulong stored = entry.Raw ^ StoredXor;
        long end = first + count;
        for (long s = first; s < end;)
        {
            int offset = (int)(s & ChunkMask);
            int length = (int)Math.Min(ChunkEntries - offset, end - s);
            if (length == ChunkEntries && entry.Raw == MapEntry.Invalid.Raw)
                Volatile.Write(ref _chunks[s >> ChunkShift], null);
            else
                ChunkFor(s).AsSpan(offset, length).Fill(stored);
            s += length;
        }
    }

    public void SetRange(long first, ReadOnlySpan<MapEntry> entries)
    {
        CheckRange(first, entries.Length);
        for (int i = 0; i < entries.Length; i++)
        {
            long s = first + i;
            Volatile.Write(ref ChunkFor(s)[s & ChunkMask], entries[i].Raw ^ StoredXor);
        }
    }

    /// <summary>
    /// Sets and clears state flags on a range, one pass per 4096-entry chunk. Invalid entries are left alone
    /// (Invalid already forbids everything and voids the rest of the entry), and never-loaded chunks are skipped,
    /// so no memory is allocated for them. Only NoWrite can be cleared: once Invalid, Zero or Error is set the
    /// location is void, and the patent lets the controller lift them only by replacing the whole entry.
    /// <para>
    /// Each entry is read and rewritten with plain 8-byte loads and stores (no compare-and-swap: that cost 12 ms
    /// per 1 Mi entries). That is safe under the table's writer rule: every entry writer (Set, SetRange, Fill,
    /// ChangeStates, Resize) is called by one thread at a time, the agent's controller reader, so no whole-entry
    /// write can land between this method's load and store. The only other mutation, <see cref="InvalidateAll"/>
    /// (lease lapse), swaps chunk references, not entries: a pass that still holds a dropped chunk writes into
    /// memory no reader can reach any more. Readers see the old or the new entry, never a mix, as with Set.
    /// </para>
    /// </summary>
    public void ChangeStates(long first, long count, EntryStates set, EntryStates clear)
    {
        if ((clear & ~EntryStates.NoWrite) != 0)
            throw new ArgumentException($"only NoWrite can be cleared; {clear & ~EntryStates.NoWrite} requires replacing the entry", nameof(clear));
        CheckRange(first, count);
        var chunks = _chunks;
        long end = first + count;
        for (long s = first; s < end;)
        {
            int offset = (int)(s & ChunkMask);
            int length = (int)Math.Min(ChunkEntries - offset, end - s);
            var chunk = Volatile.Read(ref chunks[s >> ChunkShift]);
            if (chunk != null) ChangeStatesInChunk(chunk.AsSpan(offset, length), (ulong)set & 0xF, (ulong)clear);
            s += length;
        }
    }

    private static void ChangeStatesInChunk(Span<ulong> stored, ulong set, ulong clear)
    {
        for (int i = 0; i < stored.Length; i++)
        {
            ulong raw = stored[i] ^ StoredXor;
            if ((raw & (ulong)EntryStates.Invalid) != 0) continue;
            ulong updated = (raw & ~clear) | set; // MapEntry.WithStates: set and clear touch only the state bits
            if (updated != raw) Volatile.Write(ref stored[i], updated ^ StoredXor);
        }
    }

    /// <summary>Drops every loaded entry: the table reads all Invalid afterwards.</summary>
    public void InvalidateAll()
    {
        var chunks = _chunks;
        for (int i = 0; i < chunks.Length; i++) Volatile.Write(ref chunks[i], null);
    }

    /// <summary>Changes the number of segments. Entries past a shrink are dropped; grown entries read Invalid.</summary>
    public void Resize(long segmentCount)
    {
        lock (this)
        {
            var old = _chunks;
            var resized = new ulong[]?[ChunkCount(segmentCount)];
            Array.Copy(old, resized, Math.Min(old.Length, resized.Length));
            if (segmentCount < SegmentCount && segmentCount % ChunkEntries != 0 && resized.Length > 0)
            {
                // Forget the entries of the last partial chunk beyond the new end.
                var last = resized[^1];
                if (last != null)
                {
                    var copy = (ulong[])last.Clone();
                    Array.Clear(copy, (int)(segmentCount & ChunkMask), ChunkEntries - (int)(segmentCount & ChunkMask));
                    resized[^1] = copy;
                }
            }
            _chunks = resized;
            Volatile.Write(ref _segmentCount, segmentCount);
        }
    }

    private ulong[] ChunkFor(long segment)
    {
        var chunks = _chunks;
        ref var slot = ref chunks[segment >> ChunkShift];
        var chunk = Volatile.Read(ref slot);
        if (chunk != null) return chunk;
        var fresh = new ulong[ChunkEntries];
        return Interlocked.CompareExchange(ref slot, fresh, null) ?? fresh;
    }

    private void CheckRange(long first, long count)
    {
        if (first < 0 || count < 0 || first + count > SegmentCount)
            throw new ArgumentOutOfRangeException(nameof(first), $"range [{first}, {first + count}) outside table of {SegmentCount} segments");
    }

    private static int ChunkCount(long segmentCount) => checked((int)((segmentCount + ChunkEntries - 1) >> ChunkShift));
}
