using System.Buffers.Binary;
using Tessera.Nbd;
using Xunit;

namespace Tessera.Fuzz.Tests;

/// <summary>
/// Findings of the "client" target (a hostile NBD server), replayed as the plain API call a container makes:
/// the handshake must be refused with an <see cref="NbdClientException"/> instead of producing a client that
/// misbehaves later.
/// </summary>
public class NbdClientFindingTests
{
    /// <summary>The server's handshake bytes of a client-target input: [options][u16 length][handshake]...</summary>
    private static (NbdClientOptions Options, byte[] Handshake) Split(byte[] input)
    {
        int n = Math.Min(BinaryPrimitives.ReadUInt16BigEndian(input.AsSpan(1)), input.Length - 3);
        return (new NbdClientOptions { StructuredReplies = (input[0] & 1) != 0, BaseAllocation = (input[0] & 2) != 0 }, input.AsSpan(3, n).ToArray());
    }

    [Fact]
    public async Task MaximumBlockSizeZeroIsRefusedInsteadOfSplittingReadsForever()
    {
        // Before the fix the client accepted max block size 0 and ReadAsync of anything larger looped forever
        // (split step 0), allocating requests until the process ran out of memory.
        var (options, handshake) = Split(FuzzInputs.Regression("client", "max-block-size-zero"));
        var e = await Assert.ThrowsAsync<NbdClientException>(() => NbdClient.ConnectAsync(new ScriptedStream(handshake), "f", options));
        Assert.Contains("maximum block size 0", e.Message);
    }

    [Fact]
    public async Task ExportSizeBeyondInt64IsRefusedInsteadOfBecomingNegative()
    {
        // Before the fix an NBD_INFO_EXPORT size >= 2^63 became a negative SizeBytes for the container above.
        var (options, handshake) = Split(FuzzInputs.Regression("client", "export-size-beyond-2p63"));
        var e = await Assert.ThrowsAsync<NbdClientException>(() => NbdClient.ConnectAsync(new ScriptedStream(handshake), "f", options));
        Assert.Contains("more than 2^63-1", e.Message);
    }

    [Fact]
    public async Task OldStyleExportReplyWithHugeSizeIsRefused()
    {
        var handshake = new NbdWireBuilder().Greeting(Tessera.Nbd.Protocol.NbdWire.FlagFixedNewstyle)
            .OptionReply(Tessera.Nbd.Protocol.NbdWire.OptGo, Tessera.Nbd.Protocol.NbdWire.RepErrUnsup, [])
            .U64(ulong.MaxValue).U16(1).Raw(new byte[124]).ToArray();
        var e = await Assert.ThrowsAsync<NbdClientException>(() =>
            NbdClient.ConnectAsync(new ScriptedStream(handshake), "f", new NbdClientOptions { StructuredReplies = false }));
        Assert.Contains("more than 2^63-1", e.Message);
    }
}
