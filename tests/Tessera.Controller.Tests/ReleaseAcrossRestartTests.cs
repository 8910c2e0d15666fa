using System.Diagnostics;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class ReleaseAcrossRestartTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task After_a_restart_the_space_of_an_unfinished_release_waits_one_lease_before_another_disk_gets_it()
    {
        // Proves a restarted controller does not hand another disk the units of a release its predecessor committed
        // but had not finished: b had not dropped the old place and may still read and write it under the old
        // controller's lease. Found by the deterministic simulation (seed 7000199: a host read another disk's data).
        // Without the fix a's write fault got the unit at once; with it, a waits out the first lease, then gets it.
        const int leaseMs = 4000;
        await using var c = await TestCluster.StartAsync(leaseMs);
        await c.AddGarbageContainerAsync("c1", 1 * MiB); // room for one 1 MiB segment: the second disk can only get the released one
        var old = await c.CreatePresentedDiskAsync("old", 1 * MiB, "b");
        var fresh = await c.CreatePresentedDiskAsync("fresh", 1 * MiB, "a");
        var b = await c.ConnectAsync("b");
        var mapped = await b.FaultAndWaitAsync(old.Id, 0, write: true);
        Assert.Equal(FaultOutcome.Retry, mapped.Outcome);
        var place = new MapEntry(mapped.Entries[0]);
        Assert.True(place.HasLocation);

        // b's lease now runs a full lease; it zeroes the whole segment and then stalls: the controller commits Zero,
        // pushes Invalid blocking to b and waits for b's reply or lease, and dies meanwhile.
        await b.SendAsync(new AgentMessage { Heartbeat = new Heartbeat { Sequence = 1 } });
        await b.NextAsync(m => m.HeartbeatAck is not null);
        b.AutoReply = false;
        await b.SendAsync(new AgentMessage { Fault = new MapFault { FaultId = 1000, DiskId = old.Id, Segment = 0, Write = true, Zero = true, Count = 1 } });
        var push = await b.NextAsync(m => m.Command?.SetEntries is not null);
        Assert.True(push.Command.Blocking);
        var sinceRestart = Stopwatch.StartNew();
        await c.RestartAsync();

        var a = await c.ConnectAsync("a");
        var r = await a.KeepAliveWhile(a.FaultAndWaitAsync(fresh.Id, 0, write: true));
        Assert.Equal(FaultOutcome.Retry, r.Outcome); // held back, not refused: the space comes back after the lease
        var got = new MapEntry(r.Entries[0]);
        Assert.Equal((place.ContainerId, place.PhysicalIndex), (got.ContainerId, got.PhysicalIndex));
        Assert.True(sinceRestart.Elapsed >= TimeSpan.FromMilliseconds(leaseMs - 100),
            $"another disk got the released unit {sinceRestart.Elapsed} after the restart, before b's old lease surely lapsed");
    }
}
