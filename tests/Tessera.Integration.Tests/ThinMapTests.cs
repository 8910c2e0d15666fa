using System.Text.Json;
using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

/// <summary>The table's states as real clients see them: nbdinfo --map and qemu-img map on a thin disk.</summary>
public sealed class ThinMapTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task ThinDisk_MapShowsExactlyTheWrittenSegments_AndZeroingReturnsThemToHoles()
    {
        // A thin disk written in three places shows exactly those three segments as data; whole-segment
        // WRITE_ZEROES (may unmap) and TRIM turn them back into holes and the pool's used space goes down,
        // while WRITE_ZEROES with NO_HOLE keeps the segment allocated.
        using var dir = new TempDir();
        await using var up = await UpInstance.StartAsync(dir.Combine("data"), "--disk", "thin", "--size", "64MiB");
        var uri = up.NbdUri("thin");

        Assert.Empty(await DataExtentsAsync(uri)); // nothing written yet: one hole
        await Tools.QemuIoOkAsync(uri, "write -P 0x11 2M 4k", "write -P 0x22 10M 1M", "write -P 0x33 41M 512");
        Assert.Equal(new[] { (2 * MiB, 1 * MiB), (10 * MiB, 1 * MiB), (41 * MiB, 1 * MiB) }, await DataExtentsAsync(uri));
        var qemuMap = await Tools.RunOkAsync("qemu-img", "map", "--output=json", "-f", "raw", uri);
        var qemuData = JsonDocument.Parse(qemuMap.Stdout).RootElement.EnumerateArray()
            .Where(e => e.GetProperty("data").GetBoolean())
            .Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64())).ToArray();
        Assert.Equal(new[] { (2 * MiB, 1 * MiB), (10 * MiB, 1 * MiB), (41 * MiB, 1 * MiB) }, qemuData);
        ulong usedBefore = await UsedBytesAsync(up);

        // NO_HOLE (qemu-io write -z without -u): zeroed, but stays allocated.
        await Tools.QemuIoOkAsync(uri, "write -z 10M 1M", "read -P 0 10M 1M");
        Assert.Equal(3, (await DataExtentsAsync(uri)).Length);

        // May unmap (write -z -u) and discard: both whole segments become holes and their space is freed.
        await Tools.QemuIoOkAsync(uri, "write -z -u 10M 1M", "discard 41M 1M", "read -P 0 10M 1M", "read -P 0x11 2M 4k");
        Assert.Equal(new[] { (2 * MiB, 1 * MiB) }, await DataExtentsAsync(uri));
        Assert.Equal(usedBefore - 2 * (ulong)MiB, await UsedBytesAsync(up));

        // A partial discard is only a hint: the data stays.
        await Tools.QemuIoOkAsync(uri, "discard 2M 4k", "read -P 0x11 2M 4k");
    }

    private static async Task<(long Offset, long Length)[]> DataExtentsAsync(string uri)
    {
        var result = await Tools.RunOkAsync("nbdinfo", "--map", "--json", uri);
        return JsonDocument.Parse(result.Stdout).RootElement.EnumerateArray()
            .Where(e => (e.GetProperty("type").GetInt32() & 1) == 0) // base:allocation: bit 0 = hole
            .Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64())).ToArray();
    }

    private static async Task<ulong> UsedBytesAsync(UpInstance up) =>
        (await up.JsonAsync("container", "list")).GetProperty("containers")[0].GetProperty("used_bytes").GetUInt64();
}
