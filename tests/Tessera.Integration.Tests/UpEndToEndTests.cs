using System.Text.Json;
using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

/// <summary>One <c>tessera up</c> (controller + agent "local" + file container) shared by the tests of <see cref="UpEndToEndTests"/>.</summary>
public sealed class UpFixture : IAsyncLifetime
{
    private readonly TempDir _dir = new();

    public UpInstance Up { get; private set; } = null!;

    public async Task InitializeAsync() => Up = await UpInstance.StartAsync(_dir.Combine("data"));

    public async Task DisposeAsync()
    {
        if (Up is not null) await Up.DisposeAsync();
        _dir.Dispose();
    }
}

/// <summary>
/// Real NBD clients against <c>tessera up</c>'s default disk (demo, 8 GiB, 1 MiB segments). Each test uses
/// its own region of the disk, so they do not see each other's data:
/// qemu-io 0-16 MiB, qemu-img 64-72 MiB, fio 256-264 MiB.
/// </summary>
public sealed class UpEndToEndTests(UpFixture fixture) : IClassFixture<UpFixture>
{
    private const long MiB = 1 << 20;
    private UpInstance Up => fixture.Up;

    [Fact]
    public async Task QemuIo_PatternsAcrossSegmentBoundaries_ReadBack()
    {
        // Writes that straddle one and several 1 MiB segment boundaries read back exactly, and their neighbours stay zero.
        var uri = Up.NbdUri();
        await Tools.QemuIoOkAsync(uri, "read -P 0 1040000 8576"); // thin: zeros before any write
        await Tools.QemuIoOkAsync(uri, "write -P 0xab 1048000 4096");
        await Tools.QemuIoOkAsync(uri, "read -P 0xab 1048000 4096", "read -P 0 1040000 8000", "read -P 0 1052096 4096");
        await Tools.QemuIoOkAsync(uri, "write -P 0xcd 3145000 2200000"); // crosses 3, 4 and 5 MiB
        await Tools.QemuIoOkAsync(uri, "read -P 0xcd 3145000 2200000", "read -P 0 3144000 1000", "read -P 0 5345000 4096");
        var wrong = await Tools.QemuIoAsync(uri, "read -P 0xcd 1048000 4096");
        Assert.True(wrong.ExitCode != 0, $"qemu-io must report a pattern mismatch (this is what makes the reads above meaningful): {wrong}");
    }

    [Fact]
    public async Task QemuImg_ConvertInAndCompareOut()
    {
        // qemu-img copies self-describing data into the disk (not segment aligned) and reads back the same bytes, block for block.
        using var dir = new TempDir();
        const long offset = 64 * MiB + 3 * 512;
        const int length = 4 * (int)MiB + 7 * 512;
        var tag = (ulong)Random.Shared.NextInt64();
        var source = dir.Combine("source.img");
        await File.WriteAllBytesAsync(source, SelfDescribingData.Create(offset, length, tag));
        var target = $"driver=raw,offset={offset},size={length},file.driver=nbd,file.server.type=inet,file.server.host=127.0.0.1,file.server.port={Up.NbdPort},file.export=demo";

        await Tools.RunOkAsync("qemu-img", "convert", "-n", "-f", "raw", source, "--target-image-opts", target);
        var compare = await Tools.RunOkAsync("qemu-img", "compare", "--image-opts", $"driver=raw,file.driver=file,file.filename={source}", target);
        Assert.Contains("identical", compare.Stdout);

        var back = dir.Combine("back.img");
        await Tools.RunOkAsync("qemu-img", "convert", "--image-opts", target, "-O", "raw", back);
        SelfDescribingData.Verify(await File.ReadAllBytesAsync(back), offset, tag);
    }

    [Fact]
    public async Task Nbdinfo_DescribesTheExport()
    {
        // nbdinfo sees the export demo, 8 GiB, writable, with flush.
        var result = await Tools.RunOkAsync("nbdinfo", "--json", Up.NbdUri());
        var export = JsonDocument.Parse(result.Stdout).RootElement.GetProperty("exports")[0];
        Assert.Equal("demo", export.GetProperty("export-name").GetString());
        Assert.Equal(8L << 30, export.GetProperty("export-size").GetInt64());
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
        Assert.True(export.GetProperty("can_flush").GetBoolean());
    }

