using Microsoft.Data.Sqlite;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Store;

/// <summary>A snapshot: a read-only disk row named "parent@name" plus this row. Ready once every agent set NoWrite.</summary>
public sealed record SnapshotRow(DiskRow Disk, ulong ParentDiskId, string Name, bool Ready);

/// <summary>A physical segment: (container, first 64 KiB unit). Shared by every segment row that names it.</summary>
public readonly record struct PhysicalLocation(ushort ContainerId, long PhysicalIndex);

/// <summary>
/// Snapshots, clones, resize and reference counting.
///
/// A snapshot of disk D named S is a row in <c>disks</c> named "D@S" (disk names cannot contain '@') plus a row in
/// <c>snapshots</c>; its segment rows name the same physical locations as D's did when it was taken, with NoWrite.
/// A clone is an ordinary disk whose rows name a snapshot's locations with NoWrite. So a physical location can be
/// named by many segment rows; it is in use while any row names it (the index segments_by_location makes the count
/// cheap). Every method that drops references returns the locations that no row names any more, computed in the
/// same transaction that dropped them, so when two disks drop the last two references concurrently exactly one of
/// them sees the count reach zero and frees the space.
/// </summary>
public sealed partial class ControllerStore
{
    /// <summary>Separator between a disk's name and its snapshot's name in the snapshot's reference.</summary>
    public const char SnapshotSeparator = '@';

    private const string SnapshotSchema = """
        CREATE TABLE snapshots (
            disk_id INTEGER PRIMARY KEY NOT NULL REFERENCES disks(id),
            parent_disk_id INTEGER NOT NULL REFERENCES disks(id),
            name TEXT NOT NULL,
            ready INTEGER NOT NULL DEFAULT 0,
            UNIQUE (parent_disk_id, name)
        );
        """;

    private const int NotMapped = (int)(EntryStates.Invalid | EntryStates.Zero | EntryStates.Error);

    /// <summary>Schema 1 → 2 adds the snapshots table; returns the version after migration.</summary>
    private static int MigrateSnapshots(SqliteConnection db, SqliteTransaction tx, int version)
    {
        if (version != 1) return version;
        Exec(db, tx, SnapshotSchema);
        Exec(db, tx, "UPDATE meta SET value='2' WHERE key='schema_version'");
        return 2;
    }

    public static string SnapshotRef(string disk, string snapshot) => disk + SnapshotSeparator + snapshot;

