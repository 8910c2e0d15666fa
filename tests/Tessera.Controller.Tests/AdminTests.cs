using Grpc.Core;
using Microsoft.Data.Sqlite;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class AdminTests
{
    private const long MiB = 1 << 20;

    /// <summary>Every row of every table, as text, read through a separate connection.</summary>
    private static string DumpRows(TestCluster c)
    {
        using var db = new SqliteConnection($"Data Source={Path.Combine(c.Directory, "data", "tessera.db")};Mode=ReadOnly;Pooling=False");
        db.Open();
        var sb = new System.Text.StringBuilder();
        foreach (var table in new[] { "meta", "containers", "disks", "segments", "presentations", "agents" })
        {
            using var cmd = db.CreateCommand();
            cmd.CommandText = $"SELECT * FROM {table} ORDER BY 1, 2";
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                sb.Append(table).Append(':');
                for (int i = 0; i < r.FieldCount; i++) sb.Append(' ').Append(r.GetValue(i));
                sb.Append('\n');
            }
        }
        return sb.ToString();
    }

    [Fact]
    public async Task Invalid_admin_requests_fail_with_the_right_status_and_change_nothing()
    {
        // Proves validation happens before any change: the store is byte-for-byte the same after bad requests.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 4 * MiB);
        await c.CreatePresentedDiskAsync("d", 8 * MiB, "h1");
        string before = DumpRows(c);

        async Task Expect(StatusCode code, Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal(code, e.StatusCode);
            Assert.DoesNotContain('\n', e.Status.Detail);
            Assert.NotEmpty(e.Status.Detail);
        }

        var a = c.Admin;
        await Expect(StatusCode.InvalidArgument, async () => await a.CreateDiskAsync(new CreateDiskRequest { Name = "bad name", SizeBytes = MiB }));
        await Expect(StatusCode.InvalidArgument, async () => await a.CreateDiskAsync(new CreateDiskRequest { Name = new string('x', 65), SizeBytes = MiB }));
        await Expect(StatusCode.InvalidArgument, async () => await a.CreateDiskAsync(new CreateDiskRequest { Name = "x", SizeBytes = 0 }));
        await Expect(StatusCode.InvalidArgument, async () => await a.CreateDiskAsync(new CreateDiskRequest { Name = "x", SizeBytes = 1000 }));
        await Expect(StatusCode.InvalidArgument, async () => await a.CreateDiskAsync(new CreateDiskRequest { Name = "x", SizeBytes = MiB, SegmentSizeBytes = 3 * 65536 }));
        await Expect(StatusCode.InvalidArgument, async () => await a.CreateDiskAsync(new CreateDiskRequest { Name = "x", SizeBytes = MiB, SegmentSizeBytes = 32768 }));
        await Expect(StatusCode.InvalidArgument, async () => await a.CreateDiskAsync(new CreateDiskRequest { Name = "x", SizeBytes = MiB, SegmentSizeBytes = 128 << 20 }));
        await Expect(StatusCode.AlreadyExists, async () => await a.CreateDiskAsync(new CreateDiskRequest { Name = "d", SizeBytes = MiB }));
        await Expect(StatusCode.InvalidArgument, async () => await a.AddContainerAsync(new AddContainerRequest { Name = "c2", Uri = "http://x/y" }));
        await Expect(StatusCode.InvalidArgument, async () => await a.AddContainerAsync(new AddContainerRequest { Name = "c2", Uri = "file://host/path" }));
        await Expect(StatusCode.InvalidArgument, async () => await a.AddContainerAsync(new AddContainerRequest { Name = "bad/name", Uri = "file:///tmp/x" }));
        await Expect(StatusCode.AlreadyExists, async () => await a.AddContainerAsync(new AddContainerRequest { Name = "c1", Uri = "file:///tmp/other" }));
        await Expect(StatusCode.AlreadyExists, async () => await a.AddContainerAsync(new AddContainerRequest { Name = "c2", Uri = "file://" + Path.Combine(c.Directory, "c1.img") }));
        await Expect(StatusCode.FailedPrecondition, async () => await a.AddContainerAsync(new AddContainerRequest { Name = "c2", Uri = "file://" + Path.Combine(c.Directory, "missing.img") }));
        await Expect(StatusCode.NotFound, async () => await a.GetDiskAsync(new DiskRef { Name = "nope" }));
        await Expect(StatusCode.NotFound, async () => await a.PresentDiskAsync(new PresentRequest { Disk = "nope", Host = "h1" }));
        await Expect(StatusCode.InvalidArgument, async () => await a.PresentDiskAsync(new PresentRequest { Disk = "d", Host = "" }));
        await Expect(StatusCode.AlreadyExists, async () => await a.PresentDiskAsync(new PresentRequest { Disk = "d", Host = "h1" }));
        await Expect(StatusCode.NotFound, async () => await a.UnpresentDiskAsync(new UnpresentRequest { Disk = "d", Host = "h9" }));
        await Expect(StatusCode.FailedPrecondition, async () => await a.DeleteDiskAsync(new DiskRef { Name = "d" }));
        await Expect(StatusCode.NotFound, async () => await a.GetDiskMapAsync(new DiskRef { Name = "nope" }));

        Assert.Equal(before, DumpRows(c));
        Assert.False(File.Exists(Path.Combine(c.Directory, "missing.img")));
    }

    [Fact]
    public async Task AddContainer_creates_a_sparse_file_and_ListContainers_reports_usage()
    {
        // Proves size_bytes creates a missing file container and usage follows allocations and disk deletion.
        await using var c = await TestCluster.StartAsync();
        string path = Path.Combine(c.Directory, "new.img");
        var view = await c.Admin.AddContainerAsync(new AddContainerRequest { Name = "new", Uri = "file://" + path, SizeBytes = (ulong)(4 * MiB) });
        Assert.True(File.Exists(path));
        Assert.Equal((ulong)(4 * MiB), view.SizeBytes);
        Assert.Equal((ulong)(4 * MiB), view.FreeBytes);
        Assert.Equal("ok", view.Health);

        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "h1");
        var agent = await c.ConnectAsync("h1");
        await agent.FaultAndWaitAsync(disk.Id, 0, true);
        await agent.FaultAndWaitAsync(disk.Id, 1, true);
        var used = (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single();
        Assert.Equal((ulong)(2 * MiB), used.UsedBytes);
        Assert.Equal((ulong)(2 * MiB), used.FreeBytes);

        var status = await c.Admin.GetStatusAsync(new StatusRequest());
        Assert.Equal(1u, status.HostsConnected);
        Assert.Equal((ulong)(2 * MiB), status.PoolUsedBytes);
        var hosts = await c.Admin.ListHostsAsync(new ListHostsRequest());
        Assert.True(hosts.Hosts.Single(h => h.Host == "h1").Connected);

        await c.Admin.UnpresentDiskAsync(new UnpresentRequest { Disk = "d", Host = "h1" });
        await c.Admin.DeleteDiskAsync(new DiskRef { Name = "d" });
        var freed = (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single();
        Assert.Equal(0ul, freed.UsedBytes);
        Assert.Empty((await c.Admin.ListDisksAsync(new ListDisksRequest())).Disks);
    }

    [Fact]
    public async Task GetDiskMap_reports_runs_of_zero_and_consecutive_mapped_segments()
    {
        // Proves the map is summarised into runs and unwritten stretches show as zero.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "h1");
        var agent = await c.ConnectAsync("h1");
        await agent.FaultAndWaitAsync(disk.Id, 2, true);
        await agent.FaultAndWaitAsync(disk.Id, 3, true);

        var map = await c.Admin.GetDiskMapAsync(new DiskRef { Name = "d" });
        Assert.Equal(3, map.Ranges.Count);
        Assert.Equal(("zero", 0ul, 2ul), (map.Ranges[0].State, map.Ranges[0].FirstSegment, map.Ranges[0].Count));
        Assert.Equal(("mapped", 2ul, 2ul, "c1"), (map.Ranges[1].State, map.Ranges[1].FirstSegment, map.Ranges[1].Count, map.Ranges[1].Container));
        Assert.Equal(("zero", 4ul, 4ul), (map.Ranges[2].State, map.Ranges[2].FirstSegment, map.Ranges[2].Count));
    }
}
