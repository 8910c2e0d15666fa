using Tessera.Controller.Store;
using Tessera.Core.Mapping;
using Xunit;

namespace Tessera.Controller.Tests;

public class StoreTests
{
    private const string GoldenSchema = """
        index segments_by_location: CREATE INDEX segments_by_location ON segments (container_id, physical_index)
        table agents: CREATE TABLE agents (
            host TEXT PRIMARY KEY NOT NULL,
            incarnation INTEGER NOT NULL,
            nbd_address TEXT NOT NULL,
            last_seen TEXT NOT NULL
        )
        table container_high_water: CREATE TABLE container_high_water (
            container_id INTEGER PRIMARY KEY NOT NULL,
            high_water_unit INTEGER NOT NULL CHECK (high_water_unit >= 0)
        )
        table containers: CREATE TABLE containers (
            id INTEGER PRIMARY KEY NOT NULL CHECK (id BETWEEN 1 AND 65535),
            name TEXT NOT NULL UNIQUE,
            uri TEXT NOT NULL UNIQUE,
            size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
            failed INTEGER NOT NULL DEFAULT 0,
            failure_reason TEXT NOT NULL DEFAULT ''
        )
        table disks: CREATE TABLE disks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            size_bytes INTEGER NOT NULL CHECK (size_bytes > 0),
            segment_size_bytes INTEGER NOT NULL,
            created_at TEXT NOT NULL
        )
        table meta: CREATE TABLE meta (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL
        )
        table migration_jobs: CREATE TABLE migration_jobs (
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
        )
        table presentations: CREATE TABLE presentations (
            disk_id INTEGER NOT NULL REFERENCES disks(id),
            host TEXT NOT NULL,
            read_only INTEGER NOT NULL,
            PRIMARY KEY (disk_id, host)
        )
        table releasing: CREATE TABLE releasing (
            container_id INTEGER NOT NULL,
            physical_index INTEGER NOT NULL,
            units INTEGER NOT NULL,
            PRIMARY KEY (container_id, physical_index)
        )
        table segments: CREATE TABLE segments (
            disk_id INTEGER NOT NULL REFERENCES disks(id),
            segment INTEGER NOT NULL,
            container_id INTEGER NOT NULL,
            physical_index INTEGER NOT NULL,
            states INTEGER NOT NULL,
            PRIMARY KEY (disk_id, segment)
        ) WITHOUT ROWID
        table snapshots: CREATE TABLE snapshots (
            disk_id INTEGER PRIMARY KEY NOT NULL REFERENCES disks(id),
            parent_disk_id INTEGER NOT NULL REFERENCES disks(id),
            name TEXT NOT NULL,
            ready INTEGER NOT NULL DEFAULT 0,
            UNIQUE (parent_disk_id, name)
        )
        table unpresenting: CREATE TABLE unpresenting (
            disk_id INTEGER NOT NULL,
            host TEXT NOT NULL,
            PRIMARY KEY (disk_id, host)
        )
        """;

    [Fact]
    public void The_store_schema_is_pinned()
    {
        // Proves the persisted format does not change by accident: a change here needs a schema version bump.
        string dir = Path.Combine(Path.GetTempPath(), "tessera-store-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var store = ControllerStore.Open(dir);
            Assert.Equal(GoldenSchema, store.DumpSchema());
            Assert.Equal(5, ControllerStore.SchemaVersion);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void The_epoch_grows_with_every_open_and_entries_round_trip()
    {
        // Proves each controller start has a new epoch and a stored entry (location and states) reads back unchanged.
        string dir = Path.Combine(Path.GetTempPath(), "tessera-store-" + Guid.NewGuid().ToString("N"));
        try
        {
            ulong first;
            var entry = MapEntry.Mapped(7, 123456789, EntryStates.NoWrite);
            using (var store = ControllerStore.Open(dir))
            {
                first = store.Epoch;
                store.AddContainer("c", "file:///x", 1 << 30);
                var disk = store.CreateDisk("d", 1 << 30, 1 << 20, "now")!;
                store.SetEntries(disk.Id, [(3, entry), (4, MapEntry.Error)]);
                store.SetEntries(disk.Id, [(4, MapEntry.Zero)]);
            }
            using (var store = ControllerStore.Open(dir))
            {
                Assert.Equal(first + 1, store.Epoch);
                var disk = store.GetDisk("d")!;
                Assert.Equal(entry, store.GetEntry(disk.Id, 3));
                Assert.Equal(MapEntry.Zero, store.GetEntry(disk.Id, 4));
                Assert.Single(store.AllSegments());
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
