using System.Diagnostics;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class FirstLeaseWriteGraceTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task After_a_restart_no_write_is_permitted_while_a_presented_host_has_not_registered()
    {
        // The previous controller may have persisted an allocation it had not finished pushing; a presented host that
        // has not registered with this controller yet may still read that segment as Zero from its old table, under
        // the old controller's lease. So until this controller's first lease is over, a read fault gets entries
        // without write permission and a write fault waits (found by the deterministic simulation, seed 6100046: the
        // new controller answered a write fault from the store at once, the write was acknowledged, and the other
        // host read zeros). Without the rule both answers below come at once, the first with write permission.
        const int leaseMs = 3000;
        await using var c = await TestCluster.StartAsync(leaseMs);
        await c.AddGarbageContainerAsync("c1", 8 * MiB);
        var disk = await c.CreatePresentedDiskAsync("shared", 4 * MiB, "a", "b");
        var a = await c.ConnectAsync("a");
        var b = await c.ConnectAsync("b");
        var allocated = await a.FaultAndWaitAsync(disk.Id, 0, write: true);
        Assert.True(new MapEntry(allocated.Entries[0]).HasLocation);
        Assert.NotNull(b);

        var sinceRestart = Stopwatch.StartNew(); // before the new controller starts: the elapsed time overestimates its age
        await c.RestartAsync(); // disconnects a and b
        a = await c.ConnectAsync("a"); // b stays away: it may still be serving from its old table
        var read = await a.FaultAndWaitAsync(disk.Id, 0, write: false);
        var readEntry = new MapEntry(read.Entries[0]);
        if (sinceRestart.Elapsed < TimeSpan.FromMilliseconds(leaseMs - 100))
            Assert.True((readEntry.States & EntryStates.NoWrite) != 0, $"a read fault {sinceRestart.Elapsed} after the restart got write permission: {readEntry}");

        var write = await a.KeepAliveWhile(a.FaultAndWaitAsync(disk.Id, 0, write: true));
        Assert.Equal(FaultOutcome.Retry, write.Outcome);
        var writeEntry = new MapEntry(write.Entries[0]);
        Assert.True(writeEntry.HasLocation && (writeEntry.States & EntryStates.NoWrite) == 0, $"after the first lease the write fault gets a writable entry, not {writeEntry}");
        Assert.True(sinceRestart.Elapsed >= TimeSpan.FromMilliseconds(leaseMs - 100),
            $"a write fault was answered {sinceRestart.Elapsed} after the restart, while b's old lease may still run");
    }
}
