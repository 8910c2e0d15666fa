using System.Buffers.Binary;

namespace Tessera.Simulation;

/// <summary>
/// The reference model of one disk, per 512-byte sector. <see cref="_possible"/> holds every value a read
/// starting now may legally return: the latest acknowledged write, writes that overlapped it in time (their
/// order on the medium is unknown), and writes that failed (they may or may not have landed). A read may also
/// return any write in flight during it. <see cref="_durable"/> is a superset: what the sector may hold after
/// a power loss; a completed flush narrows it to the flushing agent's writes that completed before the flush was
/// issued (the NBD FLUSH promise).
/// </summary>
public sealed class DiskModel
{
    public const int SectorBytes = 512;
    private static readonly ulong Magic = 0x315F4D4953534554; // "TESSIM_1"

    private HashSet<long>[] _possible;
    private HashSet<long>[] _durable;
    private readonly List<ReadRec> _activeReads = new();
    private readonly Dictionary<long, WriteRec> _inflight = new();
    private readonly Dictionary<WriteRec, long> _lingering = new();
    private readonly Checker _checker;
    public Checker Checker => _checker;

    public DiskModel(Checker checker, ulong diskId, string name, long sizeBytes)
    {
        _checker = checker;
        DiskId = diskId;
        Name = name;
        Sectors = sizeBytes / SectorBytes;
        _possible = new HashSet<long>[Sectors];
        _durable = new HashSet<long>[Sectors];
        for (long s = 0; s < Sectors; s++)
        {
            _possible[s] = [0];
            _durable[s] = [0];
        }
    }

    /// <summary>A disk whose image starts as a snapshot's (a snapshot itself, read-only, or a clone of one).</summary>
    public DiskModel(Checker checker, ulong diskId, string name, (HashSet<long>[] Possible, HashSet<long>[] Durable) image, bool readOnly)
    {
        _checker = checker;
        DiskId = diskId;
        Name = name;
        Sectors = image.Possible.Length;
        _possible = image.Possible.Select(p => new HashSet<long>(p)).ToArray();
        _durable = image.Durable.Select(p => new HashSet<long>(p)).ToArray();
        ReadOnly = readOnly;
    }

    public bool ReadOnly { get; }
    public ulong DiskId { get; }
    public string Name { get; }
    public long Sectors { get; private set; }
    public int InflightWrites => _inflight.Count;

    // ---- writes

    public WriteRec StartWrite(string agent, long firstSector, int count, WriteKind kind)
    {
        var w = _checker.NewWrite(this, agent, firstSector, count, kind);
        _inflight[w.Id] = w;
        foreach (var r in _activeReads)
            if (r.Overlaps(firstSector, count)) r.Concurrent.Add(w);
        return w;
    }

    public void EndWrite(WriteRec w, bool ok)
    {
        w.EndSeq = _checker.NextSeq();
        w.Ok = ok;
        _inflight.Remove(w.Id);
        for (long s = w.FirstSector; s < w.FirstSector + w.Count; s++)
        {
            var set = _possible[s];
            if (ok && w.Kind != WriteKind.Trim)
            {
                // Everything that ended before this write started is certainly overwritten.
                set.RemoveWhere(id => id == 0 || _checker.Write(id).EndSeq < w.StartSeq);
            }
            set.Add(w.Id);
            _durable[s].Add(w.Id);
        }
    }

    /// <summary>
    /// A failed or abandoned zeroing that the controller may still carry out until <paramref name="untilNs"/>: it
    /// stays in flight (any read may see it, no later write supersedes it) until then, and ends as failed.
    /// </summary>
    public void Linger(WriteRec w, long untilNs) => _lingering[w] = untilNs;

    public void ExpireLingering(long nowNs)
    {
        if (_lingering.Count == 0) return;
        foreach (var (w, until) in _lingering.Where(kv => kv.Value <= nowNs).OrderBy(kv => kv.Key.Id).ToList())
        {
            _lingering.Remove(w);
            EndWrite(w, ok: false);
        }
    }

