using Microsoft.Extensions.Time.Testing;
using Tessera.Controller.Agents;
using Xunit;

namespace Tessera.Controller.Tests;

/// <summary>
/// Found by the deterministic simulation (seed 7): Task.Delay truncates to whole milliseconds, so waiting out a
/// lease remainder below 1 ms completed at once and the wait loop spun on the thread until the clock moved; under a
/// clock that does not move by itself it never returned.
/// </summary>
public class LeaseRoundingTests
{
    [Fact]
    public async Task Waiting_out_a_sub_millisecond_lease_remainder_waits_for_the_clock_instead_of_spinning()
    {
        var time = new FakeTimeProvider();
        var session = new AgentSession("h", 1, "nbd", time, TimeSpan.FromSeconds(10));
        session.Close("test");
        time.Advance(TimeSpan.FromSeconds(10) - TimeSpan.FromTicks(5_000)); // 0.5 ms of lease left

        // Run the call on another thread: before the fix it spun forever inside this call.
        var wait = await Task.Run(() => Task.FromResult(session.WaitLeaseLapsedAsync(CancellationToken.None))).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.False(wait.IsCompleted, "the lease has 0.5 ms left: the wait must not be over yet");

        time.Advance(TimeSpan.FromMilliseconds(1));
        await wait.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(session.LeaseLapsed);
    }
}
