namespace Tessera.Fuzz.Tests;

/// <summary>The checked-in fuzz inputs: fuzz/corpus/TARGET (seeds) and fuzz/regressions/TARGET (findings).</summary>
public static class FuzzInputs
{
    public static string RepoRoot { get; } = FindRoot();

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Tessera.slnx"))) return dir.FullName;
        throw new InvalidOperationException("Tessera.slnx not found above " + AppContext.BaseDirectory);
    }

    public static string[] Files(string kind, string target)
    {
        string dir = Path.Combine(RepoRoot, "fuzz", kind, target);
        return Directory.Exists(dir) ? Directory.GetFiles(dir).Where(f => !f.EndsWith(".md", StringComparison.Ordinal)).OrderBy(f => f, StringComparer.Ordinal).ToArray() : [];
    }

    public static byte[] Regression(string target, string name) => File.ReadAllBytes(Path.Combine(RepoRoot, "fuzz", "regressions", target, name));
}
