using Microsoft.Data.Sqlite;

namespace Tessera.Controller.Store;

// The one query every fault answer makes (the stored rows of its 256-segment window), kept prepared: a new
// SqliteCommand compiles its SQL on every call, which was about half of the query's ~40-70 µs.
public sealed partial class ControllerStore
{
    private SqliteCommand? _windowQuery;

    /// <summary><see cref="GetSegments"/> through one prepared statement, for the fault path.</summary>
    public List<SegmentRow> GetWindow(ulong diskId, long first, long count)
    {
        lock (_lock)
        {
            if (_windowQuery is null)
            {
                var cmd = _db.CreateCommand();
                cmd.CommandText = "SELECT disk_id, segment, container_id, physical_index, states FROM segments WHERE disk_id=$d AND segment >= $a AND segment < $b ORDER BY segment";
                cmd.Parameters.Add("$d", SqliteType.Integer);
                cmd.Parameters.Add("$a", SqliteType.Integer);
                cmd.Parameters.Add("$b", SqliteType.Integer);
                cmd.Prepare();
                _windowQuery = cmd;
            }
            _windowQuery.Parameters[0].Value = (long)diskId;
            _windowQuery.Parameters[1].Value = first;
            _windowQuery.Parameters[2].Value = count >= long.MaxValue - first ? long.MaxValue : first + count;
            return ReadRows(_windowQuery);
        }
    }
}
