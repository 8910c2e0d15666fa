using System.Diagnostics;

namespace Tessera.Nbd.Tests.Infrastructure;

/// <summary>Runs a third-party tool with a time bound; a missing tool fails the test with instructions (never skips).</summary>
public static class Tool
{
    public static string Find(string name)
    {
        if (name.StartsWith('/')) return File.Exists(name) ? name : Missing(name);
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            var p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        return Missing(name);
    }

    private static string Missing(string name) =>
        throw new Xunit.Sdk.XunitException($"'{name}' is not installed; run scripts/test.sh (the project's test command installs qemu-utils, nbdkit, libnbd-bin, python3-libnbd and fio).");

    public static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(string name, IEnumerable<string> args, int timeoutSeconds = 60)
    {
        var psi = new ProcessStartInfo(Find(name)) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds));
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            throw new Xunit.Sdk.XunitException($"{name} {string.Join(' ', psi.ArgumentList)} did not finish in {timeoutSeconds} s:\n{await stdout}\n{await stderr}");
        }
        return (p.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs and asserts exit code 0, returning stdout.</summary>
    public static async Task<string> RunOkAsync(string name, params string[] args)
    {
        var (exit, o, e) = await RunAsync(name, args);
        Assert.True(exit == 0, $"{name} {string.Join(' ', args)} exited {exit}:\n{o}\n{e}");
        return o;
    }
}
