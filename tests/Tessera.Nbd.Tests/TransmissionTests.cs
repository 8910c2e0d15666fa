using System.Buffers.Binary;

namespace Tessera.Nbd.Tests;

public class TransmissionTests
{
    private const ushort AllWriteFlags = NbdWire.TxSendFlush | NbdWire.TxSendFua | NbdWire.TxSendTrim | NbdWire.TxSendWriteZeroes
        | NbdWire.TxSendFastZero | NbdWire.TxSendCache | NbdWire.TxCanMultiConn;

    [Theory]
    [InlineData(false, int.MaxValue, true)]
    [InlineData(true, int.MaxValue, true)]
    [InlineData(true, 4096, true)]
    [InlineData(true, int.MaxValue, false)]
    [InlineData(false, 4096, false)]
    public async Task WritesLandAtTheirOffsetAndReadBack(bool structured, int inlineMaxBytes, bool threadPerConnection)
    {
        // Proves self-describing data written at several offsets and sizes (incl. unaligned and > copy threshold) reads back in place, with simple and structured replies, inline or dispatched, on blocking or async sockets.
        await using var s = await TestServer.StartAsync(o =>
        {
            o.InlineMaxBytes = inlineMaxBytes;
            o.ThreadPerConnection = threadPerConnection;
        });
        await using var c = await s.ConnectAsync(structured: structured);
        Assert.Equal(structured, c.StructuredReplies);
        (long Offset, int Length)[] cases = [(0, 4096), (12345, 777), (1 << 20, 256 * 1024), (3 << 20, 4 << 20), (TestServer.DiskBytes - 512, 512)];
        foreach (var (offset, length) in cases)
            Assert.Equal(0u, await c.WriteAsync(offset, Pattern.Make(offset, length, 3)));
        var model = s.Disk.Snapshot();
        foreach (var (offset, length) in cases)
        {
            Assert.Equal(Pattern.Make(offset, length, 3), model.AsSpan((int)offset, length).ToArray());
            var back = new byte[length];
            Assert.Equal(0u, await c.ReadAsync(offset, back));
            Assert.Equal(Pattern.Make(offset, length, 3), back);
        }
    }

