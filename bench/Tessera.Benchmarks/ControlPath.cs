namespace Tessera.Benchmarks;

public static class ControlPath
{
    public static int Run(string[] args)
    {
        Console.Error.WriteLine("control-path figures need the controller (not on this branch yet)");
        return 2;
    }
}