    /// <summary>
    /// A flush by <paramref name="agent"/> issued at <paramref name="issuedSeq"/> completed successfully: it covers the
    /// writes that had ended by then, and <paramref name="fua"/>, the FUA write it was issued for (its data was in place
    /// when its flush began, though the write itself ends only after the flush). A write that ended while the flush ran
    /// is not covered: the agent may have passed its container already (seed 110002714, docs/reliability.md).
    /// </summary>
    public void FlushCompleted(string agent, long issuedSeq, long first = 0, long count = -1, WriteRec? fua = null)
    {
        if (count < 0) count = Sectors;
        for (long s = first; s < first + count; s++)
        {
            var set = _possible[s];
            bool covered = true;
            foreach (var id in set)
            {
                var w = id == 0 ? null : _checker.Write(id);
                if (w is null || w.Agent != agent || !w.Ok || (w.EndSeq > issuedSeq && w != fua)) { covered = false; break; }
            }
            if (covered)
            {
                _durable[s].Clear();
                _durable[s].UnionWith(set);
            }
        }
    }

    /// <summary>Every container lost what it had not flushed: a sector now holds one of its durable candidates.</summary>
    public void PowerLoss()
    {
        for (long s = 0; s < Sectors; s++)
        {
            _possible[s].Clear();
            _possible[s].UnionWith(_durable[s]);
            foreach (var w in _inflight.Values)
                if (s >= w.FirstSector && s < w.FirstSector + w.Count) _possible[s].Add(w.Id);
        }
    }

    /// <summary>The disk grew to <paramref name="sizeBytes"/>: the new sectors read as zeros until written.</summary>
    public void Grow(long sizeBytes)
    {
        long sectors = sizeBytes / SectorBytes;
        if (sectors <= Sectors) return;
        var possible = new HashSet<long>[sectors];
        var durable = new HashSet<long>[sectors];
        Array.Copy(_possible, possible, Sectors);
        Array.Copy(_durable, durable, Sectors);
        for (long s = Sectors; s < sectors; s++)
        {
            possible[s] = [0];
            durable[s] = [0];
        }
        _possible = possible;
        _durable = durable;
        Sectors = sectors;
    }

    // ---- reads

    public ReadRec StartRead(string agent, long firstSector, int count)
    {
        var r = new ReadRec(agent, firstSector, count, _checker.NextSeq());
        r.Allowed = new HashSet<long>[count];
        for (int i = 0; i < count; i++) r.Allowed[i] = [.. _possible[firstSector + i]];
        foreach (var w in _inflight.Values)
            if (r.Overlaps(w.FirstSector, w.Count)) r.Concurrent.Add(w);
        _activeReads.Add(r);
        return r;
    }

    /// <summary>
    /// The image a snapshot taken during [<paramref name="r"/>'s start, now] may hold: what a read over the same
    /// span may return; after a power loss, whatever the parent's sectors may fall back to.
    /// </summary>
    public (HashSet<long>[] Possible, HashSet<long>[] Durable) SnapshotImage(ReadRec r)
    {
        _activeReads.Remove(r);
        // The span's length, not the disk's: a grow that raced with the snapshot adds only zeros past it.
        var possible = new HashSet<long>[r.Count];
        var durable = new HashSet<long>[r.Count];
        for (long s = 0; s < r.Count; s++)
        {
            possible[s] = [.. r.Allowed![s]];
            foreach (var w in r.Concurrent)
                if (s >= w.FirstSector && s < w.FirstSector + w.Count) possible[s].Add(w.Id);
            durable[s] = [.. _durable[s], .. possible[s]];
        }
        return (possible, durable);
    }

    public (HashSet<long>[] Possible, HashSet<long>[] Durable) CurrentImage() => (_possible, _durable);

