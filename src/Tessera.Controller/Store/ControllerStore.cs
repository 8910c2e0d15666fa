using System.Globalization;
using Microsoft.Data.Sqlite;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Store;

public sealed record ContainerRow(ushort Id, string Name, string Uri, long SizeBytes, bool Failed, string FailureReason);

public sealed record DiskRow(ulong Id, string Name, long SizeBytes, int SegmentSizeBytes, string CreatedAt)
{
    public long SegmentCount => (SizeBytes + SegmentSizeBytes - 1) / SegmentSizeBytes;
    public int UnitsPerSegment => SegmentSizeBytes / MapEntry.PhysicalUnitBytes;
}

public sealed record PresentationRow(ulong DiskId, string Host, bool ReadOnly);

public sealed record AgentRow(string Host, ulong Incarnation, string NbdAddress, string LastSeen);

/// <summary>One non-default (not Zero) segment of a disk.</summary>
public readonly record struct SegmentRow(ulong DiskId, long Segment, MapEntry Entry);

/// <summary>
/// The controller's source of truth, in SQLite (WAL, synchronous=FULL: a commit is on disk when the call
/// returns). Every public mutation is one transaction, so a crash leaves either the old or the new state.
///
/// The segment map keeps only non-default rows: a missing row means the segment is Zero (thin, never written),
/// so a new disk costs one row however large it is. Rows carry the entry unpacked (container id, physical index
/// in 64 KiB units, state flags) so that the file is readable with the sqlite3 shell.
///
/// One connection, one lock: the control path is not hot and SQLite serialises writers anyway.
/// </summary>
public sealed partial class ControllerStore : IDisposable
{
    public const int SchemaVersion = 5; // 2: snapshots (ControllerStore.Snapshots.cs); 3: high-water marks (ControllerStore.HighWater.cs); 4: unfinished releases (ControllerStore.Releasing.cs); 5: unfinished unpresents (ControllerStore.Unpresenting.cs)

    private const string Schema = """
        CREATE TABLE meta (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL
        );
        CREATE TABLE containers (
            id INTEGER PRIMARY KEY NOT NULL CHECK (id BETWEEN 1 AND 65535),
            name TEXT NOT NULL UNIQUE,
            uri TEXT NOT NULL UNIQUE,
            size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
            failed INTEGER NOT NULL DEFAULT 0,
            failure_reason TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE disks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            size_bytes INTEGER NOT NULL CHECK (size_bytes > 0),
            segment_size_bytes INTEGER NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE segments (
            disk_id INTEGER NOT NULL REFERENCES disks(id),
            segment INTEGER NOT NULL,
            container_id INTEGER NOT NULL,
            physical_index INTEGER NOT NULL,
            states INTEGER NOT NULL,
            PRIMARY KEY (disk_id, segment)
        ) WITHOUT ROWID;
        CREATE INDEX segments_by_location ON segments (container_id, physical_index);
        CREATE TABLE presentations (
            disk_id INTEGER NOT NULL REFERENCES disks(id),
            host TEXT NOT NULL,
            read_only INTEGER NOT NULL,
            PRIMARY KEY (disk_id, host)
        );
        CREATE TABLE agents (
            host TEXT PRIMARY KEY NOT NULL,
            incarnation INTEGER NOT NULL,
            nbd_address TEXT NOT NULL,
            last_seen TEXT NOT NULL
        );
        """;

    private readonly SqliteConnection _db;
    private readonly object _lock = new();

    public string Path { get; }

    /// <summary>The epoch of this controller process: one more than the previous start's.</summary>
    public ulong Epoch { get; }

    private ControllerStore(SqliteConnection db, string path, ulong epoch)
    {
        _db = db;
        Path = path;
        Epoch = epoch;
    }

