using Microsoft.Data.Sqlite;

namespace Tessera.Controller.Store;

/// <summary>
/// Presentations an unpresent removed whose host may not have answered yet. An unpresent deletes the presentation row
/// first and then waits for the host to drop its table (reply or lease lapse); a controller that dies in between left
/// a successor that no longer knew the host might still do I/O with that table, under a lease the dead controller
/// granted. The row goes into this table in the same transaction, the coordinator forgets it once the host answered
/// or lapsed, and a controller that finds some at start counts those hosts as unregistered holders of the disk for
/// its first lease (DiskCoordinator.Unpresenting.cs).
/// </summary>
public sealed partial class ControllerStore
{
    private const string UnpresentingSchema = """
        CREATE TABLE unpresenting (
            disk_id INTEGER NOT NULL,
            host TEXT NOT NULL,
            PRIMARY KEY (disk_id, host)
        );
        """;

    /// <summary>Schema 4 → 5 adds the table (empty: a v4 controller left no record of unfinished unpresents).</summary>
    private static int MigrateUnpresenting(SqliteConnection db, SqliteTransaction tx, int version)
    {
        if (version != 4) return version;
        if (Scalar(db, tx, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='unpresenting'") is 0L) Exec(db, tx, UnpresentingSchema);
        Exec(db, tx, "UPDATE meta SET value='5' WHERE key='schema_version'");
        return 5;
    }

    /// <summary>Removes a presentation and records, in the same transaction, that its host may still hold the table. False when there was none.</summary>
    public bool RemovePresentationRecording(ulong diskId, string host)
    {
        lock (_lock)
        {
            ForgetCachedDisk(diskId);
            using var tx = _db.BeginTransaction();
            if (Exec(_db, tx, "DELETE FROM presentations WHERE disk_id=$d AND host=$h", ("$d", (long)diskId), ("$h", host)) == 0) return false;
            Exec(_db, tx, "INSERT OR REPLACE INTO unpresenting(disk_id, host) VALUES ($d, $h)", ("$d", (long)diskId), ("$h", host));
            tx.Commit();
            return true;
        }
    }

    /// <summary>The host dropped the table (answered, or its lease lapsed).</summary>
    public void ForgetUnpresenting(ulong diskId, string host)
    {
        lock (_lock)
            Exec(_db, null, "DELETE FROM unpresenting WHERE disk_id=$d AND host=$h", ("$d", (long)diskId), ("$h", host));
    }

    /// <summary>Unpresents a previous controller started but may not have completed.</summary>
    public List<(ulong DiskId, string Host)> ListUnpresenting()
    {
        lock (_lock)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT disk_id, host FROM unpresenting ORDER BY disk_id, host";
            using var r = cmd.ExecuteReader();
            var list = new List<(ulong, string)>();
            while (r.Read()) list.Add(((ulong)r.GetInt64(0), r.GetString(1)));
            return list;
        }
    }
}
