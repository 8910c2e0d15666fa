using Tessera.Core.Mapping;
using Xunit;

namespace Tessera.Core.Tests;

public class MapEntryTests
{
    // Proves every combination of states maps to the patent's action for reads and writes, with Invalid > Error > Zero > NoWrite.
    [Theory]
    [InlineData(EntryStates.None, EntryAction.Map, EntryAction.Map)]
    [InlineData(EntryStates.NoWrite, EntryAction.Map, EntryAction.Fault)]
    [InlineData(EntryStates.Zero, EntryAction.ReadZeros, EntryAction.Fault)]
    [InlineData(EntryStates.Zero | EntryStates.NoWrite, EntryAction.ReadZeros, EntryAction.Fault)]
    [InlineData(EntryStates.Error, EntryAction.Error, EntryAction.Error)]
    [InlineData(EntryStates.Error | EntryStates.Zero, EntryAction.Error, EntryAction.Error)]
    [InlineData(EntryStates.Error | EntryStates.NoWrite, EntryAction.Error, EntryAction.Error)]
    [InlineData(EntryStates.Error | EntryStates.Zero | EntryStates.NoWrite, EntryAction.Error, EntryAction.Error)]
    [InlineData(EntryStates.Invalid, EntryAction.Fault, EntryAction.Fault)]
    [InlineData(EntryStates.Invalid | EntryStates.Error, EntryAction.Fault, EntryAction.Fault)]
    [InlineData(EntryStates.Invalid | EntryStates.Zero, EntryAction.Fault, EntryAction.Fault)]
    [InlineData(EntryStates.Invalid | EntryStates.NoWrite, EntryAction.Fault, EntryAction.Fault)]
    [InlineData(EntryStates.All, EntryAction.Fault, EntryAction.Fault)]
    public void State_rules_match_the_patent(EntryStates states, EntryAction read, EntryAction write)
    {
        var entry = MapEntry.Mapped(7, 123, states);
        Assert.Equal(read, entry.ActionFor(write: false));
        Assert.Equal(write, entry.ActionFor(write: true));
    }

    // Proves the packing keeps container id, physical index and states apart at their extremes.
    [Theory]
    [InlineData((ushort)0, 0L, EntryStates.None)]
    [InlineData(ushort.MaxValue, MapEntry.MaxPhysicalIndex, EntryStates.All)]
    [InlineData((ushort)1, 1L, EntryStates.NoWrite)]
    [InlineData((ushort)513, 0x0ABC_DEF0_1234L, EntryStates.Zero)]
    public void Packing_round_trips(ushort container, long index, EntryStates states)
    {
        var e = MapEntry.Mapped(container, index, states);
        Assert.Equal(container, e.ContainerId);
        Assert.Equal(index, e.PhysicalIndex);
        Assert.Equal(states, e.States);
        Assert.Equal(index << 16, e.ContainerOffset);
    }

    // Proves a physical index that does not fit is refused rather than silently truncated into another location.
    [Fact]
    public void Oversized_index_is_refused() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => MapEntry.Mapped(1, MapEntry.MaxPhysicalIndex + 1));

    // Proves setting and clearing states keeps the location and only touches the named bits.
    [Fact]
    public void WithStates_sets_and_clears_only_named_bits()
    {
        var e = MapEntry.Mapped(3, 99).WithStates(EntryStates.NoWrite, EntryStates.None);
        Assert.Equal(EntryStates.NoWrite, e.States);
        Assert.Equal(99, e.PhysicalIndex);
        var cleared = e.WithStates(EntryStates.None, EntryStates.NoWrite);
        Assert.Equal(MapEntry.Mapped(3, 99), cleared);
        Assert.True(cleared.HasLocation);
        Assert.False(MapEntry.Zero.HasLocation);
        Assert.False(MapEntry.Invalid.HasLocation);
    }
}
