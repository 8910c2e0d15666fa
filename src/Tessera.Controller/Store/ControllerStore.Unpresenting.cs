using Microsoft.Data.Sqlite;

namespace Tessera.Controller.Store;

/// <summary>
/// Presentations being removed whose host may not have dropped its table yet. An unpresent deletes the presentation
/// row and waits for the host's blocking DeleteTable reply (or its lease to lapse); a controller that dies in between
/// leaves a host that may still read and write the disk under a lease that controller granted, and which no
/// presentation row names any more. The unpresent records the pair here in the transaction that deletes the row and
/// forgets it once the host answered; a controller that finds some at start counts those hosts as holders for its
/// first lease, exactly as it counts presented hosts that have not registered yet (DiskCoordinator.Unpresenting.cs).
/// </summary>
public sealed partial class ControllerStore
{
    private const string UnpresentingSchema = """
        CREATE TABLE unpresenting (
            disk_id INTEGER NOT NULL REFERENCES disks(id),
            host TEXT NOT NULL,
            PRIMARY KEY (disk_id, host)
        );
        """;

    /// <summary>Schema 4 → 5 adds the table (empty: a v4 controller left no record of unfinished unpresents).</summary>
    private static int MigrateUnpresenting(SqliteConnection db, SqliteTransaction tx, int version) =>
        MigrateAddingEmptyTable(db, tx, version, 4, "unpresenting", UnpresentingSchema);

    /// <summary>
    /// Removes a presentation and records it as being removed, in one transaction; false when there was none. The
    /// caller forgets the record (<see cref="ForgetUnpresenting"/>) once the host dropped its table.
    /// </summary>
    public bool RemovePresentation(ulong diskId, string host)
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

    /// <summary>The host answered (or lapsed): it does no more I/O to the disk under any lease.</summary>
    public void ForgetUnpresenting(ulong diskId, string host)
    {
        lock (_lock)
            Exec(_db, null, "DELETE FROM unpresenting WHERE disk_id=$d AND host=$h", ("$d", (long)diskId), ("$h", host));
    }

    /// <summary>Unpresents a previous controller committed but may not have completed.</summary>
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