    /// <summary>Judges the bytes a successful read returned. False (and a violation recorded) when any sector is not allowed.</summary>
    public bool EndRead(ReadRec r, ReadOnlySpan<byte> data, bool ok, string what, Func<long, bool>? unread = null)
    {
        _activeReads.Remove(r);
        if (!ok) return true;
        bool good = true;
        for (int i = 0; i < r.Count; i++)
        {
            long sector = r.FirstSector + i;
            if (unread is not null && unread(sector)) continue;
            var allowed = r.Allowed![i];
            foreach (var w in r.Concurrent)
                if (sector >= w.FirstSector && sector < w.FirstSector + w.Count) allowed.Add(w.Id);
            var got = Decode(data.Slice(i * SectorBytes, SectorBytes), sector, out string? problem);
            _checker.Trace.Add(got);
            if (problem is null && IsAllowed(got, sector, allowed, out problem)) continue;
            good = false;
            _checker.Violation("read", $"{what}: disk {Name} sector {sector}: {problem}; allowed {Describe(allowed)}");
            break; // one report per read is enough
        }
        return good;
    }

    private bool IsAllowed(long got, long sector, HashSet<long> allowed, out string? problem)
    {
        problem = null;
        if (got == 0)
        {
            if (allowed.Contains(0)) return true;
            foreach (var id in allowed)
                if (_checker.Write(id).Kind is WriteKind.Zeroes or WriteKind.Trim) return true;
            problem = "read zeros";
            return false;
        }
        if (allowed.Contains(got)) return true;
        var w = _checker.TryWrite(got);
        problem = w is null ? $"read unknown write {got}" : $"read write {w}";
        return false;
    }

    private string Describe(HashSet<long> ids) =>
        "{" + string.Join(", ", ids.Order().Take(6).Select(id => id == 0 ? "zeros" : _checker.Write(id).ToString())) + (ids.Count > 6 ? ", ..." : "") + "}";

    // ---- sector encoding

    public static void Encode(Span<byte> sector, ulong diskId, long sectorIndex, long writeId)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(sector, Magic);
        BinaryPrimitives.WriteUInt64LittleEndian(sector[8..], diskId);
        BinaryPrimitives.WriteInt64LittleEndian(sector[16..], sectorIndex);
        BinaryPrimitives.WriteInt64LittleEndian(sector[24..], writeId);
        ulong x = (ulong)writeId * 0x9E3779B97F4A7C15UL ^ (ulong)sectorIndex;
        for (int i = 32; i < SectorBytes - 8; i += 8)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            BinaryPrimitives.WriteUInt64LittleEndian(sector[i..], x);
        }
        BinaryPrimitives.WriteUInt64LittleEndian(sector[(SectorBytes - 8)..], Checksum(sector[..(SectorBytes - 8)]));
    }

    /// <summary>The write id a sector holds (0 for zeros), or -1 with <paramref name="problem"/> for anything else.</summary>
    public long Decode(ReadOnlySpan<byte> sector, long expectedSector, out string? problem)
    {
        problem = null;
        if (!sector.ContainsAnyExcept((byte)0)) return 0;
        if (BinaryPrimitives.ReadUInt64LittleEndian(sector) != Magic) { problem = "read bytes that no write of the sim produced"; return -1; }
        if (BinaryPrimitives.ReadUInt64LittleEndian(sector[(SectorBytes - 8)..]) != Checksum(sector[..(SectorBytes - 8)])) { problem = "read a sector with a bad checksum (torn or corrupt)"; return -1; }
        long id = BinaryPrimitives.ReadInt64LittleEndian(sector[24..]);
        long index = BinaryPrimitives.ReadInt64LittleEndian(sector[16..]);
        ulong disk = BinaryPrimitives.ReadUInt64LittleEndian(sector[8..]);
        var w = _checker.TryWrite(id);
        if (w is null) { problem = $"read unknown write id {id}"; return -1; }
        if (!_checker.SameLineage(disk, DiskId) || index != expectedSector)
        {
            problem = $"read a sector of disk {disk} (sector {index}) written by {w}";
            return -1;
        }
        return id;
    }

    private static ulong Checksum(ReadOnlySpan<byte> data)
    {
        ulong h = 14695981039346656037UL;
        foreach (byte b in data) h = (h ^ b) * 1099511628211UL;
        return h;
    }
}

