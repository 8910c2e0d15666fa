using System.Diagnostics;
using Tessera.Simulation;

// The simulator's command line. Runs seeds one after another in this process; see docs/reliability.md.
long firstSeed = 1, lastSeed = 1;
int steps = 3000;
double minutes = 0;
bool trace = false;
var findProbes = new List<string>(); // named on each seed's line when they fired: finds seeds that reach a rare path
bool classic = false; // without the events added after the first build (migration, resize, ...): old seeds replay exactly
string? plant = Environment.GetEnvironmentVariable("TESSERA_SIM_PLANT_BUG");
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--seed": firstSeed = lastSeed = long.Parse(args[++i]); break;
        case "--seeds":
            var parts = args[++i].Split("..");
            firstSeed = long.Parse(parts[0]);
            lastSeed = parts.Length > 1 && parts[1].Length > 0 ? long.Parse(parts[1]) : long.MaxValue;
            break;
        case "--steps" or "--ops": steps = int.Parse(args[++i]); break;
        case "--minutes": minutes = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
        case "--trace": trace = true; break;
        case "--classic": classic = true; break;
        case "--find-probe": findProbes.Add(args[++i]); break;
        case "--plant-bug": plant = args[++i]; break;
        default:
            Console.Error.WriteLine("usage: Tessera.Simulation [--seed N | --seeds A..B] [--steps N] [--minutes M] [--trace] [--classic] [--find-probe NAME]... [--plant-bug lose-write]");
            return 2;
    }
}

PoolDriver.Configure();
var wall = Stopwatch.StartNew();
long seeds = 0, ops = 0, failed = 0, simulatedMs = 0;
var faults = new SortedDictionary<string, long>(StringComparer.Ordinal);
var probes = new SortedDictionary<string, long>(StringComparer.Ordinal);
var outcomes = new SortedDictionary<string, long>(StringComparer.Ordinal);
for (long seed = firstSeed; seed <= lastSeed; seed++)
{
    if (minutes > 0 && wall.Elapsed.TotalMinutes >= minutes) break;
    SimResult result;
    try
    {
        using var sim = new Simulation(new SimOptions(seed, steps, trace, plant, classic));
        result = sim.Run();
    }
    catch (TimeoutException e)
    {
        // The only worker is stuck in product code: this process cannot run anything else.
        Console.WriteLine($"seed {seed}: HANG {e.Message}");
        Console.WriteLine($"  replay: DOTNET_PROCESSOR_COUNT=1 dotnet tests/Tessera.Simulation/bin/Release/net10.0/Tessera.Simulation.dll --seed {seed} --steps {steps} --trace{(classic ? " --classic" : "")}");
        return 3;
    }
    seeds++;
    ops += result.ClientOps;
    simulatedMs += result.SimulatedMs;
    foreach (var (k, v) in result.Faults) faults[k] = faults.GetValueOrDefault(k) + v;
    foreach (var (k, v) in result.Probes) probes[k] = probes.GetValueOrDefault(k) + v;
    foreach (var (k, v) in result.Outcomes) outcomes[k] = outcomes.GetValueOrDefault(k) + v;
    Console.WriteLine($"seed {seed}: {(result.Violations.Count == 0 ? "ok" : "VIOLATION")} agents={result.Agents} containers={result.Containers} disks={result.Disks} ops={result.ClientOps} faults={result.Faults.Values.Sum()} simulated={result.SimulatedMs}ms trace={result.TraceHash:x16}{string.Concat(findProbes.Where(p => result.Probes.GetValueOrDefault(p) > 0).Select(p => $" {p}={result.Probes[p]}"))}");
    if (result.Violations.Count > 0)
    {
        failed++;
        foreach (var v in result.Violations.Take(10)) Console.WriteLine("  " + v);
        Console.WriteLine($"  replay: DOTNET_PROCESSOR_COUNT=1 dotnet tests/Tessera.Simulation/bin/Release/net10.0/Tessera.Simulation.dll --seed {seed} --steps {steps} --trace{(classic ? " --classic" : "")}{(plant is null ? "" : " --plant-bug " + plant)}");
    }
}
double wallMinutes = wall.Elapsed.TotalMinutes;
Console.WriteLine($"summary: seeds={seeds} failed={failed} ops={ops} simulated={simulatedMs / 1000}s wall={wall.Elapsed.TotalSeconds:F0}s seeds/min={(wallMinutes > 0 ? seeds / wallMinutes : 0):F1}");
Console.WriteLine("faults: " + string.Join(" ", faults.Select(kv => $"{kv.Key.Replace(' ', '_')}={kv.Value}")));
Console.WriteLine("probes: " + string.Join(" ", probes.Select(kv => $"{kv.Key}={kv.Value}")));
Console.WriteLine("outcomes: " + string.Join(" ", outcomes.Select(kv => $"{kv.Key}={kv.Value}")));
return failed == 0 ? 0 : 1;
