using System.Buffers.Binary;

namespace Tessera.Agent.Tests;

/// <summary>Data that names its own place: each 8-byte word is its disk offset XOR a tag (a generation, a disk).</summary>
internal static class OffsetPattern
{
    public static byte[] Make(long offset, int length, ulong tag)
    {
        var data = new byte[length];
        for (int i = 0; i < length; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(i), (ulong)(offset + i) ^ tag);
        return data;
    }
}
