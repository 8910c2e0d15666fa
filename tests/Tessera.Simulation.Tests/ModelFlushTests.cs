using Xunit;

namespace Tessera.Simulation.Tests;

/// <summary>
/// What a flush lets the checker rule out after a power loss (DiskModel.FlushCompleted): a FUA's flush covers the FUA's
/// own write and the writes that had ended when the flush began, and nothing that ended while it ran.
/// </summary>
public class ModelFlushTests
{
    private static DiskModel NewDisk(Checker checker) => new(checker, diskId: 1, name: "d", sizeBytes: 8 * DiskModel.SectorBytes);

    [Fact]
    public void A_fua_alone_on_its_sector_leaves_only_itself_durable()
    {
        var checker = new Checker(_ => { });
        var disk = NewDisk(checker);
        var older = disk.StartWrite("h", 0, 1, WriteKind.Write);
        disk.EndWrite(older, ok: true);
        var fua = disk.StartWrite("h", 0, 1, WriteKind.Fua);
        long flushBegan = checker.CurrentSeq;
        disk.EndWrite(fua, ok: true);
        disk.FlushCompleted("h", flushBegan, 0, 1, fua);
        Assert.Equal([fua.Id], disk.CurrentImage().Durable[0]); // the older write can no longer come back
    }

    [Fact]
    public void A_write_that_ended_while_the_fua_flush_ran_is_not_vouched_for()
    {
        // The shape of seed 110002714: a write overlapping the FUA lands after the FUA's data; the flush begins; a
        // third write starts after the second ended (so it supersedes it in what a read may return) and ends while
        // the flush runs; the FUA is acknowledged. A power loss may revert the third write, leaving the second.
        var checker = new Checker(_ => { });
        var disk = NewDisk(checker);
        var fua = disk.StartWrite("h", 0, 1, WriteKind.Fua);
        var overlapping = disk.StartWrite("h", 0, 1, WriteKind.Write);
        disk.EndWrite(overlapping, ok: true);
        long flushBegan = checker.CurrentSeq;
        var duringFlush = disk.StartWrite("h", 0, 1, WriteKind.Write);
        disk.EndWrite(duringFlush, ok: true);
        disk.EndWrite(fua, ok: true);
        disk.FlushCompleted("h", flushBegan, 0, 1, fua);

        disk.PowerLoss();
        var possible = disk.CurrentImage().Possible[0];
        Assert.Contains(overlapping.Id, possible);
        Assert.Contains(fua.Id, possible);
        Assert.Contains(duringFlush.Id, possible); // unflushed, but a power loss need not revert it
    }
}