    /// <summary>Opens (creating if needed) the store in <paramref name="dataDirectory"/> and bumps the epoch.</summary>
    public static ControllerStore Open(string dataDirectory)
    {
        Directory.CreateDirectory(dataDirectory);
        string path = System.IO.Path.Combine(dataDirectory, "tessera.db");
        var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        db.Open();
        try
        {
            Exec(db, null, "PRAGMA journal_mode=WAL;");
            Exec(db, null, "PRAGMA synchronous=FULL;");
            Exec(db, null, "PRAGMA foreign_keys=ON;");
            ulong epoch;
            using (var tx = db.BeginTransaction())
            {
                bool fresh = Scalar(db, tx, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'") is 0L;
                if (fresh)
                {
                    Exec(db, tx, Schema);
                    Exec(db, tx, SnapshotSchema);
                    Exec(db, tx, HighWaterSchema);
                    Exec(db, tx, ReleasingSchema);
                    Exec(db, tx, UnpresentingSchema);
                    Exec(db, tx, "INSERT INTO meta(key, value) VALUES ('schema_version', $v), ('controller_epoch', '0')", ("$v", SchemaVersion.ToString(CultureInfo.InvariantCulture)));
                }
                var version = Convert.ToInt32(Scalar(db, tx, "SELECT value FROM meta WHERE key='schema_version'"), CultureInfo.InvariantCulture);
                version = MigrateSnapshots(db, tx, version);
                version = MigrateHighWater(db, tx, version);
                version = MigrateReleasing(db, tx, version);
                version = MigrateUnpresenting(db, tx, version);
                if (version != SchemaVersion)
                    throw new InvalidOperationException($"store {path} has schema version {version}, this controller understands {SchemaVersion}");
                Exec(db, tx, OperationsSchema); // additive tables (IF NOT EXISTS): also upgrades a store made before them
                epoch = Convert.ToUInt64(Scalar(db, tx, "SELECT value FROM meta WHERE key='controller_epoch'"), CultureInfo.InvariantCulture) + 1;
                Exec(db, tx, "UPDATE meta SET value=$e WHERE key='controller_epoch'", ("$e", epoch.ToString(CultureInfo.InvariantCulture)));
                tx.Commit();
            }
            return new ControllerStore(db, path, epoch);
        }
        catch
        {
            db.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A schema step <paramref name="from"/> → <paramref name="from"/> + 1 that only adds an empty table (the older
    /// controller kept no such record). The table may exist already in a store a test or a newer build prepared.
    /// </summary>
    private static int MigrateAddingEmptyTable(SqliteConnection db, SqliteTransaction tx, int version, int from, string table, string schema)
    {
        if (version != from) return version;
        if (Scalar(db, tx, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=$t", ("$t", table)) is 0L) Exec(db, tx, schema);
        Exec(db, tx, "UPDATE meta SET value=$v WHERE key='schema_version'", ("$v", (from + 1).ToString(CultureInfo.InvariantCulture)));
        return from + 1;
    }

    /// <summary>The schema as SQLite reports it (for the golden test).</summary>
    public string DumpSchema()
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name");
            using var r = cmd.ExecuteReader();
            var lines = new List<string>();
            while (r.Read()) lines.Add($"{r.GetString(0)} {r.GetString(1)}: {(r.IsDBNull(2) ? "" : r.GetString(2))}");
            return string.Join("\n", lines).ReplaceLineEndings("\n");
        }
    }

    // ---- containers

    public List<ContainerRow> ListContainers()
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT id, name, uri, size_bytes, failed, failure_reason FROM containers ORDER BY id");
            using var r = cmd.ExecuteReader();
            var list = new List<ContainerRow>();
            while (r.Read()) list.Add(new((ushort)r.GetInt64(0), r.GetString(1), r.GetString(2), r.GetInt64(3), r.GetInt64(4) != 0, r.GetString(5)));
            return list;
        }
    }

    /// <summary>
    /// Adds a container with the next free id; returns null when all 65535 ids are taken. <paramref name="highWaterUnit"/>:
    /// units at or above it never held data (0 for a container Tessera just created sparse); -1 when unknown.
    /// </summary>
    public ContainerRow? AddContainer(string name, string uri, long sizeBytes, long highWaterUnit = -1)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            long next = (long)Scalar(_db, tx, "SELECT coalesce(max(id), 0) + 1 FROM containers")!;
            if (next > MapEntry.MaxContainerId) return null;
            Exec(_db, tx, "INSERT INTO containers(id, name, uri, size_bytes) VALUES ($id, $n, $u, $s)",
                ("$id", next), ("$n", name), ("$u", uri), ("$s", sizeBytes));
            SetHighWaterOnAdd(tx, (ushort)next, sizeBytes, highWaterUnit);
            tx.Commit();
            InvalidateHighWater();
            return new((ushort)next, name, uri, sizeBytes, false, "");
        }
    }

