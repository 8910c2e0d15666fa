using System.Buffers.Binary;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd.Tests;

/// <summary>
/// Reads sent from file mappings (NbdConnection.MappedReads.cs), over a real socket: the bytes match the data for simple
/// and structured replies, aligned or not, across many non-contiguous ranges; each held read is ended exactly once; a
/// client that does not read its replies does not keep the ranges held; a read the export can no longer map when its
/// reply is due is read through the export, and its failure is an error reply; the threshold and the off switch hold;
/// and a mapping that cannot deliver what the reply header promised ends the connection instead of sending short data.
/// </summary>
[Collection(nameof(AllocationTests))] // measures allocations process-wide in one test
public sealed class MappedReadTests : IDisposable
{
    private const int Chunk = 64 << 10;
    private const int Chunks = 64; // a 4 MiB export
    private readonly string _path = Path.Combine(Path.GetTempPath(), "tessera-mappedread-" + Guid.NewGuid().ToString("N"));

    private readonly Xunit.Abstractions.ITestOutputHelper _output;

    public MappedReadTests(Xunit.Abstractions.ITestOutputHelper output)
    {
        _output = output;
        // The file holds the export's chunks in a shuffled order, each 8-byte word naming its export offset.
        var file = new byte[Chunks * Chunk];
        for (int c = 0; c < Chunks; c++)
        {
            long fileChunk = FileChunkOf(c);
            for (int i = 0; i < Chunk; i += 8)
                BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan((int)(fileChunk * Chunk + i)), ExpectedWord((long)c * Chunk + i));
        }
        File.WriteAllBytes(_path, file);
    }

    public void Dispose() => File.Delete(_path);

    private static long FileChunkOf(long exportChunk) => (exportChunk * 37 + 11) % Chunks; // 37 is prime to 64: a permutation
    private static ulong ExpectedWord(long exportOffset) => (ulong)exportOffset * 0x9E3779B97F4A7C15UL;

    private sealed class ShuffledFileExport : INbdExport, INbdMappedReadExport
    {
        private readonly SafeFileHandle _file;
        private readonly FileMapping _mapping;
        public int Begun, Ended, BufferedReads, Refused;
        /// <summary>This export chunk maps past the end of the file: the mapping covers it, the file does not.</summary>
        public long BrokenChunk = -1;
        /// <summary>When set, mapped reads are offered when the request arrives but refused when the reply is due.</summary>
        public volatile bool RefuseWhenDue;
        /// <summary>Status of buffered reads (an export whose read fails).</summary>
        public IoStatus BufferedStatus = IoStatus.Ok;

        public ShuffledFileExport(string path)
        {
            _file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
            // Eight chunks longer than the file: pages there exist in the mapping but not in the file.
            _mapping = FileMapping.TryCreate(_file, (Chunks + 8L) * Chunk) ?? throw new InvalidOperationException("mmap failed");
        }

        public string Name => "shuffled";
        public string Description => "shuffled chunks";
        public long SizeBytes => Chunks * Chunk;
        public bool ReadOnly => true;
        public NbdExportCapabilities Capabilities => NbdExportCapabilities.None;
        public CancellationToken Closed => CancellationToken.None;

        private long FileOffset(long exportOffset) =>
            exportOffset / Chunk == BrokenChunk ? (Chunks + 4L) * Chunk + exportOffset % Chunk : FileChunkOf(exportOffset / Chunk) * Chunk + exportOffset % Chunk;

        public NbdMappedRead CreateMappedRead() => new CountingRead(this);

        public bool CanMapRead(long offset, int length) => true;

        public bool TryBeginMappedRead(long offset, int length, NbdMappedRead read)
        {
            if (RefuseWhenDue)
            {
                Interlocked.Increment(ref Refused);
                return false;
            }
            for (long o = offset, end = offset + length; o < end;)
            {
                int n = (int)Math.Min(end - o, Chunk - o % Chunk);
                if (!read.TryAdd(_mapping, FileOffset(o), n)) { read.Clear(); return false; }
                o += n;
            }
            Interlocked.Increment(ref Begun);
            return true;
        }

        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref BufferedReads);
            if (BufferedStatus != IoStatus.Ok) return new(BufferedStatus);
            for (long o = offset, end = offset + buffer.Length; o < end;)
            {
                int n = (int)Math.Min(end - o, Chunk - o % Chunk);
                if (RandomAccess.Read(_file, buffer.Span.Slice((int)(o - offset), n), FileOffset(o)) != n) return new(IoStatus.IoError);
                o += n;
            }
            return new(IoStatus.Ok);
        }

        public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken) => new(IoStatus.NotPermitted);
        public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken cancellationToken) => new(IoStatus.NotSupported);

        public void Dispose()
        {
            _mapping.Dispose();
            _file.Dispose();
        }
    }

    private sealed class CountingRead(ShuffledFileExport owner) : NbdMappedRead
    {
        public override void End()
        {
            Clear();
            Interlocked.Increment(ref owner.Ended);
        }
    }

    /// <summary>A client transport whose reads wait while paused: a client that has stopped reading its replies.</summary>
    private sealed class PausableStream(Stream inner) : Stream
    {
        private volatile TaskCompletionSource _resumed = Resumed();
        private static TaskCompletionSource Resumed()
        {
            var t = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            t.SetResult();
            return t;
        }
        public void Pause() => _resumed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        public void Resume() => _resumed.TrySetResult();

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await _resumed.Task.WaitAsync(cancellationToken);
            return await inner.ReadAsync(buffer, cancellationToken);
        }
        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => inner.WriteAsync(buffer, cancellationToken);
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => inner.WriteAsync(buffer, offset, count, cancellationToken);
        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer, offset, count, CancellationToken.None).GetAwaiter().GetResult();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
        protected override void Dispose(bool disposing)
        {
            if (disposing) { Resume(); inner.Dispose(); }
            base.Dispose(disposing);
        }
    }

    private static async Task<NbdServer> StartAsync(ShuffledFileExport export, int mappedReadMinBytes = 64 << 10, string? unixSocketPath = null)
    {
        var server = new NbdServer(new OneExportCatalog(export), new NbdServerOptions { MappedReadMinBytes = mappedReadMinBytes, UnixSocketPath = unixSocketPath }, NullLogger<NbdServer>.Instance);
        await server.StartAsync();
        return server;
    }

    private static void AssertWords(long exportOffset, ReadOnlySpan<byte> buffer)
    {
        for (int i = 0; i < buffer.Length; i += 8)
        {
            ulong word = BinaryPrimitives.ReadUInt64LittleEndian(buffer[i..]);
            if (word != ExpectedWord(exportOffset + i)) Assert.Fail($"byte {exportOffset + i}: word {word:x16} is not the one written for it");
        }
    }

    [Theory]
    [InlineData(true, false)]
    [InlineData(false, false)]
    [InlineData(true, true)]
    public async Task Mapped_reads_match_the_data_and_each_is_ended_once(bool structured, bool unix)
    {
        using var export = new ShuffledFileExport(_path);
        string socketPath = _path + ".sock";
        await using var server = await StartAsync(export, unixSocketPath: unix ? socketPath : null);
        var options = new NbdClientOptions { StructuredReplies = structured };
        await using var client = unix
            ? await NbdClient.ConnectUnixAsync(socketPath, "shuffled", options)
            : await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled", options);
        (long Offset, int Length)[] reads = [(0, 1 << 20), (8, 1 << 20), (Chunk - 8, 3 * Chunk), (3 << 20, 1 << 20), (5000 * 8, 4096), (100 * 8, Chunk - 8)];
        foreach (var (offset, length) in reads)
        {
            var buffer = new byte[length];
            Assert.Equal(0u, await client.ReadAsync(offset, buffer));
            AssertWords(offset, buffer);
        }
        // Pipelined: several large reads in flight at once, answered in whatever order.
        var pending = Enumerable.Range(0, 8).Select(async i =>
        {
            var buffer = new byte[(1 << 19) - 64];
            long offset = i * (1L << 19) + 24;
            Assert.Equal(0u, await client.ReadAsync(offset, buffer));
            AssertWords(offset, buffer);
        }).ToArray();
        await Task.WhenAll(pending);

        int large = reads.Count(r => r.Length >= 64 << 10) + pending.Length;
        await Eventually.WaitAsync(() => Volatile.Read(ref export.Ended) == Volatile.Read(ref export.Begun), "every held read was ended");
        // Every large read went out from the mapping (the export never refuses here), every small one was buffered.
        Assert.Equal(large, export.Begun);
        Assert.Equal(reads.Length + pending.Length - large, export.BufferedReads);
    }

    [Fact]
    public async Task A_client_that_stops_reading_does_not_keep_the_ranges_held()
    {
        using var export = new ShuffledFileExport(_path);
        await using var server = await StartAsync(export);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 64 << 10 };
        await socket.ConnectAsync("127.0.0.1", server.TcpEndPoint!.Port);
        var transport = new PausableStream(new NetworkStream(socket, ownsSocket: true));
        await using var client = await NbdClient.ConnectAsync(transport, "shuffled");

        // The whole 4 MiB export in one read, while the client reads nothing: far more than the socket buffers hold.
        transport.Pause();
        var buffer = new byte[Chunks * Chunk];
        var read = client.ReadAsync(0, buffer).AsTask();
        // The ranges (for an agent: the disk's in-flight gate) are let go although the client has not read the reply:
        // what did not fit in the socket was copied out first.
        await Eventually.WaitAsync(() => Volatile.Read(ref export.Begun) == 1 && Volatile.Read(ref export.Ended) == 1, "the held read was ended before the client read it");
        Assert.False(read.IsCompleted);

        transport.Resume();
        Assert.Equal(0u, await read.WaitAsync(TimeSpan.FromSeconds(20)));
        AssertWords(0, buffer);
        Assert.Equal(0, export.BufferedReads);
    }

    [Fact]
    public async Task A_read_refused_when_its_reply_is_due_is_read_through_the_export_and_its_error_is_replied()
    {
        using var export = new ShuffledFileExport(_path) { RefuseWhenDue = true };
        await using var server = await StartAsync(export);
        await using var client = await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled");
        var buffer = new byte[1 << 20];
        Assert.Equal(0u, await client.ReadAsync(Chunk + 16, buffer));
        AssertWords(Chunk + 16, buffer);

        // The header is written only after the read was resolved, so a failing read still gets an honest error.
        export.BufferedStatus = IoStatus.IoError;
        Assert.Equal(NbdErrno.EIO, await client.ReadAsync(0, buffer));
        Assert.Equal(2, export.Refused);
        Assert.Equal(2, export.BufferedReads);
        Assert.Equal(0, export.Begun);
        // The connection is still in order.
        export.BufferedStatus = IoStatus.Ok;
        Assert.Equal(0u, await client.ReadAsync(8, buffer.AsMemory(0, 4096)));
        AssertWords(8, buffer.AsSpan(0, 4096));
    }

    [Fact]
    public async Task The_switch_turns_mapped_reads_off()
    {
        using var export = new ShuffledFileExport(_path);
        await using var server = await StartAsync(export, mappedReadMinBytes: int.MaxValue);
        await using var client = await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled");
        var buffer = new byte[1 << 20];
        Assert.Equal(0u, await client.ReadAsync(8, buffer));
        AssertWords(8, buffer);
        Assert.Equal(0, export.Begun);
        Assert.Equal(1, export.BufferedReads);
    }

    [Fact]
    public async Task A_mapping_that_cannot_deliver_ends_the_connection_instead_of_sending_short_data()
    {
        using var export = new ShuffledFileExport(_path) { BrokenChunk = 5 };
        await using var server = await StartAsync(export);
        await using var client = await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled");
        var good = new byte[1 << 20];
        Assert.Equal(0u, await client.ReadAsync(8 * Chunk, good));
        AssertWords(8 * Chunk, good);

        // Chunk 5 maps past the end of the file: send() finds no page there (EFAULT) after the header went out. The
        // client must not see a successful read; the server reads the range again through the export (which is how
        // an agent reports the container) and ends the held read. Nothing in the process touched the missing page,
        // so there is no SIGBUS: this test process would not survive one.
        int buffered = export.BufferedReads;
        var bad = new byte[4 * Chunk];
        uint? errno = null;
        try { errno = await client.ReadAsync(4 * Chunk, bad); }
        catch (Exception e) when (e is NbdClientException or IOException or OperationCanceledException) { } // the connection ended: expected
        Assert.True(errno is null or not 0u, "a read whose mapping could not deliver was answered as a success");
        await Eventually.WaitAsync(() => export.BufferedReads > buffered, "the failed range was read again through the export");
        await Eventually.WaitAsync(() => Volatile.Read(ref export.Ended) == Volatile.Read(ref export.Begun), "every held read was ended");
    }

    [Fact]
    public async Task Steady_mapped_reads_allocate_nothing_per_request()
    {
        // Pipelined 64 KiB and 1 MiB reads, all sent from the mapping: the deferral, the plan and the send allocate
        // nothing once the connection's contexts are warm.
        using var export = new ShuffledFileExport(_path);
        await using var server = await StartAsync(export);
        await using var raw = await RawNbd.ConnectAsync(server.TcpEndPoint!.Port);
        await raw.GreetAsync();
        await raw.SendOptionAsync(NbdWire.OptGo, RawNbd.NameAndInfos("shuffled"));
        await raw.ReadRepliesAsync(NbdWire.OptGo);
        const int batch = 16, rounds = 300;
        var requests = new byte[batch * 28];
        int replyBytes = 0;
        for (int i = 0; i < batch; i++)
        {
            uint length = i % 8 == 7 ? 1u << 20 : 64u << 10;
            RawNbd.Request(NbdWire.CmdRead, 0, (ulong)i, (ulong)i * (192 << 10) + 8, length).CopyTo(requests, i * 28);
            replyBytes += 16 + (int)length;
        }
        var replies = new byte[replyBytes];
        async Task Round()
        {
            await raw.Stream.WriteAsync(requests);
            await raw.Stream.ReadExactlyAsync(replies);
        }
        for (int i = 0; i < 50; i++) await Round(); // warm up pools and JIT
        // The least of three windows: a one-off burst elsewhere in the process (the test runner) lands in one at most.
        long perRequest = long.MaxValue;
        for (int window = 0; window < 3; window++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            for (int i = 0; i < rounds; i++) await Round();
            perRequest = Math.Min(perRequest, (GC.GetTotalAllocatedBytes(precise: true) - before) / (rounds * batch));
        }
        _output.WriteLine($"{perRequest} bytes allocated per request (server + test client, process-wide, least of 3 windows)");
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(replies.AsSpan(4)));
        Assert.Equal((50 + 3 * rounds) * batch, export.Begun);
        Assert.True(perRequest < 64, $"{perRequest} bytes per request");
    }
}
