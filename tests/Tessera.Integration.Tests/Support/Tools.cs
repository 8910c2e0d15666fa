using System.Diagnostics;

namespace Tessera.Integration.Tests.Support;

/// <summary>Third-party NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy, fio), run bounded, never in-process.</summary>
public static class Tools
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(180);

    /// <summary>Fails the test (never skips it) when a tool is missing.</summary>
    public static string Require(string tool)
    {
        if (Path.IsPathFullyQualified(tool))
        {
            if (File.Exists(tool)) return tool;
            Assert.Fail($"{tool} is not installed: run scripts/test.sh, which installs qemu-utils, nbdkit, libnbd-bin, python3-libnbd and fio");
        }
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var path = Path.Combine(dir, tool);
            if (File.Exists(path)) return path;
        }
        Assert.Fail($"{tool} is not installed: run scripts/test.sh, which installs qemu-utils, nbdkit, libnbd-bin, python3-libnbd and fio");
        return tool;
    }

    public static async Task<ProcessResult> RunAsync(string tool, params string[] args)
    {
        var info = new ProcessStartInfo(Require(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var arg in args) info.ArgumentList.Add(arg);
        using var process = Process.Start(info)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(Timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{tool} {string.Join(' ', args)} did not finish within {Timeout.TotalSeconds:0} s");
        }
        return new ProcessResult(process.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs a tool and fails the test, with its output, unless it exits 0.</summary>
    public static async Task<ProcessResult> RunOkAsync(string tool, params string[] args)
    {
        var result = await RunAsync(tool, args);
        Assert.True(result.ExitCode == 0, $"{tool} {string.Join(' ', args)} failed: {result}");
        return result;
    }

    /// <summary>qemu-io against an NBD URI with one or more -c commands; qemu-io exits non-zero when a command fails (e.g. a pattern mismatch).</summary>
    public static Task<ProcessResult> QemuIoAsync(string uri, params string[] commands) => QemuIoAsync(uri, readOnly: false, commands);

    public static Task<ProcessResult> QemuIoAsync(string uri, bool readOnly, params string[] commands)
    {
        var args = new List<string> { "-f", "raw" };
        if (readOnly) args.Add("-r");
        foreach (var command in commands) { args.Add("-c"); args.Add(command); }
        args.Add(uri);
        return RunAsync("qemu-io", [.. args]);
    }

    public static Task QemuIoOkAsync(string uri, params string[] commands) => QemuIoOkAsync(uri, readOnly: false, commands);

    /// <summary>As <see cref="QemuIoOkAsync(string, string[])"/>; readOnly opens the image with -r (needed for a read-only export).</summary>
    public static async Task QemuIoOkAsync(string uri, bool readOnly, params string[] commands)
    {
        var result = await QemuIoAsync(uri, readOnly, commands);
        Assert.True(result.ExitCode == 0 && !result.All.Contains("failed", StringComparison.OrdinalIgnoreCase),
            $"qemu-io {string.Join(" ; ", commands)} on {uri} failed: {result}");
    }
}
