using System.Buffers.Binary;
using System.Text;
using Google.Protobuf;
using Tessera.Core.Protocol;
using Tessera.Nbd.Protocol;

namespace Tessera.Fuzz;

/// <summary>
/// The seed corpus: small, valid inputs per target that reach every option, command and call, written by
/// <c>Tessera.Fuzz --write-seeds fuzz/corpus</c> (scripts/fuzz.sh does this; the files are checked in).
/// </summary>
public static class Seeds
{
    public static int Write(string dir)
    {
        int n = 0;
        foreach (var (target, name, bytes) in All())
        {
            Directory.CreateDirectory(Path.Combine(dir, target));
            File.WriteAllBytes(Path.Combine(dir, target, name), bytes);
            n++;
        }
        return n;
    }

    public static IEnumerable<(string Target, string Name, byte[] Bytes)> All()
    {
        foreach (var (name, bytes) in Handshakes()) yield return ("handshake", name, bytes);
        foreach (var (name, bytes) in Transmissions()) yield return ("transmission", name, bytes);
        foreach (var (name, bytes) in ClientSessions()) yield return ("client", name, bytes);
        foreach (var (name, bytes) in AdminCalls()) yield return ("admin", name, bytes);
        foreach (var (name, bytes) in ParserInputs()) yield return ("parsers", name, bytes);
    }

    private const uint Fixed = NbdWire.ClientFlagFixedNewstyle;
    private const uint FixedNoZeroes = NbdWire.ClientFlagFixedNewstyle | NbdWire.ClientFlagNoZeroes;

    private static NbdWireBuilder Client(uint flags) => new NbdWireBuilder().Flags(flags);

    private static byte[] Disc(NbdWireBuilder b) => b.Request(NbdWire.CmdDisc, 0, 0, 0, 0).ToArray();

    private static IEnumerable<(string, byte[])> Handshakes()
    {
        yield return ("qemu-go-structured-base-allocation", Disc(Client(FixedNoZeroes)
            .Option(NbdWire.OptStructuredReply, [])
            .Option(NbdWire.OptListMetaContext, NbdWireBuilder.MetaQuery("f", NbdWire.BaseAllocation))
            .Option(NbdWire.OptSetMetaContext, NbdWireBuilder.MetaQuery("f", NbdWire.BaseAllocation))
            .Option(NbdWire.OptGo, NbdWireBuilder.NameAndInfos("f", NbdWire.InfoBlockSize))));
        yield return ("nbdinfo-list", Client(FixedNoZeroes)
            .Option(NbdWire.OptList, [])
            .Option(NbdWire.OptInfo, NbdWireBuilder.NameAndInfos("f", NbdWire.InfoName, NbdWire.InfoDescription, NbdWire.InfoBlockSize))
            .Option(NbdWire.OptInfo, NbdWireBuilder.NameAndInfos("ro", NbdWire.InfoExport))
            .Option(NbdWire.OptListMetaContext, NbdWireBuilder.MetaQuery("f"))
            .Option(NbdWire.OptAbort, []).ToArray());
        yield return ("old-export-name", Disc(Client(Fixed).Option(NbdWire.OptExportName, Encoding.UTF8.GetBytes("f"))));
        yield return ("go-no-infos", Disc(Client(Fixed).Option(NbdWire.OptGo, NbdWireBuilder.NameAndInfos("ro"))));
        yield return ("unknown-export-then-abort", Client(FixedNoZeroes)
            .Option(NbdWire.OptGo, NbdWireBuilder.NameAndInfos("nope"))
            .Option(NbdWire.OptAbort, []).ToArray());
        yield return ("starttls-extended-headers-then-go", Disc(Client(FixedNoZeroes)
            .Option(NbdWire.OptStartTls, [])
            .Option(NbdWire.OptExtendedHeaders, [])
            .Option(NbdWire.OptSetMetaContext, NbdWireBuilder.MetaQuery("plain", "base:", "qemu:dirty-bitmap:x"))
            .Option(NbdWire.OptGo, NbdWireBuilder.NameAndInfos("plain", NbdWire.InfoExport, 99))));
        yield return ("unknown-option-and-bad-length", Client(FixedNoZeroes)
            .Option(0x1234, [1, 2, 3])
            .Option(NbdWire.OptInfo, [0, 0, 0, 9, (byte)'f'])
            .Option(NbdWire.OptAbort, []).ToArray());
    }

