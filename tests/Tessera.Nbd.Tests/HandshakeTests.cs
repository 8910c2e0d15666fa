using System.Buffers.Binary;
using System.Text;

namespace Tessera.Nbd.Tests;

public class HandshakeTests
{
    private static async Task<(TestServer Server, RawNbd Raw)> OpenAsync(uint clientFlags = NbdWire.ClientFlagFixedNewstyle | NbdWire.ClientFlagNoZeroes)
    {
        var s = await TestServer.StartAsync();
        var raw = await RawNbd.ConnectAsync(s.Port);
        ushort flags = await raw.GreetAsync(clientFlags);
        Assert.Equal(NbdWire.FlagFixedNewstyle | NbdWire.FlagNoZeroes, flags);
        return (s, raw);
    }

    private static async Task<uint> OptionAsync(RawNbd raw, uint option, byte[] data) { await raw.SendOptionAsync(option, data); return (await raw.ReadRepliesAsync(option))[^1].Type; }

    private static async Task AssertSimpleReadWorksAsync(RawNbd raw)
    {
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdRead, 0, 42, 0, 16));
        var reply = await raw.ReadExactAsync(16 + 16);
        Assert.Equal(NbdWire.SimpleReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(reply));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4)));
        Assert.Equal(42UL, BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8)));
    }

    [Fact]
    public async Task ListNamesEveryExportWithDescriptionAndRejectsPayload()
    {
        // Proves NBD_OPT_LIST sends one SERVER reply per export (name and description) then ACK, and a LIST with data gets ERR_INVALID without ending the handshake.
        var (s, raw) = await OpenAsync();
        await using var _ = s; await using var __ = raw;
        await raw.SendOptionAsync(NbdWire.OptList, []);
        var replies = await raw.ReadRepliesAsync(NbdWire.OptList);
        Assert.Equal(NbdWire.RepAck, replies[^1].Type);
        var names = replies.Where(r => r.Type == NbdWire.RepServer).Select(r =>
        {
            int n = (int)BinaryPrimitives.ReadUInt32BigEndian(r.Data);
            return (Encoding.UTF8.GetString(r.Data, 4, n), Encoding.UTF8.GetString(r.Data, 4 + n, r.Data.Length - 4 - n));
        }).ToList();
        Assert.Equal(["disk", "nofast", "ro"], names.Select(n => n.Item1).Order().ToArray());
        Assert.All(names, n => Assert.Equal("in-memory test disk", n.Item2));
        Assert.Equal(NbdWire.RepErrInvalid, await OptionAsync(raw, NbdWire.OptList, [1]));
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptList, []));
    }

    [Fact]
    public async Task InfoReportsExportNameDescriptionAndBlockSizesAndHandshakeContinues()
    {
        // Proves NBD_OPT_INFO answers INFO_EXPORT, INFO_BLOCK_SIZE (1/4096/32 MiB), and the requested NAME and DESCRIPTION, then stays in the handshake.
        var (s, raw) = await OpenAsync();
        await using var _ = s; await using var __ = raw;
        await raw.SendOptionAsync(NbdWire.OptInfo, RawNbd.NameAndInfos("ro", NbdWire.InfoName, NbdWire.InfoDescription, NbdWire.InfoBlockSize));
        var replies = await raw.ReadRepliesAsync(NbdWire.OptInfo);
        Assert.Equal(NbdWire.RepAck, replies[^1].Type);
        var infos = replies.Where(r => r.Type == NbdWire.RepInfo).ToDictionary(r => BinaryPrimitives.ReadUInt16BigEndian(r.Data), r => r.Data);
        var export = infos[NbdWire.InfoExport];
        Assert.Equal(4UL * 1024 * 1024, BinaryPrimitives.ReadUInt64BigEndian(export.AsSpan(2)));
        Assert.NotEqual(0, BinaryPrimitives.ReadUInt16BigEndian(export.AsSpan(10)) & NbdWire.TxReadOnly);
        Assert.Equal("ro", Encoding.UTF8.GetString(infos[NbdWire.InfoName].AsSpan(2)));
        Assert.Equal("in-memory test disk", Encoding.UTF8.GetString(infos[NbdWire.InfoDescription].AsSpan(2)));
        var bs = infos[NbdWire.InfoBlockSize];
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(bs.AsSpan(2)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(bs.AsSpan(6)));
        Assert.Equal(32u * 1024 * 1024, BinaryPrimitives.ReadUInt32BigEndian(bs.AsSpan(10)));
        Assert.Equal(NbdWire.RepErrUnknown, await OptionAsync(raw, NbdWire.OptInfo, RawNbd.NameAndInfos("nope")));
        Assert.Equal(NbdWire.RepErrInvalid, await OptionAsync(raw, NbdWire.OptInfo, [0, 0, 0, 9, 1]));
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptGo, RawNbd.NameAndInfos("disk")));
        await AssertSimpleReadWorksAsync(raw);
    }

    [Fact]
    public async Task ExportNameWithNoZeroesSendsTenBytesAndWithoutSendsTheZeroPadding()
    {
        // Proves NBD_OPT_EXPORT_NAME replies size+flags (plus 124 zeros unless NO_ZEROES was agreed) and enters transmission.
        foreach (bool noZeroes in new[] { true, false })
        {
            var (s, raw) = await OpenAsync(NbdWire.ClientFlagFixedNewstyle | (noZeroes ? NbdWire.ClientFlagNoZeroes : 0));
            await using var _ = s; await using var __ = raw;
            await raw.SendOptionAsync(NbdWire.OptExportName, Encoding.UTF8.GetBytes("disk"));
            var reply = await raw.ReadExactAsync(noZeroes ? 10 : 134);
            Assert.Equal((ulong)TestServer.DiskBytes, BinaryPrimitives.ReadUInt64BigEndian(reply));
            Assert.All(reply.AsSpan(10).ToArray(), b => Assert.Equal(0, b));
            await AssertSimpleReadWorksAsync(raw);
        }
    }

    [Fact]
    public async Task ExportNameForUnknownExportClosesTheConnection()
    {
        // Proves EXPORT_NAME with an unknown name ends the connection (the option has no error reply), and the server goes on.
        var (s, raw) = await OpenAsync();
        await using var _ = s; await using var __ = raw;
        await raw.SendOptionAsync(NbdWire.OptExportName, Encoding.UTF8.GetBytes("missing"));
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task AbortIsAcknowledgedAndClosesTheConnection()
    {
        // Proves NBD_OPT_ABORT gets an ACK and then the server closes.
        var (s, raw) = await OpenAsync();
        await using var _ = s; await using var __ = raw;
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptAbort, []));
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
    }

    [Fact]
    public async Task UnknownOptionsAndStartTlsAreRefusedAndTheHandshakeContinues()
    {
        // Proves unknown options (and EXTENDED_HEADERS) get ERR_UNSUP, STARTTLS gets ERR_POLICY, and GO still works afterwards.
        var (s, raw) = await OpenAsync();
        await using var _ = s; await using var __ = raw;
        Assert.Equal(NbdWire.RepErrUnsup, await OptionAsync(raw, 0x1234, [1, 2, 3]));
        Assert.Equal(NbdWire.RepErrUnsup, await OptionAsync(raw, NbdWire.OptExtendedHeaders, []));
        Assert.Equal(NbdWire.RepErrPolicy, await OptionAsync(raw, NbdWire.OptStartTls, []));
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptGo, RawNbd.NameAndInfos("disk")));
        await AssertSimpleReadWorksAsync(raw);
    }

    [Fact]
    public async Task StructuredReplyOptionAcceptsOnlyAnEmptyPayload()
    {
        // Proves STRUCTURED_REPLY is acknowledged when empty and refused with ERR_INVALID when it carries data.
        var (s, raw) = await OpenAsync();
        await using var _ = s; await using var __ = raw;
        Assert.Equal(NbdWire.RepErrInvalid, await OptionAsync(raw, NbdWire.OptStructuredReply, [0]));
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptStructuredReply, []));
    }

    [Fact]
    public async Task MetaContextsOfferBaseAllocationAndIgnoreUnknownNamespaces()
    {
        // Proves LIST_META_CONTEXT lists base:allocation for no query or "base:", ignores foreign namespaces, SET needs structured replies, and SET selects id 1.
        var (s, raw) = await OpenAsync();
        await using var _ = s; await using var __ = raw;
        Assert.Equal(NbdWire.RepErrInvalid, await OptionAsync(raw, NbdWire.OptSetMetaContext, RawNbd.MetaQuery("disk", "base:allocation")));
        foreach (var query in new[] { Array.Empty<string>(), new[] { "base:" }, new[] { "base:allocation" } })
        {
            await raw.SendOptionAsync(NbdWire.OptListMetaContext, RawNbd.MetaQuery("disk", query));
            var r = await raw.ReadRepliesAsync(NbdWire.OptListMetaContext);
            Assert.Equal(new[] { NbdWire.RepMetaContext, NbdWire.RepAck }, r.Select(x => x.Type).ToArray());
            Assert.Equal("base:allocation", Encoding.ASCII.GetString(r[0].Data, 4, r[0].Data.Length - 4));
        }
        await raw.SendOptionAsync(NbdWire.OptListMetaContext, RawNbd.MetaQuery("disk", "qemu:dirty-bitmap:x", "other:thing"));
        Assert.Equal(new[] { NbdWire.RepAck }, (await raw.ReadRepliesAsync(NbdWire.OptListMetaContext)).Select(x => x.Type).ToArray());
        Assert.Equal(NbdWire.RepErrUnknown, await OptionAsync(raw, NbdWire.OptListMetaContext, RawNbd.MetaQuery("nope")));
        Assert.Equal(NbdWire.RepErrInvalid, await OptionAsync(raw, NbdWire.OptListMetaContext, [0, 0, 0, 4, (byte)'d']));

        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptStructuredReply, []));
        await raw.SendOptionAsync(NbdWire.OptSetMetaContext, RawNbd.MetaQuery("disk", "x:y", "base:allocation"));
        var set = await raw.ReadRepliesAsync(NbdWire.OptSetMetaContext);
        Assert.Equal(new[] { NbdWire.RepMetaContext, NbdWire.RepAck }, set.Select(x => x.Type).ToArray());
        Assert.Equal(NbdWire.BaseAllocationId, BinaryPrimitives.ReadUInt32BigEndian(set[0].Data));
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptGo, RawNbd.NameAndInfos("disk")));
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdBlockStatus, 0, 5, 0, 65536));
        var h = await raw.ReadExactAsync(20 + 12);
        Assert.Equal(NbdWire.ReplyTypeBlockStatus, BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(6)));
        Assert.Equal(NbdWire.BaseAllocationId, BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(20)));
        Assert.Equal(65536u, BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(24)));
        Assert.Equal(3u, BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(28)));
    }

    [Fact]
    public async Task MetaContextForAnotherExportIsNotCarriedIntoGo()
    {
        // Proves a meta context set for one export does not enable block status on a different export chosen by GO.
        var (s, raw) = await OpenAsync();
        await using var _ = s; await using var __ = raw;
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptStructuredReply, []));
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptSetMetaContext, RawNbd.MetaQuery("ro", "base:allocation")));
        Assert.Equal(NbdWire.RepAck, await OptionAsync(raw, NbdWire.OptGo, RawNbd.NameAndInfos("disk")));
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdBlockStatus, 0, 5, 0, 65536));
        var h = await raw.ReadExactAsync(20 + 6);
        Assert.Equal(NbdWire.ReplyTypeError, BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(6)));
        Assert.Equal(NbdErrno.EINVAL, BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(20)));
    }

    [Fact]
    public async Task ClientWithoutFixedNewstyleCanStillUseExportName()
    {
        // Proves an old-style client sending no flags and only EXPORT_NAME with simple replies is served.
        var (s, raw) = await OpenAsync(0);
        await using var _ = s; await using var __ = raw;
        await raw.SendOptionAsync(NbdWire.OptExportName, Encoding.UTF8.GetBytes("disk"));
        await raw.ReadExactAsync(134);
        await AssertSimpleReadWorksAsync(raw);
    }
}
