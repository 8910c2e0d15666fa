using System.Buffers.Binary;

namespace Tessera.Integration.Tests.Support;

/// <summary>
/// Data in which every 512-byte block says where it belongs: its disk offset and a tag for the run, repeated.
/// A block that lands at the wrong place (a mis-mapped segment) names the offset it was written for.
/// </summary>
public static class SelfDescribingData
{
    public const int BlockBytes = 512;

    public static byte[] Create(long diskOffset, int length, ulong tag)
    {
        Assert.Equal(0, length % BlockBytes);
        var data = new byte[length];
        for (var at = 0; at < length; at += 16)
        {
            var block = at / BlockBytes * BlockBytes;
            BinaryPrimitives.WriteInt64LittleEndian(data.AsSpan(at), diskOffset + block);
            BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(at + 8), tag);
        }
        return data;
    }

    /// <summary>Fails with the first block that does not describe its own offset.</summary>
    public static void Verify(ReadOnlySpan<byte> data, long diskOffset, ulong tag)
    {
        for (var block = 0; block < data.Length; block += BlockBytes)
        {
            for (var at = block; at < block + BlockBytes; at += 16)
            {
                var offset = BinaryPrimitives.ReadInt64LittleEndian(data[at..]);
                var foundTag = BinaryPrimitives.ReadUInt64LittleEndian(data[(at + 8)..]);
                if (offset != diskOffset + block || foundTag != tag)
                    Assert.Fail($"block at disk offset {diskOffset + block} holds data for offset {offset} (tag {foundTag:x}, expected {tag:x})");
            }
        }
    }
}