    [Fact]
    public async Task Nbdcopy_CopiesIntoANewDiskAndBackOut()
    {
        // A disk created and presented while up runs appears on the agent; nbdcopy copies self-describing data in and back out
        // unchanged; unpresent and delete then remove it.
        using var dir = new TempDir();
        Assert.Equal(0, (await Up.CliAsync("disk", "create", "copy", "--size", "16MiB", "--segment-size", "64KiB")).ExitCode);
        Assert.Equal(0, (await Up.CliAsync("disk", "present", "copy", "--host", "local")).ExitCode);
        var uri = Up.NbdUri("copy");
        await Exports.WaitUntilListedAsync($"nbd://127.0.0.1:{Up.NbdPort}", "copy");

        var tag = (ulong)Random.Shared.NextInt64();
        var source = dir.Combine("source.img");
        await File.WriteAllBytesAsync(source, SelfDescribingData.Create(0, 16 * (int)MiB, tag));
        await Tools.RunOkAsync("nbdcopy", "--flush", source, uri);
        var back = dir.Combine("back.img");
        await Tools.RunOkAsync("nbdcopy", uri, back);
        SelfDescribingData.Verify(await File.ReadAllBytesAsync(back), 0, tag);

        var copy = await Up.JsonAsync("disk", "show", "copy");
        Assert.Equal(256UL, copy.GetProperty("allocated_segments").GetUInt64());

        Assert.Equal(0, (await Up.CliAsync("disk", "unpresent", "copy", "--host", "local")).ExitCode);
        Assert.Equal(0, (await Up.CliAsync("disk", "delete", "copy")).ExitCode);
        Assert.Equal(1, (await Up.CliAsync("disk", "show", "copy")).ExitCode);
    }

    [Fact]
    public async Task Fio_RandomWritesVerifyWithCrc32c()
    {
        // fio's own NBD engine writes 4 KiB blocks at random, 8 deep, then verifies every block's crc32c.
        var result = await Tools.RunAsync("fio", "--name=tessera", "--ioengine=nbd", $"--uri={Up.NbdUri()}",
            "--rw=randwrite", "--bs=4k", "--offset=256M", "--size=8M", "--iodepth=8", "--verify=crc32c", "--verify_fatal=1",
            "--do_verify=1", "--randrepeat=0", "--runtime=120", "--output-format=normal");
        Assert.True(result.ExitCode == 0, $"fio failed: {result}");
        Assert.Contains("err= 0", result.Stdout);
        Assert.DoesNotContain("verify:", result.All);
    }

    [Theory]
    [InlineData("1m", "320M")]
    [InlineData("192k", "352M")]
    public async Task Fio_LargeSequentialWritesVerifyWithCrc32c_TwoPasses(string blockSize, string offset)
    {
        // Large blocks take the agent's spliced-write and mapped-read paths (docs/architecture.md): the first pass
        // writes a thin range (first writes fault, buffered), the second overwrites it in place (spliced); each pass
        // is then read back 8 deep (mapped reads) and every block's crc32c verified by fio. 192 KiB blocks straddle
        // the 1 MiB segments.
        var result = await Tools.RunAsync("fio", "--name=tessera", "--ioengine=nbd", $"--uri={Up.NbdUri()}",
            "--rw=write", $"--bs={blockSize}", $"--offset={offset}", "--size=24M", "--iodepth=8", "--loops=2", "--verify=crc32c",
            "--verify_fatal=1", "--do_verify=1", "--runtime=120", "--output-format=normal");
        Assert.True(result.ExitCode == 0, $"fio failed: {result}");
        Assert.Contains("err= 0", result.Stdout);
        Assert.DoesNotContain("verify:", result.All);
    }