    private static byte[] Payload(int n, byte seed)
    {
        var b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte)(seed + i);
        return b;
    }

    private static IEnumerable<(string, byte[])> Transmissions()
    {
        static byte[] Session(byte prefix, Func<NbdWireBuilder, NbdWireBuilder> requests) =>
            Disc(requests(new NbdWireBuilder().Raw([prefix])));

        string[] prefixNames = ["structured", "simple", "old-style-read-only", "no-capabilities"];
        for (byte p = 0; p < prefixNames.Length; p++)
        {
            yield return ($"{prefixNames[p]}-every-command", Session(p, b => b
                .Request(NbdWire.CmdWrite, NbdWire.CmdFlagFua, 1, 0, 512, Payload(512, 7))
                .Request(NbdWire.CmdRead, 0, 2, 0, 4096)
                .Request(NbdWire.CmdFlush, 0, 3, 0, 0)
                .Request(NbdWire.CmdTrim, 0, 4, 65536, 65536)
                .Request(NbdWire.CmdWriteZeroes, NbdWire.CmdFlagNoHole, 5, 131072, 8192)
                .Request(NbdWire.CmdCache, 0, 6, 0, 4096)
                .Request(NbdWire.CmdBlockStatus, 0, 7, 0, NbdServerTargets.ExportBytes)));
        }
        yield return ("read-df-and-sparse", Session(0, b => b
            .Request(NbdWire.CmdWrite, 0, 1, 4096, 4096, Payload(4096, 1))
            .Request(NbdWire.CmdRead, NbdWire.CmdFlagDf, 2, 0, 131072)
            .Request(NbdWire.CmdRead, 0, 3, 0, 131072)));
        yield return ("block-status-req-one-and-fast-zero", Session(0, b => b
            .Request(NbdWire.CmdBlockStatus, NbdWire.CmdFlagReqOne, 1, 0, 65536)
            .Request(NbdWire.CmdWriteZeroes, NbdWire.CmdFlagFastZero, 2, 0, 65536)));
        yield return ("errors-out-of-range-and-bad-flags", Session(0, b => b
            .Request(NbdWire.CmdRead, 0, 1, NbdServerTargets.ExportBytes - 512, 4096)
            .Request(NbdWire.CmdWrite, 0x40, 2, 0, 16, Payload(16, 3))
            .Request(9, 0, 3, 0, 0)
            .Request(NbdWire.CmdRead, 0, 4, 0, NbdServerTargets.MaxRequestBytes + 1)));
        yield return ("max-size-requests", Session(0, b => b
            .Request(NbdWire.CmdWrite, 0, 1, 0, NbdServerTargets.MaxRequestBytes, new byte[NbdServerTargets.MaxRequestBytes])
            .Request(NbdWire.CmdRead, 0, 2, 0, NbdServerTargets.MaxRequestBytes)));
        yield return ("no-disc", new NbdWireBuilder().Raw([1]).Request(NbdWire.CmdRead, 0, 1, 0, 512).ToArray());
    }

    /// <summary>Client input: [options byte][u16 handshake length][handshake bytes][reply bytes].</summary>
    private static byte[] ClientInput(byte options, byte[] handshake, byte[] replies)
    {
        var b = new byte[3 + handshake.Length + replies.Length];
        b[0] = options;
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(1), (ushort)handshake.Length);
        handshake.CopyTo(b, 3);
        replies.CopyTo(b, 3 + handshake.Length);
        return b;
    }

    private static byte[] InfoExport(ulong size, ushort flags)
    {
        var b = new NbdWireBuilder().U16(NbdWire.InfoExport).U64(size).U16(flags);
        return b.ToArray();
    }

    private static byte[] InfoBlockSize(uint min, uint preferred, uint max) =>
        new NbdWireBuilder().U16(NbdWire.InfoBlockSize).U32(min).U32(preferred).U32(max).ToArray();

    private const ushort AllFlags = NbdWire.TxHasFlags | NbdWire.TxSendFlush | NbdWire.TxSendFua | NbdWire.TxSendTrim
        | NbdWire.TxSendWriteZeroes | NbdWire.TxSendDf | NbdWire.TxSendCache | NbdWire.TxSendFastZero | NbdWire.TxCanMultiConn;

    private static NbdWireBuilder GoReplies(NbdWireBuilder b, uint maxBlock = 32 << 20) => b
        .OptionReply(NbdWire.OptGo, NbdWire.RepInfo, InfoExport(1 << 20, AllFlags))
        .OptionReply(NbdWire.OptGo, NbdWire.RepInfo, InfoBlockSize(1, 4096, maxBlock))
        .OptionReply(NbdWire.OptGo, NbdWire.RepAck, []);

    private static IEnumerable<(string, byte[])> ClientSessions()
    {
        var structuredHandshake = GoReplies(new NbdWireBuilder().Greeting()
            .OptionReply(NbdWire.OptStructuredReply, NbdWire.RepAck, [])
            .OptionReply(NbdWire.OptSetMetaContext, NbdWire.RepMetaContext, new NbdWireBuilder().U32(NbdWire.BaseAllocationId).Raw(Encoding.ASCII.GetBytes(NbdWire.BaseAllocation)).ToArray())
            .OptionReply(NbdWire.OptSetMetaContext, NbdWire.RepAck, [])).ToArray();
        var structuredReplies = new NbdWireBuilder()
            .Chunk(NbdWire.ReplyFlagDone, NbdWire.ReplyTypeOffsetData, 1, new NbdWireBuilder().U64(0).Raw(Payload(4096, 9)).ToArray())
            .Chunk(0, NbdWire.ReplyTypeOffsetData, 2, new NbdWireBuilder().U64(65536).Raw(Payload(4096, 5)).ToArray())
            .Chunk(0, NbdWire.ReplyTypeOffsetHole, 2, new NbdWireBuilder().U64(65536 + 4096).U32(131072 - 4096).ToArray())
            .Chunk(NbdWire.ReplyFlagDone, NbdWire.ReplyTypeNone, 2, [])
            .SimpleReply(0, 3)
            .SimpleReply(0, 4)
            .SimpleReply(0, 5)
            .Chunk(NbdWire.ReplyFlagDone, NbdWire.ReplyTypeError, 6, new NbdWireBuilder().U32(NbdErrno.EINVAL).U16(0).ToArray())
            .SimpleReply(0, 7)
            .Chunk(NbdWire.ReplyFlagDone, NbdWire.ReplyTypeBlockStatus, 8,
                new NbdWireBuilder().U32(NbdWire.BaseAllocationId).U32(65536).U32(0).U32((1 << 20) - 65536).U32(3).ToArray())
            .ToArray();
        yield return ("structured-base-allocation", ClientInput(3, structuredHandshake, structuredReplies));

        var simpleHandshake = GoReplies(new NbdWireBuilder().Greeting()).ToArray();
        var simpleReplies = new NbdWireBuilder()
            .SimpleReply(0, 1, Payload(4096, 1))
            .SimpleReply(0, 2, Payload(131072, 2))
            .SimpleReply(NbdErrno.EPERM, 3)
            .SimpleReply(0, 4).SimpleReply(0, 5).SimpleReply(0, 6).SimpleReply(0, 7).SimpleReply(NbdErrno.EINVAL, 8)
            .ToArray();
        yield return ("simple-replies", ClientInput(0, simpleHandshake, simpleReplies));

        var oldServer = new NbdWireBuilder().Greeting(NbdWire.FlagFixedNewstyle)
            .OptionReply(NbdWire.OptStructuredReply, NbdWire.RepErrUnsup, [])
            .OptionReply(NbdWire.OptGo, NbdWire.RepErrUnsup, [])
            .U64(1 << 20).U16(NbdWire.TxHasFlags | NbdWire.TxSendFlush).Raw(new byte[124]).ToArray();
        yield return ("old-server-export-name", ClientInput(1, oldServer, new NbdWireBuilder().SimpleReply(0, 1, Payload(4096, 3)).ToArray()));

        var smallBlocks = GoReplies(new NbdWireBuilder().Greeting().OptionReply(NbdWire.OptStructuredReply, NbdWire.RepAck, []), maxBlock: 65536).ToArray();
        var splitReplies = new NbdWireBuilder()
            .Chunk(NbdWire.ReplyFlagDone, NbdWire.ReplyTypeOffsetHole, 1, new NbdWireBuilder().U64(0).U32(4096).ToArray())
            .Chunk(NbdWire.ReplyFlagDone, NbdWire.ReplyTypeOffsetHole, 2, new NbdWireBuilder().U64(65536).U32(65536).ToArray())
            .Chunk(NbdWire.ReplyFlagDone, NbdWire.ReplyTypeOffsetHole, 3, new NbdWireBuilder().U64(131072).U32(65536).ToArray())
            .ToArray();
        yield return ("small-max-block-split-read", ClientInput(1, smallBlocks, splitReplies));

        yield return ("refused-export", ClientInput(1, new NbdWireBuilder().Greeting()
            .OptionReply(NbdWire.OptStructuredReply, NbdWire.RepAck, [])
            .OptionReply(NbdWire.OptGo, NbdWire.RepErrUnknown, Encoding.UTF8.GetBytes("no such export")).ToArray(), []));
    }

    private static byte[] Calls(params (string Method, IMessage Request)[] calls)
    {
        var b = new MemoryStream();
        foreach (var (method, request) in calls)
        {
            var bytes = request.ToByteArray();
            if (bytes.Length > 255) throw new InvalidOperationException("seed call too long");
            b.WriteByte((byte)Array.IndexOf(AdminTarget.Methods, method));
            b.WriteByte((byte)bytes.Length);
            b.Write(bytes);
        }
        return b.ToArray();
    }

    private static IEnumerable<(string, byte[])> AdminCalls()
    {
        yield return ("list-everything", Calls(("ListContainers", new ListContainersRequest()), ("ListDisks", new ListDisksRequest()),
            ("ListHosts", new ListHostsRequest()), ("GetStatus", new StatusRequest()), ("ListJobs", new ListJobsRequest()),
            ("ListSnapshots", new ListSnapshotsRequest()), ("GetDiskMap", new DiskRef { Name = "d1" }), ("GetDiskSharing", new DiskRef { Name = "d2" }),
            ("GetDiskLocations", new DiskRef { Name = "d1" }), ("GetDisk", new DiskRef { Name = "d2@s1" })));
        yield return ("disk-lifecycle", Calls(("CreateDisk", new CreateDiskRequest { Name = "n1", SizeBytes = 16 << 20 }),
            ("PresentDisk", new PresentRequest { Disk = "n1", Host = "h2", ReadOnly = true }), ("UnpresentDisk", new UnpresentRequest { Disk = "n1", Host = "h2" }),
            ("ResizeDisk", new ResizeDiskRequest { Name = "n1", SizeBytes = 32 << 20 }), ("DeleteDisk", new DiskRef { Name = "n1" })));
        yield return ("snapshot-clone", Calls(("CreateSnapshot", new CreateSnapshotRequest { Disk = "d1", Name = "s2" }),
            ("CloneDisk", new CloneDiskRequest { Source = "d1@s2", Name = "k1" }), ("DeleteSnapshot", new SnapshotRef { Disk = "d1", Name = "s2" }),
            ("ResizeDisk", new ResizeDiskRequest { Name = "d2", SizeBytes = 1 << 20, Force = true })));
        yield return ("containers-and-jobs", Calls(("AddContainer", new AddContainerRequest { Name = "c3", Uri = "file:///tmp/c3.img", SizeBytes = 16 << 20 }),
            ("MigrateDisk", new MigrateDiskRequest { Disk = "d1", To = "c2" }), ("GetJob", new JobRef { Id = 1 }),
            ("FailContainer", new FailContainerRequest { Name = "c1", Reason = "fuzz" }), ("EvacuateContainer", new EvacuateRequest { Container = "c1" }),
            ("RepairContainer", new ContainerRef { Name = "c1" }), ("RemoveContainer", new ContainerRef { Name = "c3" })));
        yield return ("invalid-requests", Calls(("CreateDisk", new CreateDiskRequest { Name = "bad name", SizeBytes = 0 }),
            ("CreateDisk", new CreateDiskRequest { Name = "big", SizeBytes = ulong.MaxValue, SegmentSizeBytes = 3 }),
            ("AddContainer", new AddContainerRequest { Name = "n", Uri = "nbd://example.com/x" }),
            ("AddContainer", new AddContainerRequest { Name = "r", Uri = "relative/path" }),
            ("CloneDisk", new CloneDiskRequest { Source = "d1", Name = "x" }), ("GetJob", new JobRef { Id = ulong.MaxValue })));
    }

    private static IEnumerable<(string, byte[])> ParserInputs()
    {
        (int Parser, string Text)[] inputs =
        [
            (0, "512"), (0, "4KiB"), (0, " 8 GiB "), (0, "1TB"), (0, "9223372036854775807"), (0, "16P"),
            (1, "file:///var/lib/tessera/c1.img"), (1, "nbd://host:10809/export"), (1, "nbd+unix:///e?socket=/run/nbd.sock"), (1, "file://host/x"),
            (1, "nbd://[::1]:1/x%20y"),
            (2, "127.0.0.1:7400"), (2, "[::1]:0"), (2, "localhost:65535"), (2, "*:1"),
            (3, "127.0.0.1:0"), (3, "[::]:7400"),
            (4, "disk-1.a_b"), (4, ""),
            (5, "http://127.0.0.1:7400"), (5, "127.0.0.1:7400"), (5, "https://[::1]:1/path"),
        ];
        for (int i = 0; i < inputs.Length; i++)
        {
            var (parser, text) = inputs[i];
            yield return ($"{ParserTarget.Parsers[parser]}-{i:D2}", [(byte)parser, .. Encoding.UTF8.GetBytes(text)]);
        }
    }
}
