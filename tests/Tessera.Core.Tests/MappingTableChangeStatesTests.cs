using CsCheck;
using Tessera.Core.Mapping;
using Xunit;

namespace Tessera.Core.Tests;

/// <summary>
/// The chunked ChangeStates pass against an entry-by-entry model, on ranges that start and end inside chunks,
/// span several chunks and skip never-loaded ones: an off-by-one at a chunk edge, a skipped tail, a write into an
/// Invalid entry or a chunk allocated for nothing each fail here.
/// </summary>
public class MappingTableChangeStatesTests
{
    private const int Chunk = MappingTable.ChunkEntries;

    // Proves every entry (checked one by one, not sampled) ends as the model says, including both neighbours of the range.
    [Fact]
    public void Chunk_pass_agrees_with_per_entry_model_across_chunk_edges()
    {
        var gen = Gen.Long[0, 5L * Chunk].Select(Gen.Long[0, 3L * Chunk + 7], Gen.Int[0, 15], Gen.Bool, Gen.Int[0, 4]);
        gen.Sample((first, count, set, clearNoWrite, holeChunk) =>
        {
            long size = 5L * Chunk + 123; // a partial last chunk
            var table = new MappingTable(size);
            var model = new MapEntry[size];
            // Loaded entries of every kind, Invalid ones among them, in every chunk but one (never loaded).
            for (long s = 0; s < size; s++)
            {
                if (s / Chunk == holeChunk) { model[s] = MapEntry.Invalid; continue; }
                var e = (s % 7) switch
                {
                    0 => MapEntry.Invalid,
                    1 => MapEntry.Zero,
                    2 => MapEntry.Error,
                    3 => MapEntry.Mapped(3, s, EntryStates.NoWrite),
                    4 => MapEntry.Mapped(0xFFFF, MapEntry.MaxPhysicalIndex - s),
                    _ => MapEntry.Mapped((ushort)(s & 0xFFFF), s),
                };
                table.Set(s, e);
                model[s] = e;
            }
            int loadedBefore = table.LoadedChunkCount;
            first = Math.Min(first, size);
            count = Math.Min(count, size - first);
            var clear = clearNoWrite ? EntryStates.NoWrite : EntryStates.None;
            table.ChangeStates(first, count, (EntryStates)set, clear);
            for (long s = first; s < first + count; s++)
                if ((model[s].States & EntryStates.Invalid) == 0) model[s] = model[s].WithStates((EntryStates)set, clear);
            for (long s = 0; s < size; s++)
                if (table.Get(s) != model[s]) return false;
            return table.LoadedChunkCount == loadedBefore;
        }, iter: 60);
    }

    // Proves state flags outside the four state bits never leak into the location (container id, index).
    [Fact]
    public void Flags_beyond_the_state_bits_do_not_touch_the_location()
    {
        var t = new MappingTable(Chunk + 2);
        var e = MapEntry.Mapped(0x1234, 0x0ABC_DEF0_1234);
        t.Set(Chunk, e);
        t.ChangeStates(0, Chunk + 2, (EntryStates)0xF2, EntryStates.None);
        Assert.Equal(e.WithStates(EntryStates.NoWrite, EntryStates.None), t.Get(Chunk));
    }
}
