using BenchmarkDotNet.Running;

namespace Tessera.Benchmarks;

public static class Program
{
    /// <summary>
    /// <c>dotnet run -c Release -- [BenchmarkDotNet arguments]</c> runs the microbenchmarks;
    /// <c>dotnet run -c Release -- control [options]</c> measures the control path (see ControlPath.cs).
    /// </summary>
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "control") return ControlPath.Run(args[1..]);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
