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
    /// Sets and clears state flags on a range, each entry with a compare-and-swap so a concurrent whole-entry
    /// replacement is never half overwritten. Invalid entries are left alone (Invalid already forbids everything
    /// and voids the rest of the entry), so no memory is allocated for never-loaded chunks.
    /// Only NoWrite can be cleared: once Invalid, Zero or Error is set the location is void, and the patent lets
    /// the controller lift them only by replacing the whole entry.
    /// </summary>
    public void ChangeStates(long first, long count, EntryStates set, EntryStates clear)
    {
        if ((clear & ~EntryStates.NoWrite) != 0)
            throw new ArgumentException($"only NoWrite can be cleared; {clear & ~EntryStates.NoWrite} requires replacing the entry", nameof(clear));
        CheckRange(first, count);
        var chunks = _chunks;
        for (long i = 0; i < count; i++)
        {
            long s = first + i;
            var chunk = Volatile.Read(ref chunks[s >> ChunkShift]);
            if (chunk is null)
            {
                // Skip to the next chunk: every entry in this one is Invalid.
                i += ChunkEntries - 1 - (s & ChunkMask);
                continue;
            }
            ref ulong slot = ref chunk[s & ChunkMask];
            while (true)
            {
                ulong stored = Volatile.Read(ref slot);
                if (((stored ^ StoredXor) & (ulong)EntryStates.Invalid) != 0) break;
                ulong updated = new MapEntry(stored ^ StoredXor).WithStates(set, clear).Raw ^ StoredXor;
                if (Interlocked.CompareExchange(ref slot, updated, stored) == stored) break;
            }
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
