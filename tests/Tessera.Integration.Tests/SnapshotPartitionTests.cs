using System.Diagnostics;
using System.Runtime.InteropServices;
using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

/// <summary>A snapshot while one of two agents holding the disk is stopped (SIGSTOP): real processes, real clients.</summary>
public sealed partial class SnapshotPartitionTests
{
    private const int SigStop = 19, SigCont = 18;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int sig);

    [Fact]
    public async Task A_stopped_agent_does_not_block_a_snapshot_and_cannot_write_into_it_after_resuming()
    {
        // The controller waits out the stopped agent's lease and proceeds; after SIGCONT that agent's old writable table is
        // gone, so its write is copied on write and the snapshot keeps the data acknowledged before it.
        using var dir = new TempDir();
        var ports = Net.FreePorts(3);
        string url = $"http://127.0.0.1:{ports[0]}";
        await using var controller = TesseraProcess.Start(["controller", "--data", dir.Combine("controller"), "--listen", $"127.0.0.1:{ports[0]}"]);
        await controller.WaitForLineAsync(l => l.StartsWith("tessera: controller serving", StringComparison.Ordinal), TesseraProcess.StartTimeout, "controller serving");
        await using var h1 = TesseraProcess.Start(["agent", "--controller", url, "--host", "h1", "--nbd-listen", $"127.0.0.1:{ports[1]}"]);
        await using var h2 = TesseraProcess.Start(["agent", "--controller", url, "--host", "h2", "--nbd-listen", $"127.0.0.1:{ports[2]}"]);
        await h1.WaitForLineAsync(l => l.Contains("registered", StringComparison.Ordinal), TesseraProcess.StartTimeout, "agent h1 registered");
        await h2.WaitForLineAsync(l => l.Contains("registered", StringComparison.Ordinal), TesseraProcess.StartTimeout, "agent h2 registered");
        async Task Cli(params string[] args)
        {
            var result = await TesseraProcess.RunAsync([.. args, "--controller", url]);
            Assert.True(result.ExitCode == 0, $"tessera {string.Join(' ', args)} failed: {result}");
        }
        await Cli("container", "add", "pool", new Uri(dir.Combine("pool.img")).AbsoluteUri, "--size", "1GiB");
        await Cli("disk", "create", "part", "--size", "16MiB");
        await Cli("disk", "present", "part", "--host", "h1");
        await Cli("disk", "present", "part", "--host", "h2");
        await Exports.WaitUntilListedAsync($"nbd://127.0.0.1:{ports[1]}", "part");
        await Exports.WaitUntilListedAsync($"nbd://127.0.0.1:{ports[2]}", "part");
        string on1 = $"nbd://127.0.0.1:{ports[1]}/part", on2 = $"nbd://127.0.0.1:{ports[2]}/part";

        await Tools.QemuIoOkAsync(on1, "write -P 0x11 0 4M", "flush");
        await Tools.QemuIoOkAsync(on2, "read -P 0x11 0 4M"); // h2 now holds writable entries for segments 0-3

        Assert.Equal(0, Kill(h2.Id, SigStop));
        var watch = Stopwatch.StartNew();
        try
        {
            await Cli("snapshot", "create", "part", "s");
        }
        finally
        {
            Assert.Equal(0, Kill(h2.Id, SigCont));
        }
        watch.Stop();

        await Tools.QemuIoOkAsync(on2, "write -P 0x22 0 1M", "flush", "read -P 0x22 0 1M");
        await Cli("disk", "present", "part@s", "--host", "h1", "--read-only");
        await Exports.WaitUntilListedAsync($"nbd://127.0.0.1:{ports[1]}", "part@s");
        var read = await Tools.RunAsync("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x11 0 4M", $"nbd://127.0.0.1:{ports[1]}/part@s");
        Assert.True(read.ExitCode == 0 && !read.All.Contains("fail", StringComparison.OrdinalIgnoreCase), $"snapshot content after the stopped agent resumed and wrote: {read}");
        await Tools.QemuIoOkAsync(on1, "read -P 0x22 0 1M", "read -P 0x11 1M 3M");
        Console.WriteLine($"snapshot with a stopped holder took {watch.Elapsed.TotalSeconds:0.0} s");
    }
}
