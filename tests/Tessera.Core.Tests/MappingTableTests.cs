using CsCheck;
using Tessera.Core.Mapping;
using Xunit;

namespace Tessera.Core.Tests;

public class MappingTableTests
{
    // Proves a new table reads all Invalid, including entries in chunks that were never allocated.
    [Fact]
    public void New_table_is_all_invalid()
    {
        var t = new MappingTable(10_000);
        Assert.Equal(MapEntry.Invalid, t.Get(0));
        Assert.Equal(MapEntry.Invalid, t.Get(9_999));
        Assert.Equal(MapEntry.Invalid, t.Get(10_000)); // beyond the end also reads Invalid (faults, never maps)
        Assert.Equal(0, t.LoadedChunkCount);
    }

    // Proves memory follows what was loaded: a 64 TiB disk of 1 MiB segments allocates one chunk for one entry.
    [Fact]
    public void Huge_table_allocates_only_loaded_chunks()
    {
        long segments = (64L << 40) >> 20;
        var t = new MappingTable(segments);
        t.Set(segments - 1, MapEntry.Mapped(1, 5));
        Assert.Equal(1, t.LoadedChunkCount);
        Assert.Equal(MapEntry.Mapped(1, 5), t.Get(segments - 1));
        Assert.Equal(MapEntry.Invalid, t.Get(segments - 2 - MappingTable.ChunkEntries));
        // Setting states on never-loaded entries leaves them Invalid and allocates nothing.
        t.ChangeStates(0, segments, EntryStates.NoWrite, EntryStates.None);
        Assert.Equal(1, t.LoadedChunkCount);
        Assert.Equal(EntryStates.NoWrite, t.Get(segments - 1).States);
    }

    // Proves range updates, state changes, invalidation and resize agree with a simple dictionary model.
    [Fact]
    public void Operations_agree_with_a_model()
    {
        var ops = Gen.Int[0, 5].Select(Gen.Long[0, 20_000], Gen.Long[0, 300], Gen.Int[0, 15], Gen.Int[0, 15]).Array[1, 40];
        ops.Sample(list =>
        {
            long size = 20_000;
            var table = new MappingTable(size);
            var model = new Dictionary<long, MapEntry>();
            MapEntry ModelGet(long s) => s < size && model.TryGetValue(s, out var e) ? e : MapEntry.Invalid;
            foreach (var (kind, first, count, a, b) in list)
            {
                long f = Math.Min(first, size), c = Math.Min(count, size - f);
                switch (kind)
                {
                    case 0:
                        table.SetRange(f, c, i => MapEntry.Mapped((ushort)a, f + i));
                        for (long i = 0; i < c; i++) model[f + i] = MapEntry.Mapped((ushort)a, f + i);
                        break;
                    case 1:
                        var clear = (EntryStates)b & EntryStates.NoWrite;
                        table.ChangeStates(f, c, (EntryStates)a, clear);
                        for (long i = 0; i < c; i++)
                            if (model.TryGetValue(f + i, out var e) && (e.States & EntryStates.Invalid) == 0) model[f + i] = e.WithStates((EntryStates)a, clear);
                        break;
                    case 2:
                        if (a == 0) { table.InvalidateAll(); model.Clear(); }
                        break;
                    case 3:
                        long newSize = Math.Max(1, first);
                        table.Resize(newSize);
                        foreach (var k in model.Keys.Where(k => k >= newSize).ToList()) model.Remove(k);
                        size = newSize;
                        break;
                    case 4:
                        if (c > 0) { table.Set(f, MapEntry.Zero); model[f] = MapEntry.Zero; }
                        break;
                    default:
                        {
                            // Fill: ranges up to ~9,000 entries, so whole chunks (4,096) are covered, Invalid included.
                            long fc = Math.Min(count * 30, size - f);
                            var value = (a % 3) switch { 0 => MapEntry.Invalid, 1 => MapEntry.Zero, _ => MapEntry.Mapped((ushort)b, a) };
                            table.Fill(f, fc, value);
                            for (long i = 0; i < fc; i++) model[f + i] = value;
                            break;
                        }
                }
            }
            for (long s = 0; s < size; s += 37) if (ModelGet(s) != table.Get(s)) return false;
            if (ModelGet(size - 1) != table.Get(size - 1)) return false;
            return table.SegmentCount == size;
        }, iter: 300);
    }

    // Proves readers racing with whole-entry writers only ever see one of the written entries, never a torn mix.
    [Fact]
    public async Task Concurrent_readers_never_see_torn_entries()
    {
        var t = new MappingTable(64);
        var a = MapEntry.Mapped(0x1234, 0x0FFF_FFFF_FFFF, EntryStates.NoWrite);
        var b = MapEntry.Mapped(0x4321, 0x0000_0000_0001);
        t.Set(5, a);
        using var stop = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var writer = Task.Run(() => { while (!stop.IsCancellationRequested) { t.Set(5, b); t.Set(5, a); } });
        long seen = 0;
        while (!stop.IsCancellationRequested)
        {
            var e = t.Get(5);
            Assert.True(e == a || e == b, $"torn entry {e.Raw:x}");
            seen++;
        }
        await writer;
        Assert.True(seen > 0);
    }

    // Proves out-of-range commands are refused instead of writing outside the table.
    [Fact]
    public void Out_of_range_updates_throw()
    {
        var t = new MappingTable(10);
        Assert.Throws<ArgumentOutOfRangeException>(() => t.Set(10, MapEntry.Zero));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.ChangeStates(5, 6, EntryStates.NoWrite, EntryStates.None));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.SetRange(-1, 2, _ => MapEntry.Zero));
    }

    // Proves Invalid, Zero and Error cannot be cleared by a state change (only by replacing the entry), as the patent says.
    [Theory]
    [InlineData(EntryStates.Invalid)]
    [InlineData(EntryStates.Zero)]
    [InlineData(EntryStates.Error)]
    public void Voiding_states_cannot_be_cleared(EntryStates state)
    {
        var t = new MappingTable(4);
        t.Set(1, MapEntry.Mapped(2, 3, state));
        Assert.Throws<ArgumentException>(() => t.ChangeStates(0, 4, EntryStates.None, state));
        Assert.Equal(state, t.Get(1).States);
        t.ChangeStates(0, 4, EntryStates.None, EntryStates.NoWrite); // allowed
        t.Set(1, MapEntry.Mapped(2, 3)); // replacing the whole entry is the way to lift it
        Assert.Equal(EntryStates.None, t.Get(1).States);
    }
}
