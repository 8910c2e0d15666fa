using Xunit;

namespace Tessera.Fuzz.Tests;

/// <summary>
/// Replays every seed and every recorded finding through the same entry points AFL++ drives, so the harness cannot
/// rot (a target that stops building, or a seed that starts failing its oracle, fails CI) and no fixed bug returns.
/// </summary>
public class CorpusReplayTests
{
    public static TheoryData<string> Targets() => new(Program.Targets);

    [Theory]
    [MemberData(nameof(Targets))]
    public void EverySeedPassesTheOracle(string target)
    {
        var seeds = FuzzInputs.Files("corpus", target);
        Assert.True(seeds.Length >= 3, $"fuzz/corpus/{target} has {seeds.Length} seeds; regenerate with Tessera.Fuzz --write-seeds fuzz/corpus");
        using var harness = FuzzTarget.Create(target);
        foreach (var seed in seeds) harness.Run(File.ReadAllBytes(seed)); // an oracle failure throws, naming the seed below
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void EveryRecordedFindingNowPasses(string target)
    {
        using var harness = FuzzTarget.Create(target);
        foreach (var finding in FuzzInputs.Files("regressions", target))
        {
            var e = Record.Exception(() => harness.Run(File.ReadAllBytes(finding)));
            Assert.True(e == null, $"{finding}: {e}");
        }
    }

    [Fact]
    public void CheckedInSeedsAreWhatTheGeneratorWrites()
    {
        // The corpus is generated (Seeds.cs); a change to the generator without regenerating would test stale seeds.
        foreach (var (target, name, bytes) in Seeds.All())
        {
            string path = Path.Combine(FuzzInputs.RepoRoot, "fuzz", "corpus", target, name);
            Assert.True(File.Exists(path), $"missing seed {path}");
            Assert.True(bytes.AsSpan().SequenceEqual(File.ReadAllBytes(path)), $"{path} differs from Seeds.cs; run Tessera.Fuzz --write-seeds fuzz/corpus");
        }
    }
}
