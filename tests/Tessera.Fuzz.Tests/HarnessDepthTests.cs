using Xunit;

namespace Tessera.Fuzz.Tests;

/// <summary>
/// The seeds must take each target past its front door, or the fuzzer starts from nothing: these fail when a
/// protocol or API change leaves the seeds (or the harness prefixes) stuck at the first check.
/// </summary>
public class HarnessDepthTests
{
    private static byte[] Seed(string target, string name) => File.ReadAllBytes(Path.Combine(FuzzInputs.RepoRoot, "fuzz", "corpus", target, name));

    [Fact]
    public void EveryTransmissionPrefixReachesTheExport()
    {
        using var harness = FuzzTarget.Create("transmission");
        for (byte prefix = 0; prefix < NbdServerTargets.Prefixes.Length; prefix++)
        {
            int before = NbdServerTargets.ExportsServed;
            harness.Run([prefix]);
            Assert.True(NbdServerTargets.ExportsServed == before + 1, $"transmission prefix {prefix} does not complete a handshake");
        }
    }

    [Fact]
    public void HandshakeSeedsThatAskForAnExportGetIt()
    {
        using var harness = FuzzTarget.Create("handshake");
        int before = NbdServerTargets.ExportsServed;
        foreach (var name in new[] { "qemu-go-structured-base-allocation", "old-export-name", "go-no-infos", "starttls-extended-headers-then-go" })
            harness.Run(Seed("handshake", name));
        Assert.Equal(before + 4, NbdServerTargets.ExportsServed);
    }

    [Theory]
    [InlineData("structured-base-allocation", 7)] // all but write-zeroes, which the seed answers EINVAL
    [InlineData("simple-replies", 6)]             // all but the write (EPERM) and block status (EINVAL)
    public void ClientSeedsGetTheirRequestsAnswered(string seed, int answered)
    {
        using var harness = FuzzTarget.Create("client");
        harness.Run(Seed("client", seed));
        Assert.Equal(answered, NbdClientTarget.LastAnswered);
    }

    [Fact]
    public void AdminSeedsSucceedOnTheTemplateCluster()
    {
        using var harness = FuzzTarget.Create("admin");
        harness.Run(Seed("admin", "list-everything"));
        Assert.Equal(10, harness.Admin!.LastSucceeded);
        harness.Run(Seed("admin", "disk-lifecycle"));
        Assert.Equal(5, harness.Admin.LastSucceeded);
        harness.Run(Seed("admin", "invalid-requests"));
        Assert.Equal(0, harness.Admin.LastSucceeded);
    }
}
