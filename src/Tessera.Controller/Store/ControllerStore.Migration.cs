using System.Globalization;
using Microsoft.Data.Sqlite;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Store;

/// <summary>A persisted migration job (disk migration or container evacuation).</summary>
/// <remarks>
/// The work of a job is not a list: it is "every segment that still matches" (mapped on the source container, or
/// belonging to the disk and not yet on the target), recomputed from the segment map. So the only cursor that has
/// to survive a crash is the segment being moved right now: <see cref="CurPhase"/> "copying" means the new location
/// was chosen but is not in the map (roll back: redo the segment), "persisted" means the map already names the new
/// location but the old units may still be read by an agent (roll forward: push the new entry, then free the old).
/// </remarks>
public sealed record MigrationJobRow(
    long Id, string Kind, ulong DiskId, ushort SourceContainer, ushort TargetContainer, string State, string Message,
    long TotalSegments, long MovedSegments, long MovedBytes,
    ulong CurDiskId, long CurSegment, ushort CurOldContainer, long CurOldIndex, ushort CurNewContainer, long CurNewIndex, string CurPhase,
    string CreatedAt, string FinishedAt)
{
    public const string KindDisk = "disk";
    public const string KindEvacuate = "evacuate";
    public bool Finished => State is "done" or "failed";
}

public sealed partial class ControllerStore
{
    private const string OperationsSchema = """
        CREATE TABLE IF NOT EXISTS migration_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            disk_id INTEGER NOT NULL DEFAULT 0,
            source_container INTEGER NOT NULL DEFAULT 0,
            target_container INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '',
            total_segments INTEGER NOT NULL DEFAULT 0,
            moved_segments INTEGER NOT NULL DEFAULT 0,
            moved_bytes INTEGER NOT NULL DEFAULT 0,
            cur_disk_id INTEGER NOT NULL DEFAULT 0,
            cur_segment INTEGER NOT NULL DEFAULT 0,
            cur_old_container INTEGER NOT NULL DEFAULT 0,
            cur_old_index INTEGER NOT NULL DEFAULT 0,
            cur_new_container INTEGER NOT NULL DEFAULT 0,
            cur_new_index INTEGER NOT NULL DEFAULT 0,
            cur_phase TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            finished_at TEXT NOT NULL DEFAULT ''
        );
        """;

    private const string JobColumns = "id, kind, disk_id, source_container, target_container, state, message, total_segments, moved_segments, moved_bytes, cur_disk_id, cur_segment, cur_old_container, cur_old_index, cur_new_container, cur_new_index, cur_phase, created_at, finished_at";

