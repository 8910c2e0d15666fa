using Microsoft.Data.Sqlite;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Store;

/// <summary>
/// Locations a release took out of the map whose holders may not all have dropped them yet. A release commits the
/// new map first and frees the space only after every holder acknowledged or lapsed its lease; a controller that
/// dies in between leaves units the map no longer names but an agent may still read and write under a lease that
/// controller granted. The release transaction records them here, the coordinator forgets them once it freed them,
/// and a controller that finds some at start holds them back for its first lease (DiskCoordinator.Releasing.cs).
/// </summary>
public sealed partial class ControllerStore
{
    private const string ReleasingSchema = """
        CREATE TABLE releasing (
            container_id INTEGER NOT NULL,
            physical_index INTEGER NOT NULL,
            units INTEGER NOT NULL,
            PRIMARY KEY (container_id, physical_index)
        );
        """;

    /// <summary>Schema 3 → 4 adds the table (empty: a v3 controller left no record of unfinished releases).</summary>
    private static int MigrateReleasing(SqliteConnection db, SqliteTransaction tx, int version) =>
        MigrateAddingEmptyTable(db, tx, version, 3, "releasing", ReleasingSchema);

    private int UnitsPerSegmentOf(SqliteTransaction tx, ulong diskId) =>
        Scalar(_db, tx, "SELECT segment_size_bytes FROM disks WHERE id=$d", ("$d", (long)diskId)) is long bytes ? (int)(bytes / MapEntry.PhysicalUnitBytes) : 0;

    private void RecordReleasing(SqliteTransaction tx, List<PhysicalLocation> locations, int units)
    {
        foreach (var l in locations)
            Exec(_db, tx, "INSERT OR REPLACE INTO releasing(container_id, physical_index, units) VALUES ($c, $p, $u)",
                ("$c", (long)l.ContainerId), ("$p", l.PhysicalIndex), ("$u", (long)units));
    }

    /// <summary>The release of these locations is complete (every holder dropped them): they may be handed out again.</summary>
    public void ForgetReleasing(IReadOnlyCollection<PhysicalLocation> locations)
    {
        if (locations.Count == 0) return;
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            foreach (var l in locations)
                Exec(_db, tx, "DELETE FROM releasing WHERE container_id=$c AND physical_index=$p", ("$c", (long)l.ContainerId), ("$p", l.PhysicalIndex));
            tx.Commit();
        }
    }

    /// <summary>Releases a previous controller committed but may not have completed.</summary>
    public List<(PhysicalLocation Location, int Units)> ListReleasing()
    {
        lock (_lock)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT container_id, physical_index, units FROM releasing ORDER BY container_id, physical_index";
            using var r = cmd.ExecuteReader();
            var list = new List<(PhysicalLocation, int)>();
            while (r.Read()) list.Add((new PhysicalLocation((ushort)r.GetInt64(0), r.GetInt64(1)), (int)r.GetInt64(2)));
            return list;
        }
    }
}
