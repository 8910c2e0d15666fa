using System.Buffers.Binary;
using System.Text;
using Microsoft.Data.Sqlite;
using Microsoft.Win32.SafeHandles;
using Tessera.Controller.Store;

namespace Tessera.Controller.Tests.StoreCrash;

/// <summary>
/// The store's files as a crash would leave them: the main database file and its write-ahead log, byte for byte.
/// The -shm file is left out on purpose: SQLite rebuilds the WAL index from the log when the first connection opens
/// (and a crash after a reboot loses it anyway).
/// </summary>
/// <param name="Backfilled">A checkpoint ran since the previous image: the log's last transaction may already be in the database file.</param>
/// <param name="NextCommitRelaxed">The commit that follows this image ran with synchronous=NORMAL (not synced): a power
/// loss may take it, together with every relaxed commit after it up to the next synced one.</param>
public sealed record StoreImage(int Index, byte[] Database, byte[] Wal, string Dump, bool Backfilled, string Label)
{
    public bool NextCommitRelaxed { get; init; }

    public const string DatabaseFileName = "tessera.db";

    /// <summary>Writes the image as a store directory.</summary>
    public void WriteTo(string directory)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllBytes(Path.Combine(directory, DatabaseFileName), Database);
        string wal = Path.Combine(directory, DatabaseFileName + "-wal");
        if (Wal.Length > 0) File.WriteAllBytes(wal, Wal);
        else File.Delete(wal);
        File.Delete(Path.Combine(directory, DatabaseFileName + "-shm"));
    }

    /// <summary>The logical state of a copy of this image, read with a plain connection (no controller logic).</summary>
    public string PlainDump(string scratchDirectory)
    {
        WriteTo(scratchDirectory);
        using var db = LogicalDump.OpenPlain(Path.Combine(scratchDirectory, DatabaseFileName));
        return LogicalDump.Of(db);
    }
}

/// <summary>Every row of every table, in a canonical order: two stores with the same dump hold the same state.</summary>
public static class LogicalDump
{
    public static SqliteConnection OpenPlain(string path)
    {
        var db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Pooling = false }.ToString());
        db.Open();
        return db;
    }

    public static string Of(SqliteConnection db)
    {
        using var tx = db.BeginTransaction(deferred: true); // one read snapshot for all tables
        var tables = new List<string>();
        using (var cmd = db.CreateCommand())
        {
            cmd.Transaction = tx;
            cmd.CommandText = "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name";
            using var r = cmd.ExecuteReader();
            while (r.Read()) tables.Add(r.GetString(0));
        }
        var text = new StringBuilder();
        foreach (var table in tables)
        {
            text.Append("## ").Append(table).Append('\n');
            using var cmd = db.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = $"SELECT * FROM \"{table}\"";
            using var r = cmd.ExecuteReader();
            var rows = new List<string>();
            while (r.Read())
            {
                var cells = new string[r.FieldCount];
                for (int i = 0; i < cells.Length; i++) cells[i] = r.IsDBNull(i) ? "NULL" : Convert.ToString(r.GetValue(i), System.Globalization.CultureInfo.InvariantCulture)!;
                rows.Add(string.Join('|', cells));
            }
            rows.Sort(StringComparer.Ordinal);
            foreach (var row in rows) text.Append(row).Append('\n');
        }
        return text.ToString();
    }

    /// <summary>The epoch recorded in a dump (meta table), or 0.</summary>
    public static ulong EpochOf(string dump)
    {
        foreach (var line in dump.Split('\n'))
            if (line.StartsWith("controller_epoch|", StringComparison.Ordinal)) return ulong.Parse(line["controller_epoch|".Length..], System.Globalization.CultureInfo.InvariantCulture);
        return 0;
    }
}

/// <summary>
/// Where the last committed transaction sits in a WAL file: SQLite's WAL is a 32-byte header and frames of
/// (24-byte header + page); a frame whose "database size" field is non-zero ends a transaction, and only frames
/// carrying the header's salts belong to the current generation of the log.
/// </summary>
public readonly record struct WalTail(uint Salt1, uint Salt2, int LastCommitFrame, long TransactionStart, long TransactionEnd, int FrameBytes)
{
    public const int HeaderBytes = 32;
    public const int FrameHeaderBytes = 24;

    /// <summary>Null when the log holds no committed transaction.</summary>
    public static WalTail? Of(byte[] wal)
    {
        if (wal.Length < HeaderBytes) return null;
        int pageSize = (int)BinaryPrimitives.ReadUInt32BigEndian(wal.AsSpan(8));
        if (pageSize == 1) pageSize = 65536;
        uint salt1 = BinaryPrimitives.ReadUInt32BigEndian(wal.AsSpan(16));
        uint salt2 = BinaryPrimitives.ReadUInt32BigEndian(wal.AsSpan(20));
        int frameBytes = FrameHeaderBytes + pageSize;
        int last = -1, previous = -1;
        for (int frame = 0; ; frame++)
        {
            long at = HeaderBytes + (long)frame * frameBytes;
            if (at + frameBytes > wal.Length) break;
            var header = wal.AsSpan((int)at, FrameHeaderBytes);
            if (BinaryPrimitives.ReadUInt32BigEndian(header[8..]) != salt1 || BinaryPrimitives.ReadUInt32BigEndian(header[12..]) != salt2) break;
            if (BinaryPrimitives.ReadUInt32BigEndian(header[4..]) != 0)
            {
                previous = last;
                last = frame;
            }
        }
        if (last < 0) return null;
        return new(salt1, salt2, last, HeaderBytes + (long)(previous + 1) * frameBytes, HeaderBytes + (long)(last + 1) * frameBytes, frameBytes);
    }

    /// <summary>Identifies the committed end of the log: two images with the same key end with the same transaction.</summary>
    public (uint, uint, int) Key => (Salt1, Salt2, LastCommitFrame);
}

