using Xunit;

namespace Tessera.Core.Tests;

public class ByteSizeTests
{
    // Proves the sizes users type parse to the right byte counts.
    [Theory]
    [InlineData("512", 512L)]
    [InlineData("512MiB", 512L << 20)]
    [InlineData("8GiB", 8L << 30)]
    [InlineData("1TiB", 1L << 40)]
    [InlineData("64k", 64L << 10)]
    [InlineData(" 2 G ", 2L << 30)]
    public void Parses(string text, long expected) => Assert.Equal(expected, ByteSize.Parse(text));

    // Proves nonsense and overflow are refused, not misread.
    [Theory]
    [InlineData("")]
    [InlineData("8XB")]
    [InlineData("-1GiB")]
    [InlineData("1.5GiB")]
    [InlineData("99999999999PiB")]
    [InlineData("GiB")]
    public void Refuses(string text) => Assert.False(ByteSize.TryParse(text, out _));
}
