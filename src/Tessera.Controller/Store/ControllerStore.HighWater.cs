using Microsoft.Data.Sqlite;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Store;

/// <summary>
/// Per-container high-water marks for thin allocation without zeroing (the argument is in docs/architecture.md,
/// "Never-used units"). A container's mark is a unit index: units at or above it have never held data and read as
/// zeros, because the container was created sparse by Tessera and nothing has been written there since.
///
/// Invariant kept by every caller: any unit that holds, or may come to hold, bytes other than zeros is below the
/// PERSISTED mark before the first byte is written to it. A thin allocation persists the advance in the same
/// transaction as the mapping (no agent writes before that commit); copy-on-write and migration persist it before
/// they copy (<see cref="AdvanceHighWater"/>). A container without a row is treated as used everywhere, so the
/// default for anything this file does not know about is the safe one.
/// </summary>
public sealed partial class ControllerStore
{
    private const string HighWaterSchema = """
        CREATE TABLE container_high_water (
            container_id INTEGER PRIMARY KEY NOT NULL,
            high_water_unit INTEGER NOT NULL CHECK (high_water_unit >= 0)
        );
        """;

    // The persisted marks, so that an advance already covered costs no SQL. Guarded by _lock.
    private readonly Dictionary<ushort, long> _highWater = new();
    private bool _highWaterLoaded;

    /// <summary>
    /// Schema 2 → 3 adds the marks. Every existing container gets "used everywhere" (mark = its size): a v2 store
    /// zeroed every segment it allocated but kept no record of which units were ever written.
    /// </summary>
    private static int MigrateHighWater(SqliteConnection db, SqliteTransaction tx, int version)
    {
        if (version != 2) return version;
        Exec(db, tx, HighWaterSchema);
        Exec(db, tx, $"INSERT INTO container_high_water(container_id, high_water_unit) SELECT id, size_bytes / {MapEntry.PhysicalUnitBytes} FROM containers");
        Exec(db, tx, "UPDATE meta SET value='3' WHERE key='schema_version'");
        return 3;
    }

    /// <summary>Units at or above the result never held data. A container without a row: its whole size (nothing is known to be unused).</summary>
    public long GetHighWater(ushort containerId)
    {
        lock (_lock)
        {
            LoadHighWater();
            if (_highWater.TryGetValue(containerId, out long mark)) return mark;
            var size = Scalar(_db, null, "SELECT size_bytes FROM containers WHERE id=$c", ("$c", (long)containerId));
            return size is long bytes ? bytes / MapEntry.PhysicalUnitBytes : 0;
        }
    }

    /// <summary>
    /// Durably raises a container's mark to at least <paramref name="endUnit"/> (synchronous commit) unless the
    /// persisted mark already covers it. Call before writing anything to units that may be at or above the mark.
    /// </summary>
    public void AdvanceHighWater(ushort containerId, long endUnit)
    {
        lock (_lock)
        {
            LoadHighWater();
            if (_highWater.TryGetValue(containerId, out long mark) && mark >= endUnit) return;
            using var tx = _db.BeginTransaction();
            Exec(_db, tx, UpsertHighWaterSql, ("$c", (long)containerId), ("$m", endUnit));
            tx.Commit();
            // Only after the commit: a cached mark above the persisted one would let a later advance be skipped.
            _highWater[containerId] = Math.Max(mark, endUnit);
        }
    }

    /// <summary>Marks a whole container as possibly used (after a repair: what happened to it meanwhile is unknown).</summary>
    public void ForgetNeverUsed(ushort containerId, long totalUnits) => AdvanceHighWater(containerId, totalUnits);

    private const string UpsertHighWaterSql = """
        INSERT INTO container_high_water(container_id, high_water_unit) VALUES ($c, $m)
        ON CONFLICT(container_id) DO UPDATE SET high_water_unit = max(high_water_unit, excluded.high_water_unit)
        """;

    /// <summary>Writes a new container's mark inside its insert transaction (-1: unknown past, mark = its size).</summary>
    private void SetHighWaterOnAdd(SqliteTransaction tx, ushort containerId, long sizeBytes, long highWaterUnit)
    {
        long mark = highWaterUnit < 0 ? sizeBytes / MapEntry.PhysicalUnitBytes : Math.Min(highWaterUnit, sizeBytes / MapEntry.PhysicalUnitBytes);
        // REPLACE: container ids are reused after a removal, and a stale row must not vouch for a new container.
        Exec(_db, tx, "INSERT OR REPLACE INTO container_high_water(container_id, high_water_unit) VALUES ($c, $m)", ("$c", (long)containerId), ("$m", mark));
    }

    private void RemoveHighWater(SqliteTransaction tx, ushort containerId) =>
        Exec(_db, tx, "DELETE FROM container_high_water WHERE container_id=$c", ("$c", (long)containerId));

    /// <summary>Drops the cache (after adding or removing a container); it reloads on next use.</summary>
    private void InvalidateHighWater()
    {
        _highWater.Clear();
        _highWaterLoaded = false;
    }

    private void LoadHighWater()
    {
        if (_highWaterLoaded) return;
        using var cmd = Cmd(null, "SELECT container_id, high_water_unit FROM container_high_water");
        using var r = cmd.ExecuteReader();
        while (r.Read()) _highWater[(ushort)r.GetInt64(0)] = r.GetInt64(1);
        _highWaterLoaded = true;
    }

    /// <summary>
    /// Thin allocations of one disk in one transaction (one, or a group commit): each mapping with its container's
    /// mark advance, so the mark is durable no later than the first write any agent can make through the mapping,
    /// and one fsync covers a burst of first writes.
    /// </summary>
    public void SetEntriesAdvancingHighWater(ulong diskId, IReadOnlyList<(long Segment, MapEntry Entry)> entries, int unitsPerSegment)
    {
        lock (_lock)
        {
            LoadHighWater();
            var advanced = new Dictionary<ushort, long>();
            using var tx = _db.BeginTransaction();
            foreach (var (segment, entry) in entries)
            {
                Exec(_db, tx, "INSERT OR REPLACE INTO segments(disk_id, segment, container_id, physical_index, states) VALUES ($d, $s, $c, $p, $f)",
                    ("$d", (long)diskId), ("$s", segment), ("$c", (long)entry.ContainerId), ("$p", entry.PhysicalIndex), ("$f", (long)entry.States));
                long end = entry.PhysicalIndex + unitsPerSegment;
                long known = Math.Max(_highWater.GetValueOrDefault(entry.ContainerId, -1), advanced.GetValueOrDefault(entry.ContainerId, -1));
                if (known < end) advanced[entry.ContainerId] = end;
            }
            foreach (var (container, end) in advanced) Exec(_db, tx, UpsertHighWaterSql, ("$c", (long)container), ("$m", end));
            tx.Commit();
            foreach (var (container, end) in advanced) _highWater[container] = Math.Max(_highWater.GetValueOrDefault(container), end);
        }
    }
}