    /// <summary>
    /// Snapshot step 1 (persist the intent), one transaction: the snapshot's disk row and (not ready) snapshot row,
    /// its segment rows (the parent's locations, with NoWrite), and NoWrite on the parent's mapped rows. Null when
    /// the name is taken.
    /// </summary>
    public DiskRow? CreateSnapshot(DiskRow parent, string name, string createdAt)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            string diskName = SnapshotRef(parent.Name, name);
            if (Scalar(_db, tx, "SELECT count(*) FROM disks WHERE name=$n", ("$n", diskName)) is not 0L) return null;
            Exec(_db, tx, "INSERT INTO disks(name, size_bytes, segment_size_bytes, created_at) VALUES ($n, $s, $g, $c)",
                ("$n", diskName), ("$s", parent.SizeBytes), ("$g", parent.SegmentSizeBytes), ("$c", createdAt));
            long id = (long)Scalar(_db, tx, "SELECT last_insert_rowid()")!;
            Exec(_db, tx, "INSERT INTO snapshots(disk_id, parent_disk_id, name, ready) VALUES ($i, $p, $n, 0)", ("$i", id), ("$p", (long)parent.Id), ("$n", name));
            Exec(_db, tx, $"""
                INSERT INTO segments(disk_id, segment, container_id, physical_index, states)
                SELECT $i, segment, container_id, physical_index, CASE WHEN (states & {NotMapped}) = 0 THEN states | 2 ELSE states END
                FROM segments WHERE disk_id=$p
                """, ("$i", id), ("$p", (long)parent.Id));
            Exec(_db, tx, $"UPDATE segments SET states = states | 2 WHERE disk_id=$p AND (states & {NotMapped | 2}) = 0", ("$p", (long)parent.Id));
            tx.Commit();
            return new((ulong)id, diskName, parent.SizeBytes, parent.SegmentSizeBytes, createdAt);
        }
    }

    /// <summary>Snapshot step 3: every agent holding the parent acknowledged NoWrite.</summary>
    public void MarkSnapshotReady(ulong snapshotDiskId)
    {
        lock (_lock) Exec(_db, null, "UPDATE snapshots SET ready=1 WHERE disk_id=$i", ("$i", (long)snapshotDiskId));
    }

    /// <summary>
    /// At start, before the allocator is rebuilt: a snapshot whose NoWrite push was never acknowledged is rolled back
    /// (its rows go). Its parent keeps NoWrite on its rows, which is only more restrictive: the next write to each
    /// finds it unshared and just clears NoWrite. Returns the refs of the snapshots removed.
    /// </summary>
    public List<string> RollBackIncompleteSnapshots()
    {
        lock (_lock)
        {
            ForgetAllCachedDisks();
            using var tx = _db.BeginTransaction();
            var gone = new List<(long Id, string Name)>();
            using (var cmd = Cmd(tx, "SELECT d.id, d.name FROM snapshots s JOIN disks d ON d.id = s.disk_id WHERE s.ready = 0"))
            using (var r = cmd.ExecuteReader())
                while (r.Read()) gone.Add((r.GetInt64(0), r.GetString(1)));
            foreach (var (id, _) in gone)
            {
                Exec(_db, tx, "DELETE FROM segments WHERE disk_id=$d", ("$d", id));
                Exec(_db, tx, "DELETE FROM presentations WHERE disk_id=$d", ("$d", id));
                Exec(_db, tx, "DELETE FROM snapshots WHERE disk_id=$d", ("$d", id));
                Exec(_db, tx, "DELETE FROM disks WHERE id=$d", ("$d", id));
            }
            var names = gone.Select(g => g.Name).ToList();
            tx.Commit();
            return names;
        }
    }

    public List<SnapshotRow> ListSnapshots(ulong? parentDiskId = null) =>
        QuerySnapshots("WHERE ($p IS NULL OR s.parent_disk_id = $p)", ("$p", parentDiskId is { } p ? (long)p : DBNull.Value));

    /// <summary>The snapshot row of a disk row, or null when the disk is not a snapshot.</summary>
    public SnapshotRow? GetSnapshot(ulong snapshotDiskId) =>
        QuerySnapshots("WHERE s.disk_id = $i", ("$i", (long)snapshotDiskId)).FirstOrDefault();

    private List<SnapshotRow> QuerySnapshots(string where, params (string, object)[] args)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, $"""
                SELECT d.id, d.name, d.size_bytes, d.segment_size_bytes, d.created_at, s.parent_disk_id, s.name, s.ready
                FROM snapshots s JOIN disks d ON d.id = s.disk_id {where} ORDER BY s.parent_disk_id, d.created_at, d.id
                """, args);
            using var r = cmd.ExecuteReader();
            var list = new List<SnapshotRow>();
            while (r.Read())
                list.Add(new(new((ulong)r.GetInt64(0), r.GetString(1), r.GetInt64(2), (int)r.GetInt64(3), r.GetString(4)),
                    (ulong)r.GetInt64(5), r.GetString(6), r.GetInt64(7) != 0));
            return list;
        }
    }

    /// <summary>Deletes a snapshot (rows, presentations, disk row); returns the locations no row names any more.</summary>
    public List<PhysicalLocation> DeleteSnapshot(ulong snapshotDiskId) => DeleteDiskRows(snapshotDiskId, snapshot: true);

    /// <summary>Deletes a disk and its map; returns the locations no row names any more (the rest stay with snapshots or clones).</summary>
    public List<PhysicalLocation> DeleteDiskReleasing(ulong diskId) => DeleteDiskRows(diskId, snapshot: false);

    private List<PhysicalLocation> DeleteDiskRows(ulong diskId, bool snapshot)
    {
        lock (_lock)
        {
            ForgetCachedDisk(diskId);
            using var tx = _db.BeginTransaction();
            int units = UnitsPerSegmentOf(tx, diskId);
            var rows = ReadSegments(tx, diskId, 0, long.MaxValue);
            Exec(_db, tx, "DELETE FROM segments WHERE disk_id=$d", ("$d", (long)diskId));
            Exec(_db, tx, "DELETE FROM presentations WHERE disk_id=$d", ("$d", (long)diskId));
            Exec(_db, tx, "DELETE FROM unpresenting WHERE disk_id=$d", ("$d", (long)diskId));
            if (snapshot) Exec(_db, tx, "DELETE FROM snapshots WHERE disk_id=$d", ("$d", (long)diskId));
            Exec(_db, tx, "DELETE FROM disks WHERE id=$d", ("$d", (long)diskId));
            var freed = Unreferenced(tx, rows.Select(r => r.Entry), units);
            tx.Commit();
            return freed;
        }
    }

    /// <summary>A writable disk whose rows name a snapshot's locations with NoWrite (shared until written). Null when the name is taken.</summary>
    public DiskRow? CloneSnapshot(DiskRow snapshot, string name, string createdAt)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            if (Scalar(_db, tx, "SELECT count(*) FROM disks WHERE name=$n", ("$n", name)) is not 0L) return null;
            Exec(_db, tx, "INSERT INTO disks(name, size_bytes, segment_size_bytes, created_at) VALUES ($n, $s, $g, $c)",
                ("$n", name), ("$s", snapshot.SizeBytes), ("$g", snapshot.SegmentSizeBytes), ("$c", createdAt));
            long id = (long)Scalar(_db, tx, "SELECT last_insert_rowid()")!;
            Exec(_db, tx, $"""
                INSERT INTO segments(disk_id, segment, container_id, physical_index, states)
                SELECT $i, segment, container_id, physical_index, CASE WHEN (states & {NotMapped}) = 0 THEN states | 2 ELSE states END
                FROM segments WHERE disk_id=$s
                """, ("$i", id), ("$s", (long)snapshot.Id));
            tx.Commit();
            return new((ulong)id, name, snapshot.SizeBytes, snapshot.SegmentSizeBytes, createdAt);
        }
    }

    /// <summary><see cref="SetEntries"/> that also returns the replaced locations no row names any more.</summary>
    public List<PhysicalLocation> SetEntriesReleasing(ulong diskId, IReadOnlyList<(long Segment, MapEntry Entry)> entries)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            var old = new List<MapEntry>();
            foreach (var (segment, entry) in entries)
            {
                var before = ReadSegments(tx, diskId, segment, 1);
                if (before.Count > 0) old.Add(before[0].Entry);
                if (entry == MapEntry.Zero)
                    Exec(_db, tx, "DELETE FROM segments WHERE disk_id=$d AND segment=$s", ("$d", (long)diskId), ("$s", segment));
                else
                    Exec(_db, tx, "INSERT OR REPLACE INTO segments(disk_id, segment, container_id, physical_index, states) VALUES ($d, $s, $c, $p, $f)",
                        ("$d", (long)diskId), ("$s", segment), ("$c", (long)entry.ContainerId), ("$p", entry.PhysicalIndex), ("$f", (long)entry.States));
            }
            var freed = Unreferenced(tx, old, UnitsPerSegmentOf(tx, diskId));
            tx.Commit();
            return freed;
        }
    }

    /// <summary>
    /// Copy-on-write without the copy: when no other row names the segment's location any more, clear its NoWrite
    /// (in one transaction with the check, so no snapshot can start sharing it in between). Returns the new entry, or
    /// null when the location is still shared.
    /// </summary>
    public MapEntry? ClearNoWriteIfUnshared(ulong diskId, long segment)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            var rows = ReadSegments(tx, diskId, segment, 1);
            if (rows.Count == 0) return null;
            var entry = rows[0].Entry;
            if (References(tx, new(entry.ContainerId, entry.PhysicalIndex)) != 1) return null;
            var cleared = entry.WithStates(EntryStates.None, EntryStates.NoWrite);
            Exec(_db, tx, "UPDATE segments SET states=$f WHERE disk_id=$d AND segment=$s", ("$f", (long)cleared.States), ("$d", (long)diskId), ("$s", segment));
            tx.Commit();
            return cleared;
        }
    }

    /// <summary>Changes a disk's size; rows beyond the new end go. Returns the locations no row names any more.</summary>
    public List<PhysicalLocation> ResizeDisk(ulong diskId, long sizeBytes, long segmentCount)
    {
        lock (_lock)
        {
            ForgetCachedDisk(diskId);
            using var tx = _db.BeginTransaction();
            int units = UnitsPerSegmentOf(tx, diskId);
            var tail = ReadSegments(tx, diskId, segmentCount, long.MaxValue - segmentCount);
            Exec(_db, tx, "DELETE FROM segments WHERE disk_id=$d AND segment >= $n", ("$d", (long)diskId), ("$n", segmentCount));
            Exec(_db, tx, "UPDATE disks SET size_bytes=$s WHERE id=$d", ("$s", sizeBytes), ("$d", (long)diskId));
            var freed = Unreferenced(tx, tail.Select(r => r.Entry), units);
            tx.Commit();
            return freed;
        }
    }

    /// <summary>Rows from <paramref name="first"/> on that hold data (mapped, with or without NoWrite).</summary>
    public long CountMappedFrom(ulong diskId, long first)
    {
        lock (_lock)
            return (long)Scalar(_db, null, $"SELECT count(*) FROM segments WHERE disk_id=$d AND segment >= $a AND (states & {NotMapped}) = 0", ("$d", (long)diskId), ("$a", first))!;
    }

    /// <summary>How many segment rows (of any disk or snapshot) name a location.</summary>
    public long ReferenceCount(PhysicalLocation location)
    {
        lock (_lock) return References(null, location);
    }

    /// <summary>Mapped segments of a disk, and which of them name a location some other row names too.</summary>
    public (long Mapped, List<long> SharedSegments) Sharing(ulong diskId)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, $"""
                SELECT s.segment, (SELECT count(*) FROM segments t WHERE t.container_id = s.container_id AND t.physical_index = s.physical_index)
                FROM segments s WHERE s.disk_id = $d AND (s.states & {NotMapped}) = 0 ORDER BY s.segment
                """, ("$d", (long)diskId));
            using var r = cmd.ExecuteReader();
            long mapped = 0;
            var shared = new List<long>();
            while (r.Read())
            {
                mapped++;
                if (r.GetInt64(1) > 1) shared.Add(r.GetInt64(0));
            }
            return (mapped, shared);
        }
    }

    /// <summary>
    /// Distinct located entries whose location no segment row names any more (inside the caller's transaction),
    /// recorded as releasing until the coordinator frees them (ControllerStore.Releasing.cs).
    /// </summary>
    private List<PhysicalLocation> Unreferenced(SqliteTransaction tx, IEnumerable<MapEntry> entries, int units)
    {
        var result = new List<PhysicalLocation>();
        foreach (var location in entries.Where(e => e.ContainerId != 0).Select(e => new PhysicalLocation(e.ContainerId, e.PhysicalIndex)).Distinct())
            if (References(tx, location) == 0) result.Add(location);
        RecordReleasing(tx, result, units);
        return result;
    }

    private long References(SqliteTransaction? tx, PhysicalLocation location) =>
        (long)Scalar(_db, tx, "SELECT count(*) FROM segments WHERE container_id=$c AND physical_index=$p",
            ("$c", (long)location.ContainerId), ("$p", location.PhysicalIndex))!;
}