public enum WriteKind { Write, Fua, Zeroes, Trim }

public sealed class WriteRec(long id, string disk, string agent, long firstSector, int count, WriteKind kind, long startSeq)
{
    public long Id { get; } = id;
    public string Disk { get; } = disk;
    public string Agent { get; } = agent;
    public long FirstSector { get; } = firstSector;
    public int Count { get; } = count;
    public WriteKind Kind { get; } = kind;
    public long StartSeq { get; } = startSeq;
    public long EndSeq { get; set; } = long.MaxValue;
    public bool Ok { get; set; }
    public override string ToString() => $"w{Id}({Kind} by {Agent} on {Disk} [{FirstSector},+{Count}) seq {StartSeq}..{(EndSeq == long.MaxValue ? "open" : EndSeq.ToString())}{(EndSeq == long.MaxValue ? "" : Ok ? " ok" : " failed")})";
}

public sealed class ReadRec(string agent, long firstSector, int count, long startSeq)
{
    public string Agent { get; } = agent;
    public long FirstSector { get; } = firstSector;
    public int Count { get; } = count;
    public long StartSeq { get; } = startSeq;
    public HashSet<long>[]? Allowed { get; set; }
    public List<WriteRec> Concurrent { get; } = new();
    public bool Overlaps(long first, int count) => first < FirstSector + Count && FirstSector < first + count;
}

/// <summary>All disk models, write records, violations, and the trace hash.</summary>
public sealed class Checker(Action<string> traceLine)
{
    private readonly Dictionary<long, WriteRec> _writes = new();
    private readonly Dictionary<ulong, ulong> _lineage = new(); // disk id -> the disk its data came from
    private long _nextWriteId;
    private long _seq;

    public List<string> Violations { get; } = new();
    public TraceHash Trace { get; } = new();

    public long NextSeq() => ++_seq;

    /// <summary>The last sequence number handed out: every event numbered up to it has happened.</summary>
    public long CurrentSeq => _seq;
    public long PeekNextWriteId => _nextWriteId + 1;

    public WriteRec NewWrite(DiskModel disk, string agent, long firstSector, int count, WriteKind kind)
    {
        var w = new WriteRec(++_nextWriteId, disk.Name, agent, firstSector, count, kind, NextSeq());
        _writes[w.Id] = w;
        return w;
    }

    public WriteRec Write(long id) => _writes[id];
    public WriteRec? TryWrite(long id) => _writes.GetValueOrDefault(id);

    public void SetLineage(ulong diskId, ulong sourceDiskId) => _lineage[diskId] = sourceDiskId;

    public ulong Root(ulong disk)
    {
        while (_lineage.TryGetValue(disk, out var parent)) disk = parent;
        return disk;
    }

    public bool SameLineage(ulong written, ulong reading)
    {
        for (ulong d = reading; ; )
        {
            if (d == written) return true;
            if (!_lineage.TryGetValue(d, out d)) return false;
        }
    }

    public void Violation(string invariant, string message)
    {
        var line = $"VIOLATION [{invariant}] {message}";
        Violations.Add(line);
        traceLine(line);
    }
}

/// <summary>FNV-1a over everything the run did: a replay must produce the same value.</summary>
public sealed class TraceHash
{
    public ulong Value { get; private set; } = 14695981039346656037UL;

    public void Add(long x)
    {
        for (int i = 0; i < 8; i++) Value = (Value ^ (byte)(x >> (8 * i))) * 1099511628211UL;
    }

    public void Add(string s)
    {
        foreach (char c in s) Value = (Value ^ c) * 1099511628211UL;
        Value = (Value ^ 0xFF) * 1099511628211UL;
    }
}
