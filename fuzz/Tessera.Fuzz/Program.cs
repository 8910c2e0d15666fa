using SharpFuzz;

namespace Tessera.Fuzz;

/// <summary>
/// Usage:
///   Tessera.Fuzz TARGET                 run under AFL++ (SharpFuzz's out-of-process loop reads inputs from afl-fuzz)
///   Tessera.Fuzz TARGET --replay FILE.. run files through the target once each and report (crash triage)
///   Tessera.Fuzz --write-seeds DIR      write the seed corpus, DIR/TARGET/NAME
/// Targets: handshake, transmission, client, admin, parsers.
/// </summary>
public static class Program
{
    public static readonly string[] Targets = ["handshake", "transmission", "client", "admin", "parsers"];

    public static int Main(string[] args)
    {
        if (args.Length == 2 && args[0] == "--write-seeds")
        {
            int n = Seeds.Write(args[1]);
            Console.WriteLine($"wrote {n} seed files under {args[1]}");
            return 0;
        }
        if (args.Length < 1 || !Targets.Contains(args[0]))
        {
            Console.Error.WriteLine($"usage: Tessera.Fuzz {string.Join('|', Targets)} [--replay FILE...] | --write-seeds DIR");
            return 2;
        }
        using var target = FuzzTarget.Create(args[0]);
        if (args.Length >= 2 && args[1] == "--replay")
        {
            int failed = 0;
            foreach (var file in args.Skip(2))
            {
                try
                {
                    target.Run(File.ReadAllBytes(file));
                    Console.WriteLine($"ok    {file}");
                }
                catch (Exception e)
                {
                    failed++;
                    Console.WriteLine($"FAIL  {file}: {e}");
                }
            }
            return failed == 0 ? 0 : 1;
        }
        Fuzzer.OutOfProcess.Run(stream =>
        {
            using var ms = new MemoryStream();
            stream.CopyTo(ms);
            target.Run(ms.ToArray());
        });
        return 0;
    }
}

/// <summary>One fuzz entry point: the same object serves AFL++, replay and the corpus tests.</summary>
public sealed class FuzzTarget : IDisposable
{
    private readonly Action<byte[]> _run;
    private readonly IDisposable? _state;

    /// <summary>The admin harness, when this is the admin target (its store and counters).</summary>
    public AdminTarget? Admin => _state as AdminTarget;

    private FuzzTarget(Action<byte[]> run, IDisposable? state = null)
    {
        _run = run;
        _state = state;
    }

    public static FuzzTarget Create(string name)
    {
        switch (name)
        {
            case "handshake": return new(NbdServerTargets.Handshake);
            case "transmission": return new(NbdServerTargets.Transmission);
            case "client": return new(NbdClientTarget.Run);
            case "admin":
            {
                var admin = new AdminTarget();
                return new(admin.Run, admin);
            }
            case "parsers": return new(ParserTarget.Run);
            default: throw new ArgumentException($"unknown fuzz target '{name}'");
        }
    }

    public void Run(byte[] input) => _run(input);

    public void Dispose() => _state?.Dispose();
}
