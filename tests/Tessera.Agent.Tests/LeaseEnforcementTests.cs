using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>
/// An agent whose lease ran out acts on nothing until the lease is renewed: no I/O through its entries, no fault answer
/// installed, no pushed entry revived. Simulation seed 40000643 (run on 0a2b85e): a stream silent for longer than the
/// lease then delivered a heartbeat ack (for a heartbeat sent 11 s earlier) and fault answers; the agent counted the
/// ack as a renewal, installed the answers and wrote through them while the controller had already dropped the session
/// as lapsed. Here no lease loop runs: every check below is the one the agent makes where it acts.
/// </summary>
public class LeaseEnforcementTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private const int SegmentBytes = 64 << 10;
    private static readonly TimeSpan AgentLease = TimeSpan.FromMilliseconds(10_000 * AgentCore.LeaseSafetyFraction);

    [Fact]
    public async Task An_answer_that_arrives_after_the_lapse_is_not_installed_and_no_io_reaches_the_container_until_a_renewal()
    {
        var c = new FakeController(segmentSizeBytes: SegmentBytes);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(0, Pattern.For(0, 512, 1), default));
        long writesBefore = c.Container.Writes;
        long heartbeatSentBeforeTheLapse = c.Time.GetTimestamp();
        c.AutoAnswer = false;
        c.Faults.Clear(); // the first write's fault, answered already

        // The lease runs out; nothing has checked it yet. The next write must not use the still loaded entry.
        c.Time.Advance(AgentLease + TimeSpan.FromMilliseconds(1));
        var write = c.Volume.WriteAsync(0, Pattern.For(0, 512, 2), default).AsTask();
        var fault = await WaitForFaultAsync(c);
        Assert.Equal(writesBefore, c.Container.Writes);

        // The controller's answer arrives during the lapse: dropped, the table stays invalid, the write keeps waiting.
        c.Answer(fault);
        Assert.Equal(1, Interlocked.Read(ref c.Core.Counters.AnswersHeldWhileLapsed));
        Assert.Equal(MapEntry.Invalid, c.Volume.Table.Get(0));
        Assert.False(write.IsCompleted);

        // A late ack of a heartbeat sent before the lapse is no renewal: still nothing asked again, nothing written.
        c.Core.RenewLease(heartbeatSentBeforeTheLapse);
        Assert.True(c.Faults.IsEmpty);
        Assert.False(c.Core.CheckLease());
        Assert.False(write.IsCompleted);
        Assert.Equal(writesBefore, c.Container.Writes);

        // A heartbeat sent now and acknowledged renews the lease: the fault is asked again and its answer used.
        c.Core.RenewLease(c.Time.GetTimestamp());
        var again = await WaitForFaultAsync(c);
        Assert.Equal(fault.FaultId, again.FaultId);
        c.Answer(again);
        Assert.Equal(IoStatus.Ok, await write.WaitAsync(Timeout));
        Assert.Equal(writesBefore + 1, c.Container.Writes);
        Assert.Equal(Pattern.For(0, 512, 2), c.Container.Peek(c.Store[0].ContainerOffset, 512).ToArray());
    }

    [Fact]
    public async Task Entries_pushed_during_the_lapse_are_not_installed()
    {
        var c = new FakeController(segmentSizeBytes: SegmentBytes);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(0, Pattern.For(0, 512, 1), default));
        var mapped = c.Store[0];

        c.Time.Advance(AgentLease + TimeSpan.FromMilliseconds(1));
        var push = await c.Command(new Command { DiskId = FakeController.DiskId, SetEntries = new SetEntries { FirstSegment = 0, Count = 1, Entries = { mapped.Raw } } }).WaitAsync(Timeout);

        Assert.True(push.Ok); // an all-Invalid table is stricter than anything pushed
        Assert.Equal(MapEntry.Invalid, c.Volume.Table.Get(0));
    }

    [Fact]
    public void The_first_lease_runs_from_when_the_register_was_sent()
    {
        var c = new FakeController(segmentSizeBytes: SegmentBytes);
        long registerSent = c.Time.GetTimestamp();
        c.Time.Advance(AgentLease + TimeSpan.FromMilliseconds(1)); // Registered was held up on a silent stream
        c.Core.OnDisconnected(c, "test: link lost");
        var registered = new Registered { ControllerEpoch = 2, LeaseMs = 10_000, HeartbeatIntervalMs = 1_000 };
        registered.Containers.Add(new ContainerInfo { Id = 1, Name = "c1", Uri = c.Container.Uri });
        c.Core.OnRegistered(c, registered, registerSent);
        Assert.False(c.Core.CheckLease());

        c.Core.RenewLease(c.Time.GetTimestamp());
        Assert.True(c.Core.CheckLease());
    }

    private static async Task<MapFault> WaitForFaultAsync(FakeController c)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (true)
        {
            if (c.Faults.TryDequeue(out var fault)) return fault;
            if (DateTime.UtcNow > deadline) throw new TimeoutException("no fault sent");
            await Task.Delay(5);
        }
    }
}
