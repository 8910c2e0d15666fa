using BenchmarkDotNet.Attributes;
using Tessera.Core.Mapping;

namespace Tessera.Benchmarks;

/// <summary>The table and the gate on their own: what every piece of every request pays before touching data.</summary>
[MemoryDiagnoser]
public class MapBenchmarks
{
    private const int Lookups = 1024;
    private const long Segments = 1 << 20; // 1 Mi entries: a 1 TiB disk of 1 MiB segments
    private MappingTable _table = null!;
    private long[] _segments = null!;
    private readonly InFlightGate _gate = new();
    private bool _toggle;

    [GlobalSetup]
    public void Setup()
    {
        _table = new MappingTable(Segments);
        _table.SetRange(0, Segments, i => MapEntry.Mapped(1, i * 16));
        var random = new Random(7);
        _segments = new long[Lookups];
        for (int i = 0; i < Lookups; i++) _segments[i] = random.NextInt64(Segments);
    }

    /// <summary>One random lookup in a 1 Mi-entry table (cache misses included: the table is 8 MiB).</summary>
    [Benchmark(OperationsPerInvoke = Lookups)]
    public ulong MapLookup()
    {
        ulong sum = 0;
        var segments = _segments;
        for (int i = 0; i < segments.Length; i++) sum += _table.Get(segments[i]).Raw;
        return sum;
    }

    /// <summary>Lookup plus the decision the data path takes from the entry.</summary>
    [Benchmark(OperationsPerInvoke = Lookups)]
    public int MapLookupAndAction()
    {
        int maps = 0;
        var segments = _segments;
        for (int i = 0; i < segments.Length; i++) if (_table.Get(segments[i]).ActionFor(write: true) == EntryAction.Map) maps++;
        return maps;
    }

    [Benchmark(OperationsPerInvoke = Lookups)]
    public void GateEnterLeave()
    {
        for (int i = 0; i < Lookups; i++) InFlightGate.Leave(_gate.Enter());
    }

    /// <summary>A state change over 1 Mi entries (one plain pass per 4096-entry chunk), as a blocking command applies it.</summary>
    [Benchmark]
    public void ChangeStates1Mi()
    {
        _toggle = !_toggle;
        if (_toggle) _table.ChangeStates(0, Segments, EntryStates.NoWrite, EntryStates.None);
        else _table.ChangeStates(0, Segments, EntryStates.None, EntryStates.NoWrite);
    }
}
