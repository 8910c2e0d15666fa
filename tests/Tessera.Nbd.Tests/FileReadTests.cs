using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;
using Tessera.Core;
using Tessera.Nbd.Tests.Infrastructure;

namespace Tessera.Nbd.Tests;

/// <summary>
/// Reads sent with sendfile from an export's files (NbdConnection.FileReads.cs), over a real socket: the bytes match
/// the buffered path for simple and structured replies, aligned or not, across many non-contiguous ranges; each
/// planned read is ended exactly once; the threshold and the off switch hold; and a file that cannot deliver what
/// the reply header promised ends the connection instead of sending short or wrong data.
/// </summary>
public sealed class FileReadTests : IDisposable
{
    private const int Chunk = 64 << 10;
    private const int Chunks = 64; // a 4 MiB export
    private readonly string _path = Path.Combine(Path.GetTempPath(), "tessera-fileread-" + Guid.NewGuid().ToString("N"));

    public FileReadTests()
    {
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

    private sealed class ShuffledFileExport(string path) : INbdExport, INbdFileReadExport
    {
        private readonly SafeFileHandle _file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        public int Begun, Ended, BufferedReads;
        /// <summary>Export offsets whose file range is moved past the end of the file (a file that cannot deliver).</summary>
        public long BrokenChunk = -1;

        public string Name => "shuffled";
        public string Description => path;
        public long SizeBytes => Chunks * Chunk;
        public bool ReadOnly => true;
        public NbdExportCapabilities Capabilities => NbdExportCapabilities.None;
        public CancellationToken Closed => CancellationToken.None;

        private long FileOffset(long exportOffset) =>
            exportOffset / Chunk == BrokenChunk ? (Chunks + 8L) * Chunk : FileChunkOf(exportOffset / Chunk) * Chunk + exportOffset % Chunk;

        public NbdFileRead CreateFileRead() => new CountingRead(this);

        public bool TryBeginFileRead(long offset, int length, NbdFileRead read)
        {
            for (long o = offset, end = offset + length; o < end;)
            {
                int n = (int)Math.Min(end - o, Chunk - o % Chunk);
                if (!read.TryAdd(_file, FileOffset(o), n)) { read.Clear(); return false; }
                o += n;
            }
            Interlocked.Increment(ref Begun);
            return true;
        }

        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref BufferedReads);
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
        public void Dispose() => _file.Dispose();
    }

    private sealed class CountingRead(ShuffledFileExport owner) : NbdFileRead
    {
        public override void End()
        {
            Clear();
            Interlocked.Increment(ref owner.Ended);
        }
    }

    private sealed class OneExportCatalog(INbdExport export) : INbdExportCatalog
    {
        public IReadOnlyList<NbdExportDescriptor> ListExports() => [new(export.Name, export.Description)];
        public INbdExport? Open(string name) => export;
    }

    private static async Task<NbdServer> StartAsync(ShuffledFileExport export, int sendFileMinBytes = 64 << 10)
    {
        var server = new NbdServer(new OneExportCatalog(export), new NbdServerOptions { SendFileMinBytes = sendFileMinBytes }, NullLogger<NbdServer>.Instance);
        await server.StartAsync();
        return server;
    }

    private static void AssertWords(long exportOffset, byte[] buffer)
    {
        for (int i = 0; i < buffer.Length; i += 8)
        {
            ulong word = BinaryPrimitives.ReadUInt64LittleEndian(buffer.AsSpan(i));
            if (word != ExpectedWord(exportOffset + i)) Assert.Fail($"byte {exportOffset + i}: word {word:x16} is not the one written for it");
        }
    }

    private static async Task WaitAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail("timed out waiting until " + what);
            await Task.Delay(5);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Reads_from_files_match_the_data_and_each_is_ended_once(bool structured)
    {
        using var export = new ShuffledFileExport(_path);
        await using var server = await StartAsync(export);
        await using var client = await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled", new NbdClientOptions { StructuredReplies = structured });
        (long Offset, int Length)[] reads = [(0, 1 << 20), (8, 1 << 20), (Chunk - 8, 3 * Chunk), (3 << 20, 1 << 20), (5000 * 8, 4096), (100 * 8, Chunk - 8)];
        int large = 0;
        foreach (var (offset, length) in reads)
        {
            var buffer = new byte[length];
            Assert.Equal(0u, await client.ReadAsync(offset, buffer));
            AssertWords(offset, buffer);
            if (length >= 64 << 10) large++;
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
        large += pending.Length;

        Assert.True(export.Begun >= 1, "no read went out through sendfile");
        await WaitAsync(() => Volatile.Read(ref export.Ended) == Volatile.Read(ref export.Begun), "every planned read was ended");
        // Each read took exactly one path; reads below the threshold never plan (a large one plans unless the socket had no room).
        Assert.Equal(reads.Length + pending.Length, export.Begun + export.BufferedReads);
        Assert.True(export.Begun <= large, $"{export.Begun} file reads planned for {large} large reads: a small one was planned");
    }

    [Fact]
    public async Task The_switch_turns_file_reads_off()
    {
        using var export = new ShuffledFileExport(_path);
        await using var server = await StartAsync(export, sendFileMinBytes: int.MaxValue);
        await using var client = await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled");
        var buffer = new byte[1 << 20];
        Assert.Equal(0u, await client.ReadAsync(8, buffer));
        AssertWords(8, buffer);
        Assert.Equal(0, export.Begun);
        Assert.Equal(1, export.BufferedReads);
    }

    [Fact]
    public async Task A_file_that_cannot_deliver_ends_the_connection_instead_of_sending_short_data()
    {
        using var export = new ShuffledFileExport(_path) { BrokenChunk = 5 };
        await using var server = await StartAsync(export);
        await using var client = await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled");
        var good = new byte[1 << 20];
        Assert.Equal(0u, await client.ReadAsync(8 * Chunk, good));
        AssertWords(8 * Chunk, good);

        // Chunk 5 maps past the end of the file: sendfile finds nothing after the header already went out. The
        // client must not see a successful read; the server reads the range again through the export (which is
        // how an agent reports the container) and ends the planned read.
        int buffered = export.BufferedReads;
        var bad = new byte[4 * Chunk];
        uint? errno = null;
        try { errno = await client.ReadAsync(4 * Chunk, bad); }
        catch (Exception e) when (e is NbdClientException or IOException or OperationCanceledException) { } // the connection ended: expected
        Assert.True(errno is null or not 0u, "a read whose file could not deliver was answered as a success");
        await WaitAsync(() => export.BufferedReads > buffered, "the failed range was read again through the export");
        await WaitAsync(() => Volatile.Read(ref export.Ended) == Volatile.Read(ref export.Begun), "every planned read was ended");
    }
}
