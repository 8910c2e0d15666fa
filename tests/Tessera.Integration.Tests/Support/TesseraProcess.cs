using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace Tessera.Integration.Tests.Support;

/// <summary>The outcome of one finished process.</summary>
public sealed record ProcessResult(int ExitCode, string Stdout, string Stderr)
{
    public string All => Stdout + Stderr;

    public override string ToString() => $"exit {ExitCode}\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}";
}

/// <summary>
/// The real <c>tessera</c> executable (tessera.dll copied next to this test assembly by the project reference),
/// run as a separate process with <c>dotnet tessera.dll ...</c>, exactly as the launcher runs it.
/// </summary>
public sealed class TesseraProcess : IAsyncDisposable
{
    public static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);
    public static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(60);

    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly SemaphoreSlim _changed = new(0);

    private TesseraProcess(Process process) => _process = process;

    public static string Dll => Path.Combine(AppContext.BaseDirectory, "tessera.dll");

    private static string Dotnet => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    public string Stdout { get { lock (_stdout) return _stdout.ToString(); } }

    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }

    /// <summary>Runs one tessera command to completion (bounded) and returns its exit code and output.</summary>
    public static async Task<ProcessResult> RunAsync(params string[] args) => await RunAsync(null, args);

    public static async Task<ProcessResult> RunAsync(IDictionary<string, string>? environment, params string[] args)
    {
        await using var process = Start(args, environment);
        var exitCode = await process.WaitForExitAsync(CommandTimeout);
        return new ProcessResult(exitCode, process.Stdout, process.Stderr);
    }

    /// <summary>Starts a long-running tessera command (up, controller, agent).</summary>
    public static TesseraProcess Start(string[] args, IDictionary<string, string>? environment = null)
    {
        Assert.True(File.Exists(Dll), $"{Dll} is missing: build the solution (scripts/test.sh does)");
        var info = new ProcessStartInfo(Dotnet)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        info.ArgumentList.Add(Dll);
        foreach (var arg in args) info.ArgumentList.Add(arg);
        info.Environment.Remove("TESSERA_CONTROLLER");
        if (environment is not null) foreach (var (key, value) in environment) info.Environment[key] = value;
        var process = new Process { StartInfo = info, EnableRaisingEvents = true };
        var wrapper = new TesseraProcess(process);
        process.OutputDataReceived += (_, e) => wrapper.Append(wrapper._stdout, e.Data);
        process.ErrorDataReceived += (_, e) => wrapper.Append(wrapper._stderr, e.Data);
        process.Exited += (_, _) => wrapper._changed.Release();
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return wrapper;
    }

    private void Append(StringBuilder buffer, string? line)
    {
        if (line is null) return;
        lock (buffer) buffer.AppendLine(line);
        _changed.Release();
    }

    /// <summary>Waits until a stdout line matches; fails with the process output when it exits first or time runs out.</summary>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var line = Stdout.Split('\n').Select(l => l.TrimEnd('\r')).FirstOrDefault(match);
            if (line is not null) return line;
            if (_process.HasExited)
            {
                await _process.WaitForExitAsync();
                Assert.Fail($"tessera exited with {_process.ExitCode} before {what}\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}");
            }
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) Assert.Fail($"tessera did not reach '{what}' within {timeout.TotalSeconds:0} s\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}");
            await _changed.WaitAsync(left < TimeSpan.FromSeconds(1) ? left : TimeSpan.FromSeconds(1));
        }
    }

    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            _process.Kill(entireProcessTree: true);
            Assert.Fail($"tessera did not exit within {timeout.TotalSeconds:0} s\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}");
        }
        return _process.ExitCode;
    }

    /// <summary>Sends SIGTERM (what Ctrl-C/systemd do) and waits for a clean exit.</summary>
    public async Task<int> StopAsync(TimeSpan timeout)
    {
        if (!_process.HasExited) Assert.Equal(0, kill(_process.Id, SigTerm));
        return await WaitForExitAsync(timeout);
    }

    private bool _disposed;

    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync();
            }
        }
        catch (InvalidOperationException)
        {
            // never started or already reaped
        }
        _process.Dispose();
    }

    private const int SigTerm = 15;

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
