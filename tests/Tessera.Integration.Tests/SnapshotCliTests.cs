using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

/// <summary>Snapshots, clones and resize through the real CLI against <c>tessera up</c>, with real NBD clients.</summary>
public sealed class SnapshotCliTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task Snapshot_clone_and_resize_with_qemu_io_and_fio_writing()
    {
        // While fio writes and verifies one region, a CLI snapshot keeps exactly the qemu-io data acknowledged before it, later
        // writes stay out of it, a clone diverges on its own, and a grown disk is seen at its new size by a new client.
        using var dir = new TempDir();
        await using var up = await UpInstance.StartAsync(dir.Combine("data"));
        Assert.Equal(0, (await up.CliAsync("disk", "create", "vm", "--size", "64MiB")).ExitCode);
        Assert.Equal(0, (await up.CliAsync("disk", "present", "vm", "--host", "local")).ExitCode);
        await Exports.WaitUntilListedAsync($"nbd://127.0.0.1:{up.NbdPort}", "vm");
        var vm = up.NbdUri("vm");
        await Tools.QemuIoOkAsync(vm, "write -P 0x11 0 16M", "flush");

        var fio = Tools.RunAsync("fio", "--name=load", "--ioengine=nbd", $"--uri={vm}", "--rw=randwrite", "--bs=4k", "--offset=32M", "--size=8M",
            "--iodepth=8", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--randrepeat=0", "--runtime=120", "--output-format=normal");
        var snap = await up.CliAsync("snapshot", "create", "vm", "s1");
        Assert.True(snap.ExitCode == 0, $"snapshot create: {snap}");
        Assert.Contains("vm@s1", snap.Stdout);
        var fioResult = await fio;
        Assert.True(fioResult.ExitCode == 0 && fioResult.Stdout.Contains("err= 0"), $"fio failed around the snapshot: {fioResult}");

        await Tools.QemuIoOkAsync(vm, "write -P 0x22 0 8M", "flush");
        Assert.Equal(0, (await up.CliAsync("disk", "present", "vm@s1", "--host", "local", "--read-only")).ExitCode);
        await Exports.WaitUntilListedAsync($"nbd://127.0.0.1:{up.NbdPort}", "vm@s1");
        var s1 = up.NbdUri("vm@s1");
        var read = await Tools.RunAsync("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x11 0 16M", "-c", "read -P 0 16M 16M", s1);
        Assert.True(read.ExitCode == 0 && !read.All.Contains("fail", StringComparison.OrdinalIgnoreCase), $"snapshot content: {read}");
        var write = await Tools.QemuIoAsync(s1, "write -P 0x99 0 4k");
        Assert.True(write.ExitCode != 0 || write.All.Contains("fail", StringComparison.OrdinalIgnoreCase) || write.All.Contains("read-only", StringComparison.OrdinalIgnoreCase),
            $"a write to the snapshot must fail: {write}");
        await Tools.QemuIoOkAsync(vm, "read -P 0x22 0 8M", "read -P 0x11 8M 8M");

        Assert.Equal(0, (await up.CliAsync("disk", "clone", "vm@s1", "vm2")).ExitCode);
        Assert.Equal(0, (await up.CliAsync("disk", "present", "vm2", "--host", "local")).ExitCode);
        await Exports.WaitUntilListedAsync($"nbd://127.0.0.1:{up.NbdPort}", "vm2");
        var vm2 = up.NbdUri("vm2");
        await Tools.QemuIoOkAsync(vm2, "read -P 0x11 0 16M", "write -P 0x33 4M 8M", "flush", "read -P 0x11 0 4M", "read -P 0x33 4M 8M", "read -P 0x11 12M 4M");
        await Tools.QemuIoOkAsync(vm, "read -P 0x22 0 8M", "read -P 0x11 8M 8M");

        var list = await up.JsonAsync("snapshot", "list", "vm");
        var entry = Assert.Single(list.GetProperty("snapshots").EnumerateArray());
        Assert.Equal("vm@s1", entry.GetProperty("ref").GetString());
        Assert.True(entry.GetProperty("unique_bytes").GetUInt64() >= 4 * (ulong)MiB, list.GetRawText()); // 4-8M: overwritten in both vm and vm2
        var show = await up.JsonAsync("disk", "show", "vm");
        Assert.True(show.GetProperty("shared_bytes").GetUInt64() >= 4 * (ulong)MiB, show.GetRawText()); // 12-16M still shared with s1
        Assert.Contains("vm@s1", show.GetProperty("snapshots").EnumerateArray().Select(e => e.GetString()));

        Assert.Equal(0, (await up.CliAsync("disk", "resize", "vm", "--size", "128MiB")).ExitCode);
        var info = await Tools.RunOkAsync("nbdinfo", "--size", vm);
        Assert.Equal((128 * MiB).ToString(), info.Stdout.Trim());
        await Tools.QemuIoOkAsync(vm, "read -P 0 100M 1M", "write -P 0x44 100M 1M", "read -P 0x44 100M 1M");
        var shrink = await up.CliAsync("disk", "resize", "vm", "--size", "64MiB");
        Assert.Equal(1, shrink.ExitCode);
        Assert.Contains("--force", shrink.Stderr);

        Assert.Equal(1, (await up.CliAsync("disk", "delete", "vm")).ExitCode); // presented, and has a snapshot
        Assert.Equal(0, (await up.CliAsync("disk", "unpresent", "vm@s1", "--host", "local")).ExitCode);
        Assert.Equal(0, (await up.CliAsync("snapshot", "delete", "vm", "s1")).ExitCode);
        await Tools.QemuIoOkAsync(vm2, "read -P 0x11 0 4M", "read -P 0x33 4M 8M", "read -P 0x11 12M 4M");
    }
}
