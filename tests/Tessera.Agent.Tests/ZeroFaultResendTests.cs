using Tessera.Core;
using Tessera.Core.Protocol;
using Xunit;

namespace Tessera.Agent.Tests;

/// <summary>
/// Faults still waiting are sent again after a re-registration (the old link may have lost them), but a zeroing
/// fault whose TRIM/WRITE_ZEROES was already failed to the client must not be: the client may write the range
/// after the failure, and a late zeroing would wipe those acknowledged writes (simulation seed 3000372 on
/// build bd202ab).
/// </summary>
public class ZeroFaultResendTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private const int SegmentBytes = 64 << 10;

    [Fact]
    public async Task A_timed_out_zeroing_fault_is_not_sent_again_after_reregistration()
    {
        var c = await WithOneWrittenSegmentAsync();
        c.AutoAnswer = false;
        var trim = c.Volume.TrimAsync(0, SegmentBytes, default).AsTask();
        Assert.Single(c.Faults, f => f.Zero);

        c.Time.Advance(TimeSpan.FromMilliseconds(c.Core.FaultTimeoutMs + 1));
        Assert.Equal(IoStatus.IoError, await trim.WaitAsync(Timeout));

        c.Faults.Clear();
        c.Reregister();
        Assert.DoesNotContain(c.Faults, f => f.Zero);
    }

    [Fact]
    public async Task A_zeroing_fault_still_waiting_is_sent_again_after_reregistration()
    {
        var c = await WithOneWrittenSegmentAsync();
        c.AutoAnswer = false;
        var trim = c.Volume.TrimAsync(0, SegmentBytes, default).AsTask();
        Assert.Single(c.Faults, f => f.Zero);

        c.Faults.Clear();
        c.Reregister();
        var resent = Assert.Single(c.Faults, f => f.Zero);
        c.Answer(resent);
        Assert.Equal(IoStatus.Ok, await trim.WaitAsync(Timeout));
    }

    private static async Task<FakeController> WithOneWrittenSegmentAsync()
    {
        var c = new FakeController(segmentSizeBytes: SegmentBytes);
        Assert.Equal(IoStatus.Ok, await c.Volume.WriteAsync(0, Pattern.For(0, SegmentBytes, 1), default));
        return c;
    }
}