/// <summary>
/// Hooks every commit of a live store (SQLite's commit hook runs just before the commit is written) and captures
/// the files at that instant, which is exactly the state after the previous commit: a crash between two writes.
/// With each image goes the logical state read through a second connection to the live store, which is the
/// reference the reopened image must match.
/// </summary>
public sealed class CommitImageRecorder : IDisposable
{
    private readonly object _gate = new();
    private readonly List<StoreImage> _images = new();
    private readonly SafeFileHandle _database;
    private readonly SafeFileHandle _wal;
    private readonly SqliteConnection _reader;
    private readonly SqliteConnection _checkpointer;
    private readonly SQLitePCL.delegate_commit _hook; // kept alive: native code holds it
    private readonly SQLitePCL.strdelegate_trace _trace;
    private volatile bool _relaxed;
    private readonly SQLitePCL.sqlite3 _handle;
    private bool _checkpointedSinceCapture;
    private Exception? _failure;

    public CommitImageRecorder(ControllerStore store)
    {
        // Opened once and kept: closing any descriptor of a file drops every POSIX lock this process holds on it,
        // SQLite's included, so the files are not reopened per image.
        _database = File.OpenHandle(store.Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        _wal = File.OpenHandle(store.Path + "-wal", FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        _reader = LogicalDump.OpenPlain(store.Path);
        _checkpointer = LogicalDump.OpenPlain(store.Path);
        _handle = store.RawHandle;
        // Checkpoints happen only when the workload asks (Checkpoint), so the recorder knows which log frames are
        // already in the database file: those can no longer be torn by a crash.
        SQLitePCL.raw.sqlite3_exec(_handle, "PRAGMA wal_autocheckpoint=0;");
        _hook = _ => { Capture("commit"); return 0; };
        // Which commits are synced: the store switches synchronous per statement (ExecOrdered), so watch the pragmas.
        _trace = (_, sql) =>
        {
            if (sql.Contains("synchronous=NORMAL", StringComparison.OrdinalIgnoreCase)) _relaxed = true;
            else if (sql.Contains("synchronous=FULL", StringComparison.OrdinalIgnoreCase) || sql.Contains("synchronous=EXTRA", StringComparison.OrdinalIgnoreCase)) _relaxed = false;
        };
        SQLitePCL.raw.sqlite3_trace(_handle, _trace, null);
        lock (_gate) CaptureLocked("initial");
        SQLitePCL.raw.sqlite3_commit_hook(_handle, _hook, null);
    }

    public IReadOnlyList<StoreImage> Images
    {
        get { lock (_gate) return _images.ToList(); }
    }

    /// <summary>An exception thrown inside the hook (where it cannot propagate), rethrown here.</summary>
    public void ThrowIfFailed()
    {
        if (_failure is { } e) throw new InvalidOperationException("capturing a commit image failed", e);
    }

    /// <summary>The state after the last commit (no later commit will capture it). Call with the store idle.</summary>
    public void CaptureFinal() => Capture("final");

    /// <summary>A passive checkpoint (never waits for the writer), as SQLite's auto-checkpoint would run it.</summary>
    public void Checkpoint()
    {
        lock (_gate)
        {
            using var cmd = _checkpointer.CreateCommand();
            cmd.CommandText = "PRAGMA wal_checkpoint(PASSIVE);";
            cmd.ExecuteNonQuery();
            _checkpointedSinceCapture = true;
        }
    }

    private void Capture(string label)
    {
        try
        {
            lock (_gate) CaptureLocked(label);
        }
        catch (Exception e)
        {
            _failure ??= e;
        }
    }

    private void CaptureLocked(string label)
    {
        var wal = ReadAll(_wal);
        var database = ReadAll(_database);
        string dump = LogicalDump.Of(_reader);
        _images.Add(new StoreImage(_images.Count, database, wal, dump, _checkpointedSinceCapture, label) { NextCommitRelaxed = label == "commit" && _relaxed });
        _checkpointedSinceCapture = false;
    }

    private static byte[] ReadAll(SafeFileHandle handle)
    {
        var bytes = new byte[RandomAccess.GetLength(handle)];
        int done = 0;
        while (done < bytes.Length)
        {
            int n = RandomAccess.Read(handle, bytes.AsSpan(done), done);
            if (n == 0) break;
            done += n;
        }
        return done == bytes.Length ? bytes : bytes[..done];
    }

    public void Dispose()
    {
        SQLitePCL.raw.sqlite3_commit_hook(_handle, null, null);
        SQLitePCL.raw.sqlite3_trace(_handle, (SQLitePCL.strdelegate_trace?)null, null);
        _reader.Dispose();
        _checkpointer.Dispose();
        _database.Dispose();
        _wal.Dispose();
    }
}
