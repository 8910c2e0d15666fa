using Microsoft.Extensions.Time.Testing;
using Tessera.Controller.Agents;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Controller.Tests;

public class LeaseTests
{
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(10);

    private static Command SetEntries() => new() { DiskId = 1, SetEntries = new SetEntries { FirstSegment = 0, Count = 1 } };

    [Fact]
    public async Task A_silent_agent_is_fenced_one_lease_after_its_last_acknowledged_heartbeat_and_later_heartbeats_do_not_count()
    {
        // Proves, on simulated time, the rule the safety argument rests on: no reply within a lease of the send
        // closes the session, and the controller then waits until the last ACKNOWLEDGED heartbeat + lease,
        // ignoring heartbeats that arrive after the close.
        var time = new FakeTimeProvider();
        var session = new AgentSession("h", 1, "", time, Lease);
        time.Advance(TimeSpan.FromSeconds(5));
        session.OnHeartbeat(1);

        var wait = session.SendAndWaitAsync(SetEntries(), CancellationToken.None); // sent at t=5
        time.Advance(TimeSpan.FromSeconds(9));
        session.OnHeartbeat(2); // t=14: still acknowledged, the bound moves to t=24
        Assert.False(session.IsClosed);
        time.Advance(TimeSpan.FromSeconds(1)); // t=15: one lease since the send without a reply
        Assert.True(SpinWait.SpinUntil(() => session.IsClosed, TimeSpan.FromSeconds(5)), "session not closed after a lease without reply");
        session.OnHeartbeat(3); // after the close: must not move the bound
        Assert.Equal(TimeSpan.FromSeconds(9), session.LeaseRemaining);
        time.Advance(TimeSpan.FromSeconds(8)); // t=23
        await Task.Delay(50);
        Assert.False(wait.IsCompleted, "proceeded before the agent's lease surely lapsed");
        time.Advance(TimeSpan.FromSeconds(1)); // t=24
        Assert.Equal(AckOutcome.Fenced, await CompletedOnFakeTimeAsync(time, wait));
    }

    [Fact]
    public async Task A_reply_within_the_lease_is_an_acknowledgement_and_a_refusal_fences()
    {
        // Proves the ordinary path (reply → acknowledged, session stays open) and that ok=false is not taken as success.
        var time = new FakeTimeProvider();
        var session = new AgentSession("h", 1, "", time, Lease);
        var command = SetEntries();
        var wait = session.SendAndWaitAsync(command, CancellationToken.None);
        session.OnReply(new CommandReply { CommandId = command.CommandId, Ok = true });
        Assert.Equal(AckOutcome.Acknowledged, await wait.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.False(session.IsClosed);

        var refused = SetEntries();
        var wait2 = session.SendAndWaitAsync(refused, CancellationToken.None);
        session.OnReply(new CommandReply { CommandId = refused.CommandId, Ok = false, Error = "no table" });
        Assert.True(SpinWait.SpinUntil(() => session.IsClosed, TimeSpan.FromSeconds(5)));
        Assert.False(wait2.IsCompleted); // waits for the lease bound (registration at t=0 + 10 s)
        time.Advance(Lease);
        Assert.Equal(AckOutcome.Fenced, await CompletedOnFakeTimeAsync(time, wait2));
    }

    /// <summary>
    /// The waiter registers its fake-time delay on another thread; an Advance that lands between its reading of the
    /// remaining lease and that registration pushes the delay's deadline later. Nudge time until it completes.
    /// </summary>
    private static async Task<AckOutcome> CompletedOnFakeTimeAsync(FakeTimeProvider time, Task<AckOutcome> wait)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!wait.IsCompleted && DateTime.UtcNow < deadline)
        {
            await Task.WhenAny(wait, Task.Delay(20));
            if (!wait.IsCompleted) time.Advance(TimeSpan.FromMilliseconds(100));
        }
        return await wait.WaitAsync(TimeSpan.FromSeconds(1));
    }
}