    public MigrationJobRow AddMigrationJob(string kind, ulong diskId, ushort source, ushort target, long totalSegments, string createdAt)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            Exec(_db, tx, "INSERT INTO migration_jobs(kind, disk_id, source_container, target_container, state, total_segments, created_at) VALUES ($k, $d, $s, $t, 'running', $n, $c)",
                ("$k", kind), ("$d", (long)diskId), ("$s", (long)source), ("$t", (long)target), ("$n", totalSegments), ("$c", createdAt));
            long id = (long)Scalar(_db, tx, "SELECT last_insert_rowid()")!;
            tx.Commit();
            return GetMigrationJob(id)!;
        }
    }

    public MigrationJobRow? GetMigrationJob(long id) => QueryJobs("WHERE id=$i", ("$i", id)).FirstOrDefault();

    public List<MigrationJobRow> ListMigrationJobs(bool unfinishedOnly = false) =>
        QueryJobs(unfinishedOnly ? "WHERE state='running'" : "");

    private List<MigrationJobRow> QueryJobs(string where, params (string, object)[] args)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, $"SELECT {JobColumns} FROM migration_jobs {where} ORDER BY id", args);
            using var r = cmd.ExecuteReader();
            var list = new List<MigrationJobRow>();
            while (r.Read())
                list.Add(new(r.GetInt64(0), r.GetString(1), (ulong)r.GetInt64(2), (ushort)r.GetInt64(3), (ushort)r.GetInt64(4), r.GetString(5), r.GetString(6),
                    r.GetInt64(7), r.GetInt64(8), r.GetInt64(9), (ulong)r.GetInt64(10), r.GetInt64(11), (ushort)r.GetInt64(12), r.GetInt64(13),
                    (ushort)r.GetInt64(14), r.GetInt64(15), r.GetString(16), r.GetString(17), r.GetString(18)));
            return list;
        }
    }

    /// <summary>Persists the intent to move one segment: its old and new location (phase "copying").</summary>
    public void SetJobCursor(long jobId, ulong diskId, long segment, MapEntry oldEntry, ushort newContainer, long newIndex)
    {
        lock (_lock)
            ExecOrdered("UPDATE migration_jobs SET cur_disk_id=$d, cur_segment=$s, cur_old_container=$oc, cur_old_index=$oi, cur_new_container=$nc, cur_new_index=$ni, cur_phase='copying' WHERE id=$j",
                ("$j", jobId), ("$d", (long)diskId), ("$s", segment), ("$oc", (long)oldEntry.ContainerId), ("$oi", oldEntry.PhysicalIndex), ("$nc", (long)newContainer), ("$ni", newIndex));
    }

    /// <summary>Clears the cursor (segment rolled back, or finished) and optionally counts one moved segment.</summary>
    public void ClearJobCursor(long jobId, long movedBytes)
    {
        lock (_lock)
            ExecOrdered("UPDATE migration_jobs SET cur_phase='', moved_segments=moved_segments + $m, moved_bytes=moved_bytes + $b WHERE id=$j",
                ("$j", jobId), ("$m", movedBytes > 0 ? 1L : 0L), ("$b", movedBytes));
    }

    /// <summary>
    /// A commit that is ordered but not synced (WAL with synchronous=NORMAL): a crash may lose it, but only together
    /// with every later commit, because the WAL is appended in order and the next synchronous commit syncs it too.
    /// Used for the job cursor's "copying" and "cleared" writes, whose loss recovery handles exactly like their
    /// absence: a lost "copying" is a segment not started (nothing to undo); a lost "cleared" leaves "persisted",
    /// and then no later commit can have mapped the freed units to anyone, so reserving them again at start is sound.
    /// The one cursor write that must be durable before it is acted on is "persisted" (RelocateSegment).
    /// </summary>
    private void ExecOrdered(string sql, params (string, object)[] args)
    {
        Exec(_db, null, "PRAGMA synchronous=NORMAL;");
        try
        {
            Exec(_db, null, sql, args);
        }
        finally
        {
            Exec(_db, null, "PRAGMA synchronous=FULL;");
        }
    }

    public void SetJobTotal(long jobId, long totalSegments)
    {
        lock (_lock) Exec(_db, null, "UPDATE migration_jobs SET total_segments=$n WHERE id=$j", ("$j", jobId), ("$n", totalSegments));
    }

    public void FinishJob(long jobId, string state, string message, string finishedAt)
    {
        lock (_lock)
            Exec(_db, null, "UPDATE migration_jobs SET state=$s, message=$m, finished_at=$f, cur_phase='' WHERE id=$j",
                ("$j", jobId), ("$s", state), ("$m", message), ("$f", finishedAt));
    }

    /// <summary>
    /// Moves one physical segment in the map: every row (of any disk) at the old location now names the new one,
    /// keeping its state bits, and the job's cursor says "persisted" - in one transaction.
    /// Returns the rows as they are now; null, changing nothing, when either container is marked failed (a failure
    /// marked during the copy made the old rows Error; the move must roll back, not carry them over).
    /// </summary>
    public List<SegmentRow>? RelocateSegment(long jobId, ushort oldContainer, long oldIndex, ushort newContainer, long newIndex)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            if (Scalar(_db, tx, "SELECT count(*) FROM containers WHERE id IN ($oc, $nc) AND failed<>0", ("$oc", (long)oldContainer), ("$nc", (long)newContainer)) is not 0L)
                return null;
            Exec(_db, tx, "UPDATE segments SET container_id=$nc, physical_index=$ni WHERE container_id=$oc AND physical_index=$oi",
                ("$oc", (long)oldContainer), ("$oi", oldIndex), ("$nc", (long)newContainer), ("$ni", newIndex));
            Exec(_db, tx, "UPDATE migration_jobs SET cur_phase='persisted' WHERE id=$j", ("$j", jobId));
            using var cmd = Cmd(tx, "SELECT disk_id, segment, container_id, physical_index, states FROM segments WHERE container_id=$c AND physical_index=$p ORDER BY disk_id, segment",
                ("$c", (long)newContainer), ("$p", newIndex));
            var rows = ReadRows(cmd);
            tx.Commit();
            return rows;
        }
    }

    /// <summary>Every row (of any disk) mapped at one physical location: more than one when a snapshot or clone shares it.</summary>
    public List<SegmentRow> RowsAt(ushort containerId, long physicalIndex)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT disk_id, segment, container_id, physical_index, states FROM segments WHERE container_id=$c AND physical_index=$p ORDER BY disk_id, segment",
                ("$c", (long)containerId), ("$p", physicalIndex));
            return ReadRows(cmd);
        }
    }

    /// <summary>Rows with a live location on a container (Error rows excluded: their bytes are gone).</summary>
    public List<SegmentRow> RowsOnContainer(ushort containerId, int limit = int.MaxValue)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT disk_id, segment, container_id, physical_index, states FROM segments WHERE container_id=$c AND (states & 13) = 0 ORDER BY disk_id, segment LIMIT $l",
                ("$c", (long)containerId), ("$l", (long)limit));
            return ReadRows(cmd);
        }
    }

    /// <summary>Every row referencing a container at all (including Error rows).</summary>
    public long CountRowsOnContainer(ushort containerId)
    {
        lock (_lock)
            return (long)Scalar(_db, null, "SELECT count(*) FROM segments WHERE container_id=$c", ("$c", (long)containerId))!;
    }

    /// <summary>Rows of one disk with a live location not on <paramref name="target"/>.</summary>
    public List<SegmentRow> RowsOfDiskNotOn(ulong diskId, ushort target, int limit = int.MaxValue)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT disk_id, segment, container_id, physical_index, states FROM segments WHERE disk_id=$d AND container_id<>$c AND (states & 13) = 0 ORDER BY segment LIMIT $l",
                ("$d", (long)diskId), ("$c", (long)target), ("$l", (long)limit));
            return ReadRows(cmd);
        }
    }

    /// <summary>
    /// Marks a container failed and every row on it Error (location kept, so its space stays accounted), in one
    /// transaction. Failed only moves toward worse: an already failed container keeps its first reason. The coordinator
    /// pushes Error per disk from <see cref="MarkDiskRowsFailed"/>, under each disk's lock, not from what this marked.
    /// </summary>
    public void MarkContainerFailed(ushort containerId, string reason)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            Exec(_db, tx, "UPDATE containers SET failed=1, failure_reason=$r WHERE id=$c AND failed=0", ("$c", (long)containerId), ("$r", reason));
            Exec(_db, tx, "UPDATE segments SET states = states | 8 WHERE container_id=$c", ("$c", (long)containerId));
            tx.Commit();
        }
    }

    /// <summary>
    /// Marks Error every row of one disk on a failed container (again: one committed since the container was marked
    /// is caught here) and returns the segments of that disk there that are Error now, in order.
    /// </summary>
    public List<long> MarkDiskRowsFailed(ushort containerId, ulong diskId)
    {
        lock (_lock)
        {
            using var cmd = Cmd(null, "SELECT disk_id, segment, container_id, physical_index, states FROM segments WHERE container_id=$c AND disk_id=$d ORDER BY segment",
                ("$c", (long)containerId), ("$d", (long)diskId));
            var rows = ReadRows(cmd);
            // Usually every row is Error already (marked with the container): no commit, so no fsync per disk.
            if (rows.Any(r => (r.Entry.States & EntryStates.Error) == 0))
                Exec(_db, null, "UPDATE segments SET states = states | 8 WHERE container_id=$c AND disk_id=$d", ("$c", (long)containerId), ("$d", (long)diskId));
            return rows.Select(r => r.Segment).ToList();
        }
    }

    /// <summary>Clears a container's failed mark (after a successful probe). Its Error rows stay Error: the bytes written meanwhile are lost.</summary>
    public void ClearContainerFailed(ushort containerId)
    {
        lock (_lock) Exec(_db, null, "UPDATE containers SET failed=0, failure_reason='' WHERE id=$c", ("$c", (long)containerId));
    }

    /// <summary>Removes a container that no row references; false otherwise.</summary>
    public bool RemoveContainer(ushort containerId)
    {
        lock (_lock)
        {
            using var tx = _db.BeginTransaction();
            if (Scalar(_db, tx, "SELECT count(*) FROM segments WHERE container_id=$c", ("$c", (long)containerId)) is not 0L) return false;
            if (Scalar(_db, tx, "SELECT count(*) FROM migration_jobs WHERE state='running' AND (source_container=$c OR target_container=$c OR cur_new_container=$c)", ("$c", (long)containerId)) is not 0L) return false;
            Exec(_db, tx, "DELETE FROM containers WHERE id=$c", ("$c", (long)containerId));
            RemoveHighWater(tx, containerId);
            tx.Commit();
            InvalidateHighWater();
            return true;
        }
    }

    internal static string Invariant(long v) => v.ToString(CultureInfo.InvariantCulture);
}
