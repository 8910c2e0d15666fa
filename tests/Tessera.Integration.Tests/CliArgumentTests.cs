using Tessera.Integration.Tests.Support;

namespace Tessera.Integration.Tests;

/// <summary>
/// Argument errors are caught by the CLI itself. Every command here points at a controller URL where nothing
/// listens: exit code 2 (not 3) therefore proves the CLI refused the input before calling any controller, so
/// nothing can have changed.
/// </summary>
public sealed class CliArgumentTests
{
    private static readonly string Nowhere = $"http://127.0.0.1:{Net.FreePorts(1)[0]}";

    private static async Task<ProcessResult> ExpectUsageError(params string[] args)
    {
        var result = await TesseraProcess.RunAsync(args);
        Assert.True(result.ExitCode == 2, $"tessera {string.Join(' ', args)}: expected exit 2: {result}");
        AssertOneErrorLine(result);
        return result;
    }

    private static void AssertOneErrorLine(ProcessResult result)
    {
        var lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr: {result}");
        Assert.StartsWith("tessera: error: ", lines[0]);
        Assert.DoesNotContain("   at ", result.All); // no stack trace
        Assert.Equal("", result.Stdout);
    }

    [Fact]
    public async Task BadSize_IsAUsageError()
    {
        // A size that is not a size is refused locally with a message naming the option and the value.
        var result = await ExpectUsageError("disk", "create", "d1", "--size", "8XB", "--controller", Nowhere);
        Assert.Contains("--size", result.Stderr);
        Assert.Contains("8XB", result.Stderr);
    }

    [Fact]
    public async Task BadSegmentSize_IsAUsageError()
    {
        // A segment size that is not a power of two in 64 KiB..64 MiB is refused locally.
        var result = await ExpectUsageError("disk", "create", "d1", "--size", "1GiB", "--segment-size", "3MiB", "--controller", Nowhere);
        Assert.Contains("--segment-size", result.Stderr);
    }

    [Theory]
    [InlineData("http://example/x")]
    [InlineData("file://relative/path")]
    [InlineData("not a uri")]
    public async Task BadContainerUri_IsAUsageError(string uri)
    {
        // Container URIs other than file:///absolute/path are refused locally.
        var result = await ExpectUsageError("container", "add", "c1", uri, "--size", "1GiB", "--controller", Nowhere);
        Assert.Contains(uri, result.Stderr);
    }

    [Fact]
    public async Task MissingRequiredOption_IsAUsageError()
    {
        // disk create without --size names the missing option.
        var result = await ExpectUsageError("disk", "create", "d1", "--controller", Nowhere);
        Assert.Contains("--size", result.Stderr);
    }

    [Fact]
    public async Task UnknownVerb_IsAUsageError()
    {
        // An unknown verb is named in the error.
        var result = await ExpectUsageError("frobnicate");
        Assert.Contains("frobnicate", result.Stderr);
    }

    [Fact]
    public async Task BadName_IsAUsageError()
    {
        // Names end up in NBD export names and paths, so odd characters are refused locally.
        var result = await ExpectUsageError("disk", "show", "no/slashes", "--controller", Nowhere);
        Assert.Contains("no/slashes", result.Stderr);
    }

    [Fact]
    public async Task BadControllerUrl_IsAUsageError()
    {
        // --controller must be an http(s) URL; $TESSERA_CONTROLLER is checked the same way.
        await ExpectUsageError("disk", "list", "--controller", "not-a-url");
        var result = await TesseraProcess.RunAsync(new Dictionary<string, string> { ["TESSERA_CONTROLLER"] = "ftp://x" }, "disk", "list");
        Assert.Equal(2, result.ExitCode);
        AssertOneErrorLine(result);
    }

    [Theory]
    [InlineData("controller", "--listen", "nohost")]
    [InlineData("controller", "--listen", "127.0.0.1:99999")]
    [InlineData("up", "--nbd-listen", "localhost")]
    [InlineData("up", "--controller-listen", "300.1.1.1:7400")]
    [InlineData("agent", "--nbd-listen", "127.0.0.1:x")]
    public async Task BadListenAddress_IsAUsageErrorAndStartsNothing(string verb, string option, string value)
    {
        // A malformed host:port is refused before any role starts (and before the data directory is touched).
        using var dir = new TempDir();
        var data = dir.Combine("data");
        string[] args = verb switch
        {
            "controller" => ["controller", "--data", data, option, value],
            "up" => ["up", "--data", data, option, value],
            _ => ["agent", "--controller", Nowhere, "--host", "h1", option, value],
        };
        var result = await ExpectUsageError(args);
        Assert.Contains(option, result.Stderr);
        Assert.False(Directory.Exists(data), "a refused command must not create the data directory");
    }

    [Fact]
    public async Task BadUpSize_IsAUsageErrorAndCreatesNothing()
    {
        // tessera up validates --size before creating the data directory.
        using var dir = new TempDir();
        var data = dir.Combine("data");
        await ExpectUsageError("up", "--data", data, "--size", "lots");
        Assert.False(Directory.Exists(data));
    }

    [Fact]
    public async Task UnreachableController_IsExitCode3()
    {
        // With nothing listening at --controller, an admin command ends with exit 3 and one line saying so.
        var result = await TesseraProcess.RunAsync("disk", "list", "--controller", Nowhere);
        Assert.True(result.ExitCode == 3, $"expected exit 3: {result}");
        AssertOneErrorLine(result);
        Assert.Contains("cannot reach the controller", result.Stderr);
        Assert.Contains(Nowhere, result.Stderr);
    }

    [Fact]
    public async Task UnreachableControllerFromEnvironment_IsExitCode3()
    {
        // $TESSERA_CONTROLLER is the default controller URL.
        var result = await TesseraProcess.RunAsync(new Dictionary<string, string> { ["TESSERA_CONTROLLER"] = Nowhere }, "status");
        Assert.True(result.ExitCode == 3, $"expected exit 3: {result}");
        Assert.Contains(Nowhere, result.Stderr);
    }

    [Fact]
    public async Task ListenPortInUse_IsExitCode4WithOneLine()
    {
        // A controller that cannot bind its port ends with exit 4 and one error line, with no stack trace on stderr.
        using var dir = new TempDir();
        var holder = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        holder.Start();
        try
        {
            var port = ((System.Net.IPEndPoint)holder.LocalEndpoint).Port;
            var result = await TesseraProcess.RunAsync("controller", "--data", dir.Combine("c"), "--listen", $"127.0.0.1:{port}");
            Assert.True(result.ExitCode == 4, $"expected exit 4: {result}");
            var lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.True(lines.Length == 1 && lines[0].StartsWith("tessera: error: "), $"expected one error line: {result}");
            Assert.Contains($"127.0.0.1:{port}", lines[0]);
            Assert.DoesNotContain("   at ", result.All);
        }
        finally
        {
            holder.Stop();
        }
    }

    [Fact]
    public async Task Help_ListsEveryVerb()
    {
        // --help succeeds and names every verb group of issue 2.
        var result = await TesseraProcess.RunAsync("--help");
        Assert.Equal(0, result.ExitCode);
        foreach (var verb in new[] { "up", "controller", "agent", "container", "disk", "host", "status" })
            Assert.Contains($"  {verb} ", result.Stdout);
        var disk = await TesseraProcess.RunAsync("disk", "--help");
        foreach (var verb in new[] { "create", "list", "show", "delete", "present", "unpresent", "map" })
            Assert.Contains($"  {verb} ", disk.Stdout);
    }
}