    // ---- disks

    public DiskRow? CreateDisk(string name, long sizeBytes, int segmentSizeBytes, string createdAt)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            if (Scalar(_db, tx, "SELECT count(*) FROM disks WHERE name=$n", ("$n", name)) is not 0L) return null;
            Exec(_db, tx, "INSERT INTO disks(name, size_bytes, segment_size_bytes, created_at) VALUES ($n, $s, $g, $c)",
                ("$n", name), ("$s", sizeBytes), ("$g", segmentSizeBytes), ("$c", createdAt));
            long id = (long)Scalar(_db, tx, "SELECT last_insert_rowid()")!;
            tx.Commit();
            return new((ulong)id, name, sizeBytes, segmentSizeBytes, createdAt);
        }
    }

    public DiskRow? GetDisk(string name) => QueryDisks("WHERE name=$k", ("$k", name)).FirstOrDefault();

    public DiskRow? GetDisk(ulong id) => QueryDisks("WHERE id=$k", ("$k", (long)id)).FirstOrDefault();

    public List<DiskRow> ListDisks() => QueryDisks("");

    private List<DiskRow> QueryDisks(string where, params (string, object)[] args)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, $"SELECT id, name, size_bytes, segment_size_bytes, created_at FROM disks {where} ORDER BY id", args);
            using var r = cmd.ExecuteReader();
            var list = new List<DiskRow>();
            while (r.Read()) list.Add(new((ulong)r.GetInt64(0), r.GetString(1), r.GetInt64(2), (int)r.GetInt64(3), r.GetString(4)));
            return list;
        }
    }

    // ---- segments

    /// <summary>The stored entry of one segment (Zero when there is no row).</summary>
    public MapEntry GetEntry(ulong diskId, long segment)
    {
        var rows = GetSegments(diskId, segment, 1);
        return rows.Count == 0 ? MapEntry.Zero : rows[0].Entry;
    }

    /// <summary>The non-default rows of segments [first, first+count), in segment order.</summary>
    public List<SegmentRow> GetSegments(ulong diskId, long first, long count)
    {
        lock (_lock) return ReadSegments(null, diskId, first, count);
    }

    /// <summary>Every non-default row of every disk (to rebuild the allocator at start).</summary>
    public List<SegmentRow> AllSegments()
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT disk_id, segment, container_id, physical_index, states FROM segments");
            return ReadRows(cmd);
        }
    }

    /// <summary>Replaces entries in one transaction; a Zero entry deletes the row (the default).</summary>
    public void SetEntries(ulong diskId, IReadOnlyList<(long Segment, MapEntry Entry)> entries)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            foreach (var (segment, entry) in entries)
            {
                if (entry == MapEntry.Zero)
                    Exec(_db, tx, "DELETE FROM segments WHERE disk_id=$d AND segment=$s", ("$d", (long)diskId), ("$s", segment));
                else
                    Exec(_db, tx, "INSERT OR REPLACE INTO segments(disk_id, segment, container_id, physical_index, states) VALUES ($d, $s, $c, $p, $f)",
                        ("$d", (long)diskId), ("$s", segment), ("$c", (long)entry.ContainerId), ("$p", entry.PhysicalIndex), ("$f", (long)entry.States));
            }
            tx.Commit();
        }
    }

    public long CountAllocatedSegments(ulong diskId)
    {
        lock (_lock)
            return (long)Scalar(_db, null, "SELECT count(*) FROM segments WHERE disk_id=$d AND (states & 13) = 0", ("$d", (long)diskId))!;
    }

    private List<SegmentRow> ReadSegments(SqliteTransaction? tx, ulong diskId, long first, long count)
    {
        long end = count >= long.MaxValue - first ? long.MaxValue : first + count;
        using var cmd = Cmd(tx, "SELECT disk_id, segment, container_id, physical_index, states FROM segments WHERE disk_id=$d AND segment >= $a AND segment < $b ORDER BY segment",
            ("$d", (long)diskId), ("$a", first), ("$b", end));
        return ReadRows(cmd);
    }

    private static List<SegmentRow> ReadRows(SqliteCommand cmd)
    {
        using var r = cmd.ExecuteReader();
        var list = new List<SegmentRow>();
        while (r.Read())
            list.Add(new((ulong)r.GetInt64(0), r.GetInt64(1), MapEntry.Mapped((ushort)r.GetInt64(2), r.GetInt64(3), (EntryStates)r.GetInt64(4))));
        return list;
    }

    // ---- presentations

    public List<PresentationRow> ListPresentations(ulong? diskId = null, string? host = null)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT disk_id, host, read_only FROM presentations WHERE ($d IS NULL OR disk_id=$d) AND ($h IS NULL OR host=$h) ORDER BY disk_id, host",
                ("$d", diskId is { } d ? (long)d : DBNull.Value), ("$h", (object?)host ?? DBNull.Value));
            using var r = cmd.ExecuteReader();
            var list = new List<PresentationRow>();
            while (r.Read()) list.Add(new((ulong)r.GetInt64(0), r.GetString(1), r.GetInt64(2) != 0));
            return list;
        }
    }

    /// <summary>Adds a presentation; false when the disk is already presented to that host.</summary>
    public bool AddPresentation(ulong diskId, string host, bool readOnly)
    {
        lock (_lock)
        {
            ForgetCachedDisk(diskId);
            using var tx = _db.BeginTransaction();
            if (Scalar(_db, tx, "SELECT count(*) FROM presentations WHERE disk_id=$d AND host=$h", ("$d", (long)diskId), ("$h", host)) is not 0L) return false;
            Exec(_db, tx, "INSERT INTO presentations(disk_id, host, read_only) VALUES ($d, $h, $r)", ("$d", (long)diskId), ("$h", host), ("$r", readOnly ? 1L : 0L));
            tx.Commit();
            return true;
        }
    }

    // ---- agents

    public void UpsertAgent(string host, ulong incarnation, string nbdAddress, string lastSeen)
    {
        lock (_lock)
            Exec(_db, null, "INSERT OR REPLACE INTO agents(host, incarnation, nbd_address, last_seen) VALUES ($h, $i, $n, $l)",
                ("$h", host), ("$i", unchecked((long)incarnation)), ("$n", nbdAddress), ("$l", lastSeen));
    }

    public List<AgentRow> ListAgents()
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT host, incarnation, nbd_address, last_seen FROM agents ORDER BY host");
            using var r = cmd.ExecuteReader();
            var list = new List<AgentRow>();
            while (r.Read()) list.Add(new(r.GetString(0), unchecked((ulong)r.GetInt64(1)), r.GetString(2), r.GetString(3)));
            return list;
        }
    }

    public void Dispose()
    {
        lock (_lock) _db.Dispose();
    }

    // ---- helpers

    private SqliteCommand Cmd(SqliteTransaction? tx, string sql, params (string, object)[] args) => MakeCmd(_db, tx, sql, args);

    private static SqliteCommand MakeCmd(SqliteConnection db, SqliteTransaction? tx, string sql, (string, object)[] args)
    {
        var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        cmd.Transaction = tx;
        foreach (var (name, value) in args) cmd.Parameters.AddWithValue(name, value);
        return cmd;
    }

    private static int Exec(SqliteConnection db, SqliteTransaction? tx, string sql, params (string, object)[] args)
    {
        using var cmd = MakeCmd(db, tx, sql, args);
        return cmd.ExecuteNonQuery();
    }

    private static object? Scalar(SqliteConnection db, SqliteTransaction? tx, string sql, params (string, object)[] args)
    {
        using var cmd = MakeCmd(db, tx, sql, args);
        return cmd.ExecuteScalar();
    }
}