    [Fact]
    public async Task Cli_ShowsWhatUpCreated()
    {
        // The admin commands describe what up set up: pool0 in DIR/containers, demo presented read-write to local, host local connected.
        var containers = (await Up.JsonAsync("container", "list")).GetProperty("containers");
        Assert.Equal(1, containers.GetArrayLength());
        Assert.Equal("pool0", containers[0].GetProperty("name").GetString());
        Assert.EndsWith("/containers/pool0.img", containers[0].GetProperty("uri").GetString());
        Assert.Equal(16UL << 30, containers[0].GetProperty("size_bytes").GetUInt64());

        var disk = await Up.JsonAsync("disk", "show", "demo");
        Assert.Equal(8UL << 30, disk.GetProperty("size_bytes").GetUInt64());
        Assert.Equal(1U << 20, disk.GetProperty("segment_size_bytes").GetUInt32());
        Assert.Equal(8192UL, disk.GetProperty("segment_count").GetUInt64());
        var presentation = Assert.Single(disk.GetProperty("presentations").EnumerateArray());
        Assert.Equal("local", presentation.GetProperty("host").GetString());
        Assert.False(presentation.GetProperty("read_only").GetBoolean());

        var map = await Up.JsonAsync("disk", "map", "demo");
        ulong covered = 0;
        foreach (var range in map.GetProperty("ranges").EnumerateArray()) covered += range.GetProperty("count").GetUInt64();
        Assert.Equal(8192UL, covered);

        var hosts = (await Up.JsonAsync("host", "list")).GetProperty("hosts");
        var local = Assert.Single(hosts.EnumerateArray());
        Assert.Equal("local", local.GetProperty("host").GetString());
        Assert.True(local.GetProperty("connected").GetBoolean());

        var status = await Up.JsonAsync("status");
        Assert.True(status.GetProperty("disks").GetUInt32() >= 1);
        Assert.Equal(1U, status.GetProperty("hosts_connected").GetUInt32());

        var table = await Up.CliAsync("disk", "list");
        Assert.Equal(0, table.ExitCode);
        Assert.Contains("demo", table.Stdout);
        Assert.Contains("8 GiB", table.Stdout);
    }

    [Fact]
    public async Task BadInput_IsRefusedWithOneLineAndChangesNothing()
    {
        // Unknown disks, duplicates, bad sizes and bad URIs each end with one error line and the right exit code, and the store is unchanged.
        var disksBefore = (await Up.JsonAsync("disk", "list")).GetRawText();
        var containersBefore = (await Up.JsonAsync("container", "list")).GetRawText();

        (string[] Args, int Exit)[] cases =
        [
            (["disk", "show", "nosuch"], 1),
            (["disk", "delete", "nosuch"], 1),
            (["disk", "map", "nosuch"], 1),
            (["disk", "present", "nosuch", "--host", "local"], 1),
            (["disk", "create", "demo", "--size", "1GiB"], 1),
            (["disk", "create", "other", "--size", "8XB"], 2),
            (["container", "add", "pool1", "http://nowhere/x", "--size", "1GiB"], 2),
            (["container", "add", "pool0", "file:///tmp/tessera-duplicate-name.img", "--size", "1GiB"], 1),
        ];
        foreach (var (args, exit) in cases)
        {
            var result = await Up.CliAsync(args);
            Assert.True(result.ExitCode == exit, $"tessera {string.Join(' ', args)}: expected exit {exit}: {result}");
            var lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.True(lines.Length == 1 && lines[0].StartsWith("tessera: error: "), $"expected one error line: {result}");
        }
        var notFound = await Up.CliAsync("disk", "show", "nosuch");
        Assert.Contains("nosuch", notFound.Stderr);

        Assert.Equal(disksBefore, (await Up.JsonAsync("disk", "list")).GetRawText());
        Assert.Equal(containersBefore, (await Up.JsonAsync("container", "list")).GetRawText());
        Assert.False(File.Exists("/tmp/tessera-duplicate-name.img"), "a refused container add must not create its file");
    }
}
