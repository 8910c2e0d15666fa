using System.Diagnostics;
using Grpc.Core;
using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class AgentChannelTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task Register_is_answered_with_Registered_then_one_CreateTable_per_presented_disk()
    {
        // Proves the agent gets Registered first and then a CreateTable for exactly the disks presented to its host.
        await using var c = await TestCluster.StartAsync();
        await c.CreatePresentedDiskAsync("d1", 8 * MiB, "h1");
        await c.Admin.CreateDiskAsync(new CreateDiskRequest { Name = "d2", SizeBytes = 4 * MiB, SegmentSizeBytes = 64 * 1024 });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "d2", Host = "h1", ReadOnly = true });
        await c.CreatePresentedDiskAsync("other", 8 * MiB, "h2");

        var agent = await c.ConnectAsync("h1");
        Assert.Equal((uint)c.LeaseMs, agent.Registered.LeaseMs);
        Assert.True(agent.Registered.ControllerEpoch >= 1);

        var first = (await agent.NextAsync()).Command;
        var second = (await agent.NextAsync()).Command;
        Assert.Equal("d1", first.CreateTable.Name);
        Assert.Equal((ulong)(8 * MiB), first.CreateTable.SizeBytes);
        Assert.Equal((uint)MiB, first.CreateTable.SegmentSizeBytes);
        Assert.False(first.CreateTable.ReadOnly);
        Assert.Equal("d2", second.CreateTable.Name);
        Assert.Equal(64u * 1024, second.CreateTable.SegmentSizeBytes);
        Assert.True(second.CreateTable.ReadOnly);

        // Nothing else: a heartbeat is the next thing answered.
        await agent.SendAsync(new AgentMessage { Heartbeat = new Heartbeat { Sequence = 7 } });
        Assert.Equal(7ul, (await agent.NextAsync()).HeartbeatAck.Sequence);
    }

    [Fact]
    public async Task A_stream_that_does_not_start_with_Register_is_ended_with_an_error()
    {
        // Proves the controller refuses an agent that skips registration.
        await using var c = await TestCluster.StartAsync();
        var call = new AgentChannel.AgentChannelClient(Grpc.Net.Client.GrpcChannel.ForAddress(c.Host.Url)).Connect();
        await call.RequestStream.WriteAsync(new AgentMessage { Heartbeat = new Heartbeat { Sequence = 1 } });
        var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
    }

    [Fact]
    public async Task A_new_registration_of_a_host_ends_the_older_stream()
    {
        // Proves one session per host: the older stream is ended when the host registers again.
        await using var c = await TestCluster.StartAsync();
        var old = await c.ConnectAsync("h1");
        await c.ConnectAsync("h1");
        var status = await old.Ended.Task.WaitAsync(TestCluster.Timeout);
        Assert.Equal(StatusCode.Aborted, status.StatusCode);
    }

    [Fact]
    public async Task A_read_fault_on_a_Zero_segment_is_answered_retry_with_Zero_entries()
    {
        // Proves reads of never-written segments allocate nothing and get the Zero entry (with a window around it).
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 300 * MiB, "h1");
        var agent = await c.ConnectAsync("h1");

        var r = await agent.FaultAndWaitAsync(disk.Id, 260, write: false);
        Assert.Equal(FaultOutcome.Retry, r.Outcome);
        Assert.Equal(256ul, r.FirstSegment);
        Assert.Equal(300 - 256, r.Entries.Count); // clipped to the disk
        Assert.All(r.Entries, e => Assert.Equal(MapEntry.Zero.Raw, e));
        Assert.Equal(0ul, (await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments);
    }

    [Fact]
    public async Task A_write_fault_on_a_Zero_segment_allocates_zeroed_space_that_survives_a_restart()
    {
        // Proves thin allocation zeroes the new range (old bytes are garbage), persists the mapping, and the allocator
        // rebuilt after a restart neither forgets nor reuses it.
        await using var c = await TestCluster.StartAsync();
        var container = await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 16 * MiB, "h1");
        var agent = await c.ConnectAsync("h1");

        var r = await agent.FaultAndWaitAsync(disk.Id, 5, write: true);
        Assert.Equal(FaultOutcome.Retry, r.Outcome);
        var entry = new MapEntry(r.Entries[(int)(5 - r.FirstSegment)]);
        Assert.Equal(EntryStates.None, entry.States);
        Assert.Equal((ushort)container.Id, entry.ContainerId);
        Assert.Equal(0, entry.PhysicalIndex % 16); // 1 MiB segment = 16 units, aligned

        var bytes = await File.ReadAllBytesAsync(new Uri(container.Uri).LocalPath);
        Assert.Equal(-1, bytes.AsSpan((int)entry.ContainerOffset, (int)MiB).IndexOfAnyExcept((byte)0));
        int outside = entry.ContainerOffset == 0 ? (int)MiB : 0;
        Assert.Equal(0xAB, bytes[outside]); // only the new segment was zeroed

        await c.RestartAsync();
        agent = await c.ConnectAsync("h1");
        var again = await agent.FaultAndWaitAsync(disk.Id, 5, write: true);
        Assert.Equal(entry.Raw, again.Entries[(int)(5 - again.FirstSegment)]);
        var read = await agent.FaultAndWaitAsync(disk.Id, 5, write: false);
        Assert.Equal(entry.Raw, read.Entries[(int)(5 - read.FirstSegment)]);

        var other = await agent.FaultAndWaitAsync(disk.Id, 6, write: true);
        var otherEntry = new MapEntry(other.Entries[(int)(6 - other.FirstSegment)]);
        Assert.NotEqual(entry.PhysicalIndex, otherEntry.PhysicalIndex);
        Assert.Equal(2ul, (await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments);
    }

    [Fact]
    public async Task Every_other_holder_stops_reading_zeros_before_the_writer_gets_its_answer()
    {
        // Proves the sharing rule: host B no longer reads the old Zero entry before host A's write may proceed.
        // B gets Invalid rather than the new entry, so no holder can write the new segment while another holder
        // (or A itself) still reads zeros; B loads the entry on its next fault.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("shared", 8 * MiB, "a", "b");
        var a = await c.ConnectAsync("a");
        var b = await c.ConnectAsync("b", autoReply: false);
        var createB = (await b.NextAsync(m => m.Command?.CreateTable is not null)).Command;
        await b.ReplyAsync(createB);
        await a.NextAsync(m => m.Command?.CreateTable is not null);

        ulong faultId = await a.FaultAsync(disk.Id, 3, write: true);
        var push = (await b.NextAsync(m => m.Command?.SetEntries is not null)).Command;
        Assert.Equal(disk.Id, push.DiskId);
        Assert.Equal(3ul, push.SetEntries.FirstSegment);
        Assert.Equal(1ul, push.SetEntries.Count);
        Assert.Equal(MapEntry.Invalid, new MapEntry(push.SetEntries.Entries[0]));

        // A must still be waiting while B has not replied.
        var early = a.NextAsync(m => m.FaultResponse?.FaultId == faultId, TimeSpan.FromMilliseconds(500));
        await Assert.ThrowsAsync<TimeoutException>(() => early);

        await b.ReplyAsync(push);
        var r = (await a.NextAsync(m => m.FaultResponse?.FaultId == faultId)).FaultResponse;
        Assert.Equal(FaultOutcome.Retry, r.Outcome);
        var entry = new MapEntry(r.Entries[(int)(3 - r.FirstSegment)]);
        Assert.True(entry.HasLocation);
        var reload = await b.FaultAndWaitAsync(disk.Id, 3, false);
        Assert.Equal(entry, new MapEntry(reload.Entries[(int)(3 - reload.FirstSegment)]));
    }

    [Fact]
    public async Task A_holder_that_never_replies_delays_the_writer_only_until_its_lease_lapses()
    {
        // Proves the lease rule: a silent agent is fenced (stream closed) after its lease, and then the writer proceeds.
        const int leaseMs = 1500;
        await using var c = await TestCluster.StartAsync(leaseMs);
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("shared", 8 * MiB, "a", "b");
        var a = await c.ConnectAsync("a");
        var bRegistered = Stopwatch.StartNew();
        var b = await c.ConnectAsync("b", autoReply: false); // never replies, never heartbeats

        using var heartbeats = new CancellationTokenSource();
        var keepAlive = Task.Run(async () =>
        {
            for (ulong seq = 1; !heartbeats.IsCancellationRequested; seq++)
            {
                await a.SendAsync(new AgentMessage { Heartbeat = new Heartbeat { Sequence = seq } });
                try { await Task.Delay(leaseMs / 5, heartbeats.Token); } catch (OperationCanceledException) { }
            }
        });

        var r = await a.FaultAndWaitAsync(disk.Id, 0, write: true);
        var waited = bRegistered.Elapsed;
        Assert.Equal(FaultOutcome.Retry, r.Outcome);
        Assert.True(waited >= TimeSpan.FromMilliseconds(leaseMs - 100), $"answered after {waited}, before B's lease lapsed");
        Assert.True(waited < TimeSpan.FromMilliseconds(leaseMs + 5000), $"answered after {waited}");
        await b.Ended.Task.WaitAsync(TestCluster.Timeout); // B's session was closed

        // B is no holder any more, A (kept alive by its heartbeats) is answered at once.
        var quick = Stopwatch.StartNew();
        var r2 = await a.FaultAndWaitAsync(disk.Id, 1, write: true);
        Assert.Equal(FaultOutcome.Retry, r2.Outcome);
        Assert.True(quick.Elapsed < TimeSpan.FromMilliseconds(leaseMs), $"second fault took {quick.Elapsed}");
        heartbeats.Cancel();
        await keepAlive;
    }

    [Fact]
    public async Task A_full_pool_answers_NoSpace_and_an_added_container_ends_it()
    {
        // Proves ENOSPC leaves the segment Zero and allocation resumes once a container is added.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("small", 2 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "h1");
        var agent = await c.ConnectAsync("h1");
        Assert.Equal(FaultOutcome.Retry, (await agent.FaultAndWaitAsync(disk.Id, 0, true)).Outcome);
        Assert.Equal(FaultOutcome.Retry, (await agent.FaultAndWaitAsync(disk.Id, 1, true)).Outcome);

        var full = await agent.FaultAndWaitAsync(disk.Id, 2, true);
        Assert.Equal(FaultOutcome.Fail, full.Outcome);
        Assert.Equal((uint)IoStatus.NoSpace, full.Status);
        var read = await agent.FaultAndWaitAsync(disk.Id, 2, false);
        Assert.Equal(MapEntry.Zero.Raw, read.Entries[2]);

        var added = await c.AddGarbageContainerAsync("more", 4 * MiB);
        var upsert = (await agent.NextAsync(m => m.Command?.UpsertContainer is not null)).Command.UpsertContainer;
        Assert.Equal(added.Id, upsert.Container.Id);
        var ok = await agent.FaultAndWaitAsync(disk.Id, 2, true);
        Assert.Equal(FaultOutcome.Retry, ok.Outcome);
        Assert.Equal((ushort)added.Id, new MapEntry(ok.Entries[2]).ContainerId);
    }

    [Fact]
    public async Task Faults_for_unknown_or_unpresented_disks_fail_with_Shutdown()
    {
        // Proves an agent cannot get entries for a disk that is not presented to its host.
        await using var c = await TestCluster.StartAsync();
        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "h2");
        var agent = await c.ConnectAsync("h1");
        var r = await agent.FaultAndWaitAsync(disk.Id, 0, false);
        Assert.Equal(FaultOutcome.Fail, r.Outcome);
        Assert.Equal((uint)IoStatus.Shutdown, r.Status);
        var unknown = await agent.FaultAndWaitAsync(999, 0, false);
        Assert.Equal((uint)IoStatus.Shutdown, unknown.Status);
    }

    [Fact]
    public async Task Unpresent_sends_a_blocking_DeleteTable_and_waits_for_the_reply()
    {
        // Proves unpresent returns only after the host acknowledged a blocking DeleteTable.
        await using var c = await TestCluster.StartAsync();
        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "h1");
        var agent = await c.ConnectAsync("h1", autoReply: false);
        await agent.ReplyAsync((await agent.NextAsync(m => m.Command?.CreateTable is not null)).Command);

        var call = c.Admin.UnpresentDiskAsync(new UnpresentRequest { Disk = "d", Host = "h1" }).ResponseAsync;
        var delete = (await agent.NextAsync(m => m.Command?.DeleteTable is not null)).Command;
        Assert.True(delete.Blocking);
        Assert.Equal(disk.Id, delete.DiskId);
        await Assert.ThrowsAsync<TimeoutException>(() => call.WaitAsync(TimeSpan.FromMilliseconds(300)));
        await agent.ReplyAsync(delete);
        await call.WaitAsync(TestCluster.Timeout);

        var r = await agent.FaultAndWaitAsync(disk.Id, 0, false);
        Assert.Equal((uint)IoStatus.Shutdown, r.Status);
        Assert.Empty((await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).Presentations);
    }

    [Fact]
    public async Task Present_to_a_connected_host_creates_the_table_there()
    {
        // Proves presenting a disk to a connected host sends it CreateTable at once.
        await using var c = await TestCluster.StartAsync();
        var agent = await c.ConnectAsync("h1");
        await c.Admin.CreateDiskAsync(new CreateDiskRequest { Name = "late", SizeBytes = MiB });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "late", Host = "h1" });
        var create = (await agent.NextAsync(m => m.Command?.CreateTable is not null)).Command;
        Assert.Equal("late", create.CreateTable.Name);
    }

    [Fact]
    public async Task Releasing_a_segment_pushes_a_blocking_Invalid_to_every_holder_before_freeing_its_space()
    {
        // Proves the TRIM seam: the store returns to Zero, every holder (the writer too) gets a blocking Invalid
        // (Zero would let one holder act on it while another still used the old place), and the space is free only
        // after they acknowledged.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 4 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "a", "b");
        var a = await c.ConnectAsync("a");
        var b = await c.ConnectAsync("b", autoReply: false);
        await b.ReplyAsync((await b.NextAsync(m => m.Command?.CreateTable is not null)).Command);
        var write = a.FaultAndWaitAsync(disk.Id, 1, true);
        await b.ReplyAsync((await b.NextAsync(m => m.Command?.SetEntries is not null)).Command);
        Assert.Equal(FaultOutcome.Retry, (await write).Outcome);

        var release = c.Host.Core.Coordinator.ReleaseSegmentsAsync(disk.Id, 0, 4);
        var zeroA = (await a.NextAsync(m => m.Command?.SetEntries is not null)).Command;
        var zeroB = (await b.NextAsync(m => m.Command?.SetEntries is not null)).Command;
        foreach (var z in new[] { zeroA, zeroB })
        {
            Assert.True(z.Blocking);
            Assert.Equal((0ul, 4ul, MapEntry.Invalid.Raw), (z.SetEntries.FirstSegment, z.SetEntries.Count, z.SetEntries.Entries.Single()));
        }
        var usedBefore = (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single().UsedBytes;
        Assert.Equal((ulong)MiB, usedBefore); // B has not acknowledged: the space is still taken
        await b.ReplyAsync(zeroB);
        await release.WaitAsync(TestCluster.Timeout);
        Assert.Equal(0ul, (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single().UsedBytes);
        Assert.Equal(0ul, (await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments);
    }

    [Fact]
    public async Task Concurrent_write_faults_on_one_segment_from_two_hosts_allocate_it_once()
    {
        // Proves faults of one disk are serialised: the second writer gets the first writer's location, not a new one.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("shared", 8 * MiB, "a", "b");
        var a = await c.ConnectAsync("a");
        var b = await c.ConnectAsync("b");
        var fromA = a.FaultAndWaitAsync(disk.Id, 4, true);
        var fromB = b.FaultAndWaitAsync(disk.Id, 4, true);
        var (ra, rb) = (await fromA, await fromB);
        Assert.Equal(ra.Entries[4], rb.Entries[4]);
        Assert.True(new MapEntry(ra.Entries[4]).HasLocation);
        Assert.Equal(1ul, (await c.Admin.GetDiskAsync(new DiskRef { Name = "shared" })).AllocatedSegments);
    }

    [Fact]
    public async Task A_holder_that_heartbeats_but_never_replies_is_fenced_and_no_longer_acknowledged()
    {
        // Proves a live-but-stuck agent cannot hold up writers forever: after one lease without a reply its session
        // is closed, its heartbeats stop being acknowledged, and the writer proceeds once that lease ran out.
        const int leaseMs = 1000;
        await using var c = await TestCluster.StartAsync(leaseMs);
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("shared", 8 * MiB, "a", "b");
        var a = await c.ConnectAsync("a");
        var b = await c.ConnectAsync("b", autoReply: false);
        await b.ReplyAsync((await b.NextAsync(m => m.Command?.CreateTable is not null)).Command);

        using var stop = new CancellationTokenSource();
        var keepAlive = Task.Run(async () =>
        {
            for (ulong seq = 1; !stop.IsCancellationRequested; seq++)
            {
                try
                {
                    await b.SendAsync(new AgentMessage { Heartbeat = new Heartbeat { Sequence = seq } });
                    await Task.Delay(leaseMs / 10, stop.Token);
                }
                catch (Exception) { return; }
            }
        });

        var sw = Stopwatch.StartNew();
        var r = await a.FaultAndWaitAsync(disk.Id, 0, true);
        Assert.Equal(FaultOutcome.Retry, r.Outcome);
        Assert.True(sw.Elapsed >= TimeSpan.FromMilliseconds(leaseMs - 100), $"answered after {sw.Elapsed}, B was still live");
        Assert.True(sw.Elapsed < TimeSpan.FromMilliseconds(3 * leaseMs + 5000), $"answered after {sw.Elapsed}");
        await b.Ended.Task.WaitAsync(TestCluster.Timeout); // the controller closed B's stream
        Assert.NotNull(await b.NextAsync(m => m.Command?.SetEntries is not null)); // B was asked first
        stop.Cancel();
        await keepAlive;
    }

    [Fact]
    public async Task A_read_only_host_gets_NoWrite_entries_and_its_write_faults_are_refused()
    {
        // Proves a read-only presentation can read mapped data but can neither allocate nor write.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.Admin.CreateDiskAsync(new CreateDiskRequest { Name = "d", SizeBytes = (ulong)(8 * MiB) });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "d", Host = "rw" });
        await c.Admin.PresentDiskAsync(new PresentRequest { Disk = "d", Host = "ro", ReadOnly = true });
        var rw = await c.ConnectAsync("rw");
        var ro = await c.ConnectAsync("ro");

        var written = await rw.FaultAndWaitAsync(disk.Id, 1, true);
        var mapped = new MapEntry(written.Entries[1]);
        var push = (await ro.NextAsync(m => m.Command?.SetEntries is not null)).Command;
        Assert.Equal(MapEntry.Invalid.Raw, push.SetEntries.Entries.Single()); // stop reading zeros; load on the next fault

        var read = await ro.FaultAndWaitAsync(disk.Id, 1, false);
        Assert.Equal(EntryStates.NoWrite, new MapEntry(read.Entries[1]).States);
        Assert.Equal(mapped.PhysicalIndex, new MapEntry(read.Entries[1]).PhysicalIndex);
        var write = await ro.FaultAndWaitAsync(disk.Id, 2, true);
        Assert.Equal(FaultOutcome.Fail, write.Outcome);
        Assert.Equal((uint)IoStatus.NotPermitted, write.Status);
        Assert.Equal(1ul, (await c.Admin.GetDiskAsync(new DiskRef { Name = "d" })).AllocatedSegments);
    }

    [Fact]
    public async Task A_zeroing_fault_returns_whole_segments_to_Zero_and_frees_their_space()
    {
        // Proves WRITE_ZEROES/TRIM of whole segments becomes a table change: Zero in the store, Invalid pushed blocking, space freed.
        await using var c = await TestCluster.StartAsync();
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("d", 8 * MiB, "h1");
        var agent = await c.ConnectAsync("h1");
        await agent.FaultAndWaitAsync(disk.Id, 2, true);
        await agent.FaultAndWaitAsync(disk.Id, 3, true);

        await agent.SendAsync(new AgentMessage { Fault = new MapFault { FaultId = 1000, DiskId = disk.Id, Segment = 2, Write = true, Zero = true, Count = 2 } });
        var zero = (await agent.NextAsync(m => m.Command?.SetEntries is not null)).Command;
        Assert.True(zero.Blocking);
        Assert.Equal(MapEntry.Invalid.Raw, zero.SetEntries.Entries.Single()); // the holders load Zero on their next fault
        var r = (await agent.NextAsync(m => m.FaultResponse?.FaultId == 1000)).FaultResponse;
        Assert.Equal(FaultOutcome.Retry, r.Outcome);
        Assert.Equal(MapEntry.Zero.Raw, r.Entries[2]);
        Assert.Equal(MapEntry.Zero.Raw, r.Entries[3]);
        Assert.Equal(0ul, (await c.Admin.ListContainersAsync(new ListContainersRequest())).Containers.Single().UsedBytes);
    }

    [Fact]
    public async Task After_a_controller_restart_writes_wait_one_lease_for_presented_hosts_that_have_not_registered()
    {
        // Proves a restarted controller does not forget holders it never saw: host b may still serve reads from a
        // table the previous controller gave it, so a's first write waits until b's old lease surely lapsed.
        const int leaseMs = 3000;
        await using var c = await TestCluster.StartAsync(leaseMs);
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("shared", 8 * MiB, "a", "b");
        await c.CreatePresentedDiskAsync("alone", 8 * MiB, "a");
        var alone = await c.Admin.GetDiskAsync(new DiskRef { Name = "alone" });

        var sinceRestart = Stopwatch.StartNew();
        await c.RestartAsync();
        var a = await c.ConnectAsync("a");
        var quick = await a.FaultAndWaitAsync(alone.Id, 0, true); // only a holds "alone": no wait
        Assert.Equal(FaultOutcome.Retry, quick.Outcome);
        Assert.True(sinceRestart.Elapsed < TimeSpan.FromMilliseconds(leaseMs), $"a disk only a holds waited {sinceRestart.Elapsed}");

        var r = await a.FaultAndWaitAsync(disk.Id, 0, true);
        Assert.Equal(FaultOutcome.Retry, r.Outcome);
        Assert.True(sinceRestart.Elapsed >= TimeSpan.FromMilliseconds(leaseMs - 100), $"answered {sinceRestart.Elapsed} after the restart, before b's old lease lapsed");
    }

    [Fact]
    public async Task A_reconnect_of_the_same_agent_process_is_not_waited_out_but_a_new_incarnation_is()
    {
        // Proves the old session of a host stops holding a disk once the same incarnation re-registered and got
        // the disk's table again, while a restarted agent's (new incarnation) old session is waited for one lease.
        const int leaseMs = 2500;
        await using var c = await TestCluster.StartAsync(leaseMs);
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("shared", 8 * MiB, "a", "b");
        var a = await c.ConnectAsync("a");
        var b1 = await c.ConnectAsync("b");
        var b2 = await c.ConnectAsync("b", incarnation: b1.Incarnation); // same process, new stream
        await b1.Ended.Task.WaitAsync(TestCluster.Timeout);

        var sw = Stopwatch.StartNew();
        var r = await a.FaultAndWaitAsync(disk.Id, 0, true);
        Assert.Equal(FaultOutcome.Retry, r.Outcome);
        Assert.True(sw.Elapsed < TimeSpan.FromMilliseconds(leaseMs - 500), $"same-incarnation reconnect was waited out ({sw.Elapsed})");
        Assert.NotNull(await b2.NextAsync(m => m.Command?.SetEntries is not null));

        await b2.SendAsync(new AgentMessage { Heartbeat = new Heartbeat { Sequence = 1 } });
        await b2.NextAsync(m => m.HeartbeatAck is not null); // b2's lease now runs a full lease from here
        sw.Restart();
        var b3 = await c.ConnectAsync("b"); // the agent restarted: the old process may still serve I/O
        await b2.Ended.Task.WaitAsync(TestCluster.Timeout);
        var r2 = await a.FaultAndWaitAsync(disk.Id, 1, true);
        Assert.Equal(FaultOutcome.Retry, r2.Outcome);
        Assert.True(sw.Elapsed >= TimeSpan.FromMilliseconds(leaseMs / 2), $"new incarnation's predecessor was not waited for ({sw.Elapsed})");
        Assert.NotNull(await b3.NextAsync(m => m.Command?.SetEntries is not null));
    }
}