    [Fact]
    public async Task ClientSplitsTransfersLargerThanTheMaximumBlockSize()
    {
        // Proves the client cuts a transfer above the advertised maximum block size into legal requests that land in place.
        await using var s = await TestServer.StartAsync(o => o.MaxRequestBytes = 1 << 20);
        await using var c = await s.ConnectAsync();
        Assert.Equal(1u << 20, c.MaxBlockBytes);
        var data = Pattern.Make(4096, (3 << 20) + 100, 12);
        Assert.Equal(0u, await c.WriteAsync(4096, data));
        Assert.Equal(data, s.Disk.Snapshot().AsSpan(4096, data.Length).ToArray());
        var back = new byte[data.Length];
        Assert.Equal(0u, await c.ReadAsync(4096, back));
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task TransmissionFlagsFollowCapabilitiesAndStructuredReplies()
    {
        // Proves the advertised transmission flags come from the export's capabilities and read-only bit, and DF only with structured replies.
        await using var s = await TestServer.StartAsync();
        await using var rw = await s.ConnectAsync(structured: true);
        Assert.True(rw.Has(AllWriteFlags | NbdWire.TxSendDf | NbdWire.TxHasFlags));
        Assert.False(rw.ReadOnly);
        await using var simple = await s.ConnectAsync(structured: false);
        Assert.False(simple.Has(NbdWire.TxSendDf));
        await using var ro = await s.ConnectAsync("ro");
        Assert.True(ro.ReadOnly);
        Assert.False(ro.Has(NbdWire.TxSendTrim));
        Assert.False(ro.Has(NbdWire.TxSendWriteZeroes));
        Assert.Equal(4L * 1024 * 1024, ro.SizeBytes);
        Assert.Equal(32u * 1024 * 1024, ro.MaxBlockBytes);
    }

    [Fact]
    public async Task StructuredReadOfSparseRangeSendsHolesAndCorrectData()
    {
        // Proves a read across written and never-written blocks returns the data and zeros (the model leaves 0xEE garbage in holes, so hole bytes sent as data would show).
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync();
        var block = Pattern.Make(65536, 65536, 9);
        Assert.Equal(0u, await c.WriteAsync(65536, block));
        var back = new byte[4 * 65536];
        Assert.Equal(0u, await c.ReadAsync(0, back));
        Assert.All(back.AsSpan(0, 65536).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(block, back.AsSpan(65536, 65536).ToArray());
        Assert.All(back.AsSpan(131072).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task RawStructuredReadUsesHoleChunksUnlessDontFragment()
    {
        // Proves on the wire: a sparse structured read carries OFFSET_HOLE chunks, and with DF it is one OFFSET_DATA chunk of zero-filled data.
        await using var s = await TestServer.StartAsync();
        await using (var c = await s.ConnectAsync()) Assert.Equal(0u, await c.WriteAsync(65536, Pattern.Make(65536, 100, 1)));
        await using var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.GreetAsync();
        await raw.SendOptionAsync(NbdWire.OptStructuredReply, []);
        Assert.Equal(NbdWire.RepAck, (await raw.ReadRepliesAsync(NbdWire.OptStructuredReply))[0].Type);
        await raw.SendOptionAsync(NbdWire.OptGo, RawNbd.NameAndInfos("disk"));
        Assert.Equal(NbdWire.RepAck, (await raw.ReadRepliesAsync(NbdWire.OptGo))[^1].Type);

        async Task<List<(ushort Type, ushort Flags, byte[] Data)>> ReadChunks(ulong cookie)
        {
            var chunks = new List<(ushort, ushort, byte[])>();
            while (true)
            {
                var h = await raw.ReadExactAsync(20);
                Assert.Equal(NbdWire.StructuredReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(h));
                Assert.Equal(cookie, BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8)));
                ushort flags = BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(4)), type = BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(6));
                chunks.Add((type, flags, await raw.ReadExactAsync((int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16)))));
                if ((flags & NbdWire.ReplyFlagDone) != 0) return chunks;
            }
        }

        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdRead, 0, 7, 0, 3 * 65536));
        var sparse = await ReadChunks(7);
        Assert.Contains(sparse, ch => ch.Type == NbdWire.ReplyTypeOffsetHole);
        var data = Assert.Single(sparse, ch => ch.Type == NbdWire.ReplyTypeOffsetData);
        Assert.Equal(65536UL, BinaryPrimitives.ReadUInt64BigEndian(data.Data));
        Assert.Equal(Pattern.Make(65536, 100, 1), data.Data.AsSpan(8, 100).ToArray());

        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdRead, NbdWire.CmdFlagDf, 8, 0, 3 * 65536));
        var whole = Assert.Single(await ReadChunks(8));
        Assert.Equal(NbdWire.ReplyTypeOffsetData, whole.Type);
        Assert.Equal(8 + 3 * 65536, whole.Data.Length);
        Assert.All(whole.Data.AsSpan(8, 65536).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(Pattern.Make(65536, 100, 1), whole.Data.AsSpan(8 + 65536, 100).ToArray());
    }

    [Fact]
    public async Task DontFragmentReadThroughClientReturnsFullData()
    {
        // Proves the DF flag is accepted with structured replies and refused (EINVAL) without them.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync();
        Assert.Equal(0u, await c.WriteAsync(4096, Pattern.Make(4096, 4096, 2)));
        var back = new byte[8192];
        Assert.Equal(0u, await c.ReadAsync(0, back, dontFragment: true));
        Assert.Equal(Pattern.Make(4096, 4096, 2), back.AsSpan(4096).ToArray());
        await using var simple = await s.ConnectAsync(structured: false);
        Assert.Equal(NbdErrno.EINVAL, await simple.ReadAsync(0, back, dontFragment: true));
    }

    [Fact]
    public async Task FuaFlushAndCacheReachTheExport()
    {
        // Proves FUA writes, FLUSH and CACHE are passed to the export.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync();
        Assert.Equal(0u, await c.WriteAsync(0, Pattern.Make(0, 512, 1), fua: true));
        Assert.Equal(0u, await c.FlushAsync());
        Assert.Equal(0u, await c.CacheAsync(0, 65536));
        Assert.Equal(1, s.Disk.FuaWrites);
        Assert.Equal(1, s.Disk.Flushes);
        Assert.Equal(1, s.Disk.Caches);
    }

    [Fact]
    public async Task TrimAndWriteZeroesZeroTheRangeAndShowInBlockStatus()
    {
        // Proves TRIM punches holes, WRITE_ZEROES with NO_HOLE keeps blocks allocated, and block status reports each state exactly.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync(baseAllocation: true);
        Assert.True(c.BaseAllocation);
        Assert.Equal(0u, await c.WriteAsync(0, Pattern.Make(0, 4 * 65536, 4)));
        Assert.Equal(0u, await c.TrimAsync(65536, 65536));
        Assert.Equal(0u, await c.WriteZeroesAsync(2 * 65536, 65536, noHole: true));
        var back = new byte[4 * 65536];
        Assert.Equal(0u, await c.ReadAsync(0, back));
        Assert.Equal(Pattern.Make(0, 65536, 4), back.AsSpan(0, 65536).ToArray());
        Assert.All(back.AsSpan(65536, 2 * 65536).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(Pattern.Make(3 * 65536, 65536, 4), back.AsSpan(3 * 65536).ToArray());

        var extents = new NbdExtentList();
        Assert.Equal(0u, await c.BlockStatusAsync(0, 5 * 65536, extents));
        Assert.Equal(4, extents.Count);
        Assert.Equal(new NbdExtent(0, 65536, NbdExtentFlags.Data), extents[0]);
        Assert.Equal(new NbdExtent(65536, 65536, NbdExtentFlags.Hole | NbdExtentFlags.Zero), extents[1]);
        Assert.Equal(new NbdExtent(2 * 65536, 2 * 65536, NbdExtentFlags.Data), extents[2]);
        Assert.Equal(new NbdExtent(4 * 65536, 65536, NbdExtentFlags.Hole | NbdExtentFlags.Zero), extents[3]);

        Assert.Equal(0u, await c.WriteZeroesAsync(2 * 65536, 65536));
        Assert.True(s.Disk.IsHole(2 * 65536));
    }

    [Fact]
    public async Task BlockStatusReqOneReturnsExactlyOneExtentWithinTheRange()
    {
        // Proves REQ_ONE yields one extent no longer than the request, and that extents never run past the request.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync(baseAllocation: true);
        Assert.Equal(0u, await c.WriteAsync(65536, new byte[65536]));
        var one = new NbdExtentList();
        Assert.Equal(0u, await c.BlockStatusAsync(1000, 200_000, one, reqOne: true));
        Assert.Equal(1, one.Count);
        Assert.Equal(new NbdExtent(1000, 65536 - 1000, NbdExtentFlags.Hole | NbdExtentFlags.Zero), one[0]);
        var tail = new NbdExtentList();
        Assert.Equal(0u, await c.BlockStatusAsync(65536 + 10, 20, tail));
        Assert.Equal(new NbdExtent(65546, 20, NbdExtentFlags.Data), Assert.Single(Enumerable.Range(0, tail.Count).Select(i => tail[i])));
    }

    [Fact]
    public async Task BlockStatusWithoutMetaContextIsInvalid()
    {
        // Proves BLOCK_STATUS is refused with EINVAL unless base:allocation was negotiated.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync(baseAllocation: false);
        Assert.Equal(NbdErrno.EINVAL, await c.BlockStatusAsync(0, 4096, new NbdExtentList()));
    }

    [Fact]
    public async Task FastZeroIsNotSupportedWhenTheExportSaysZeroingIsExpensive()
    {
        // Proves FAST_ZERO is passed through: ENOTSUP from an export that would have to write, success from one that can zero cheaply.
        await using var s = await TestServer.StartAsync();
        await using var slow = await s.ConnectAsync("nofast");
        Assert.Equal(NbdErrno.ENOTSUP, await slow.WriteZeroesAsync(0, 65536, fastZero: true));
        Assert.Equal(0u, await slow.WriteZeroesAsync(0, 65536));
        await using var fast = await s.ConnectAsync();
        Assert.Equal(0u, await fast.WriteZeroesAsync(0, 65536, fastZero: true));
    }

    [Fact]
    public async Task ReadOnlyExportRefusesChangesWithEperm()
    {
        // Proves writes, trims and write-zeroes to a read-only export get EPERM and leave the data unchanged, while reads work.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync("ro");
        Assert.Equal(NbdErrno.EPERM, await c.WriteAsync(0, new byte[] { 1, 2, 3 }));
        Assert.Equal(NbdErrno.EPERM, await c.SendCommandAsync(NbdWire.CmdTrim, 0, 0, 4096));
        Assert.Equal(NbdErrno.EPERM, await c.SendCommandAsync(NbdWire.CmdWriteZeroes, 0, 0, 4096));
        Assert.Equal(0u, await c.ReadAsync(0, new byte[4096]));
        Assert.All(s.ReadOnlyDisk.Snapshot().AsSpan(0, 3).ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task OutOfRangeAndMalformedRequestsGetEinvalAndTheConnectionGoesOn()
    {
        // Proves range overflow, reads beyond the end, oversized reads, unknown commands and misplaced flags get EINVAL without touching the export, and the connection keeps working.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync();
        int before = s.Disk.OperationsStarted;
        Assert.Equal(NbdErrno.EINVAL, await c.ReadAsync(TestServer.DiskBytes - 10, new byte[11]));
        Assert.Equal(NbdErrno.EINVAL, await c.WriteAsync(TestServer.DiskBytes, new byte[1]));
        Assert.Equal(NbdErrno.EINVAL, await c.SendCommandAsync(NbdWire.CmdRead, 0, -1, 4096));
        Assert.Equal(NbdErrno.EINVAL, await c.SendCommandAsync(NbdWire.CmdTrim, 0, long.MaxValue, 10));
        Assert.Equal(NbdErrno.EINVAL, await c.SendCommandAsync(NbdWire.CmdRead, 0, 0, 33 * 1024 * 1024));
        Assert.Equal(NbdErrno.EINVAL, await c.SendCommandAsync(99, 0, 0, 0));
        Assert.Equal(NbdErrno.EINVAL, await c.SendCommandAsync(NbdWire.CmdWrite, NbdWire.CmdFlagReqOne, 0, 1, new byte[1]));
        Assert.Equal(NbdErrno.EINVAL, await c.SendCommandAsync(NbdWire.CmdFlush, 0x8000, 0, 0));
        Assert.Equal(before, s.Disk.OperationsStarted);
        Assert.Equal(0u, await c.ReadAsync(0, new byte[16]));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task ManyConcurrentRequestsOnOneConnectionAllLandCorrectly(bool threadPerConnection)
    {
        // Proves hundreds of overlapping requests on one connection are each answered to the right cookie and placed at the right offset.
        await using var s = await TestServer.StartAsync(o => o.ThreadPerConnection = threadPerConnection);
        await using var c = await s.ConnectAsync();
        var writes = Enumerable.Range(0, 300).Select(i => c.WriteAsync(i * 8192L, Pattern.Make(i * 8192L, 8192, 6)).AsTask());
        Assert.All(await Task.WhenAll(writes), e => Assert.Equal(0u, e));
        var reads = Enumerable.Range(0, 300).Select(async i =>
        {
            var b = new byte[8192];
            Assert.Equal(0u, await c.ReadAsync(i * 8192L, b));
            return (i, b);
        });
        foreach (var (i, b) in await Task.WhenAll(reads)) Assert.Equal(Pattern.Make(i * 8192L, 8192, 6), b);
    }

    [Fact]
    public async Task A_SlowRequestDoesNotHoldBackLaterOnesOnTheSameConnection()
    {
        // Proves requests on one connection run concurrently and replies go out in completion order, not request order.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync();
        s.Disk.GateOnlyReadsAt = 1 << 20;
        s.Disk.Gate = new TaskCompletionSource();
        var slow = c.ReadAsync(1 << 20, new byte[4096]).AsTask();
        Assert.Equal(0u, await c.ReadAsync(0, new byte[4096]).AsTask().WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Equal(0u, await c.WriteAsync(8192, new byte[512]).AsTask().WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.False(slow.IsCompleted);
        s.Disk.Gate.SetResult();
        Assert.Equal(0u, await slow.WaitAsync(TimeSpan.FromSeconds(20)));
    }

    [Fact]
    public async Task InFlightRequestsPerConnectionAreBounded()
    {
        // Proves the server stops reading new requests while the in-flight bound is reached, and resumes when one completes.
        await using var s = await TestServer.StartAsync(o => o.MaxInFlightPerConnection = 2);
        await using var c = await s.ConnectAsync();
        s.Disk.Gate = new TaskCompletionSource();
        var reads = Enumerable.Range(0, 5).Select(i => c.ReadAsync(i * 4096L, new byte[4096]).AsTask()).ToArray();
        while (s.Disk.OperationsStarted < 2) await Task.Delay(5);
        await Task.Delay(200);
        Assert.Equal(2, s.Disk.OperationsStarted);
        s.Disk.Gate.SetResult();
        Assert.All(await Task.WhenAll(reads).WaitAsync(TimeSpan.FromSeconds(20)), e => Assert.Equal(0u, e));
        Assert.Equal(5, s.Disk.OperationsStarted);
    }

    [Fact]
    public async Task ClosedExportAnswersPendingRequestsWithEshutdownAndEndsTheConnection()
    {
        // Proves that when the export's Closed token fires, a request waiting inside the export gets ESHUTDOWN and the connection ends.
        await using var s = await TestServer.StartAsync();
        await using var c = await s.ConnectAsync("nofast");
        s.NoFastZero.Gate = new TaskCompletionSource();
        var pending = c.ReadAsync(0, new byte[4096]).AsTask();
        while (s.NoFastZero.OperationsStarted == 0) await Task.Delay(5);
        s.NoFastZero.Close();
        Assert.Equal(NbdErrno.ESHUTDOWN, await pending.WaitAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(2004, "export closed");
        await Assert.ThrowsAsync<NbdClientException>(async () => await c.ReadAsync(0, new byte[1]));
    }

    [Fact]
    public async Task StopLetsInFlightRequestsFinishThenCancelsThem()
    {
        // Proves StopAsync ends every connection: a request still stuck in the export after the grace period is answered ESHUTDOWN.
        await using var s = await TestServer.StartAsync(o => o.ShutdownGracePeriod = TimeSpan.FromMilliseconds(200));
        await using var c = await s.ConnectAsync();
        s.Disk.Gate = new TaskCompletionSource();
        var pending = c.WriteAsync(0, new byte[512]).AsTask();
        while (s.Disk.OperationsStarted == 0) await Task.Delay(5);
        await s.Server.StopAsync().WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(NbdErrno.ESHUTDOWN, await pending.WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Equal(0, s.Server.ActiveConnections);
    }

    [Fact]
    public async Task StopLetsAnInFlightWriteThatFinishesInTimeSucceed()
    {
        // Proves a request that completes within the stop grace period is answered normally and its data lands.
        await using var s = await TestServer.StartAsync(o => o.ShutdownGracePeriod = TimeSpan.FromSeconds(15));
        await using var c = await s.ConnectAsync();
        s.Disk.Gate = new TaskCompletionSource();
        var pending = c.WriteAsync(4096, Pattern.Make(4096, 512, 9)).AsTask();
        while (s.Disk.OperationsStarted == 0) await Task.Delay(5);
        var stopping = s.Server.StopAsync();
        Assert.False(stopping.IsCompleted);
        s.Disk.Gate.SetResult();
        Assert.Equal(0u, await pending.WaitAsync(TimeSpan.FromSeconds(20)));
        await stopping.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(Pattern.Make(4096, 512, 9), s.Disk.Snapshot().AsSpan(4096, 512).ToArray());
    }

    [Fact]
    public async Task InMemoryTransportServesTheSameProtocol()
    {
        // Proves the protocol core runs over any duplex stream, with no socket involved.
        var export = new MemoryExport("mem", 1 << 20);
        await using var server = new NbdServer(new MemoryCatalog(export), new NbdServerOptions { TcpEndPoint = null });
        var (a, b) = DuplexPipeStream.CreatePair();
        var serving = server.ServeAsync(b);
        await using var c = await NbdClient.ConnectAsync(a, "mem", new NbdClientOptions { BaseAllocation = true });
        Assert.Equal(0u, await c.WriteAsync(4096, Pattern.Make(4096, 4096, 8)));
        var back = new byte[8192];
        Assert.Equal(0u, await c.ReadAsync(0, back));
        Assert.Equal(Pattern.Make(4096, 4096, 8), back.AsSpan(4096).ToArray());
        await c.DisconnectAsync();
        Assert.True(await serving.WaitAsync(TimeSpan.FromSeconds(20)));
    }

    [Fact]
    public async Task BlockStatusOnExportWithoutAllocationMapReportsAllData()
    {
        // Proves an export without the BlockStatus capability is never asked for extents: the server reports the range as data.
        var export = new MemoryExport("plain", 1 << 20, caps: NbdExportCapabilities.Flush);
        await using var server = new NbdServer(new MemoryCatalog(export), new NbdServerOptions { TcpEndPoint = null });
        var (a, b) = DuplexPipeStream.CreatePair();
        var serving = server.ServeAsync(b);
        await using var c = await NbdClient.ConnectAsync(a, "plain", new NbdClientOptions { BaseAllocation = true });
        var extents = new NbdExtentList();
        Assert.Equal(0u, await c.BlockStatusAsync(0, 3 * 65536, extents));
        Assert.Equal(new NbdExtent(0, 3 * 65536, NbdExtentFlags.Data), extents[0]);
        Assert.Equal(1, extents.Count);
        Assert.Equal(0, export.OperationsStarted);
        await c.DisconnectAsync();
        await serving.WaitAsync(TimeSpan.FromSeconds(20));
    }

    [Fact]
    public async Task UnixSocketListenerServesClients()
    {
        // Proves the optional unix socket listener serves the same exports.
        string path = Path.Combine(Path.GetTempPath(), $"tessera-nbd-{Guid.NewGuid():N}.sock");
        await using var s = await TestServer.StartAsync(o => o.UnixSocketPath = path);
        await using var c = await NbdClient.ConnectUnixAsync(path, "disk");
        Assert.Equal(0u, await c.WriteAsync(0, Pattern.Make(0, 4096, 5)));
        Assert.Equal(Pattern.Make(0, 4096, 5), s.Disk.Snapshot().AsSpan(0, 4096).ToArray());
    }
}
