using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;
using Tessera.Core;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd.Tests;

/// <summary>
/// Writes spliced from the socket into an export's files (NbdConnection.SplicedWrites.cs), over a real socket: the bytes
/// land at the right places across many non-contiguous ranges, aligned or not, FUA included; every held plan is ended
/// exactly once; a payload that has not fully arrived is not waited for while the plan is held; a refusal when the
/// write is due takes the buffered path; a file that refuses gives EIO and the connection stays in step; a rejected
/// write's payload is skipped; and the off switch holds.
/// </summary>
public sealed class SplicedWriteTests : IDisposable
{
    private const int Chunk = 64 << 10;
    private const int Chunks = 64; // a 4 MiB export
    private readonly string _path = Path.Combine(Path.GetTempPath(), "tessera-splicedwrite-" + Guid.NewGuid().ToString("N"));

    public SplicedWriteTests()
    {
        using var f = File.Create(_path);
        f.SetLength(Chunks * Chunk);
    }

    public void Dispose() => File.Delete(_path);

    private static long FileChunkOf(long exportChunk) => (exportChunk * 37 + 11) % Chunks; // 37 is prime to 64: a permutation

    private static byte[] Pattern(long exportOffset, int length, ulong generation)
    {
        var data = new byte[length];
        for (int i = 0; i < length; i += 8) BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(i), (ulong)(exportOffset + i) * 0x9E3779B97F4A7C15UL ^ generation);
        return data;
    }

    /// <summary>An export whose chunks are shuffled in its file, so one write becomes several file ranges.</summary>
    private sealed class ShuffledFileExport : INbdExport, INbdSplicedWriteExport
    {
        private readonly SafeFileHandle _file;
        /// <summary>What spliced writes are given: normally the same file; a read-only handle makes them fail.</summary>
        public SafeFileHandle SpliceFile;
        public int Begun, Ended, Failed, BufferedWrites, Flushes;
        public volatile bool RefuseWhenDue;

        public ShuffledFileExport(string path)
        {
            _file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
            SpliceFile = _file;
        }

        public string Name => "shuffled";
        public string Description => "shuffled chunks";
        public long SizeBytes => Chunks * Chunk;
        public bool ReadOnly => false;
        public NbdExportCapabilities Capabilities => NbdExportCapabilities.Flush | NbdExportCapabilities.Fua;
        public CancellationToken Closed => CancellationToken.None;

        public static long FileOffset(long exportOffset) => FileChunkOf(exportOffset / Chunk) * Chunk + exportOffset % Chunk;

        public NbdSplicedWrite CreateSplicedWrite() => new CountingWrite(this);

        public bool CanSpliceWrite(long offset, int length) => true;

        public bool TryBeginSplicedWrite(long offset, int length, NbdSplicedWrite write)
        {
            if (RefuseWhenDue) return false;
            for (long o = offset, end = offset + length; o < end;)
            {
                int n = (int)Math.Min(end - o, Chunk - o % Chunk);
                if (!write.TryAdd(SpliceFile, FileOffset(o), n)) { write.Clear(); return false; }
                o += n;
            }
            Interlocked.Increment(ref Begun);
            return true;
        }

        public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref BufferedWrites);
            for (long o = offset, end = offset + data.Length; o < end;)
            {
                int n = (int)Math.Min(end - o, Chunk - o % Chunk);
                RandomAccess.Write(_file, data.Span.Slice((int)(o - offset), n), FileOffset(o));
                o += n;
            }
            if (fua) Interlocked.Increment(ref Flushes);
            return new(IoStatus.Ok);
        }

        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken)
        {
            for (long o = offset, end = offset + buffer.Length; o < end;)
            {
                int n = (int)Math.Min(end - o, Chunk - o % Chunk);
                RandomAccess.Read(_file, buffer.Span.Slice((int)(o - offset), n), FileOffset(o));
                o += n;
            }
            return new(IoStatus.Ok);
        }

        public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Flushes);
            return new(IoStatus.Ok);
        }

        public ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public void Dispose() => _file.Dispose();
    }

    private sealed class CountingWrite(ShuffledFileExport owner) : NbdSplicedWrite
    {
        public override void End(int failedRange, int errno)
        {
            Clear();
            if (failedRange >= 0) Interlocked.Increment(ref owner.Failed);
            Interlocked.Increment(ref owner.Ended);
        }
    }

    private static async Task<NbdServer> StartAsync(ShuffledFileExport export, int splicedWriteMinBytes = 128 << 10, string? unixSocketPath = null)
    {
        var server = new NbdServer(new OneExportCatalog(export), new NbdServerOptions { SplicedWriteMinBytes = splicedWriteMinBytes, UnixSocketPath = unixSocketPath }, NullLogger<NbdServer>.Instance);
        await server.StartAsync();
        return server;
    }

    /// <summary>The export's bytes at <paramref name="offset"/>, read from the file behind the server's back.</summary>
    private byte[] FileBytes(long offset, int length)
    {
        var data = new byte[length];
        using var f = File.OpenHandle(_path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        for (long o = offset, end = offset + length; o < end;)
        {
            int n = (int)Math.Min(end - o, Chunk - o % Chunk);
            RandomAccess.Read(f, data.AsSpan((int)(o - offset), n), ShuffledFileExport.FileOffset(o));
            o += n;
        }
        return data;
    }

    private static async Task<RawNbd> OpenRawAsync(NbdServer server)
    {
        var raw = await RawNbd.ConnectAsync(server.TcpEndPoint!.Port);
        await raw.GreetAsync();
        await raw.SendOptionAsync(NbdWire.OptGo, RawNbd.NameAndInfos("shuffled"));
        await raw.ReadRepliesAsync(NbdWire.OptGo);
        return raw;
    }

    /// <summary>Reads one simple reply; returns its errno after checking the cookie.</summary>
    private static async Task<uint> ReplyAsync(RawNbd raw, ulong cookie)
    {
        var reply = await raw.ReadExactAsync(16);
        Assert.Equal(NbdWire.SimpleReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(reply));
        Assert.Equal(cookie, BinaryPrimitives.ReadUInt64BigEndian(reply.AsSpan(8)));
        return BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Spliced_writes_land_at_their_places_and_each_is_ended_once(bool unix)
    {
        using var export = new ShuffledFileExport(_path);
        string socketPath = _path + ".sock";
        await using var server = await StartAsync(export, unixSocketPath: unix ? socketPath : null);
        await using var client = unix
            ? await NbdClient.ConnectUnixAsync(socketPath, "shuffled")
            : await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled");
        var reference = new byte[Chunks * Chunk];
        (long Offset, int Length, bool Fua)[] writes = [(0, 1 << 20, false), (8, 1 << 20, true), (Chunk - 8, 3 * Chunk, false), (3 << 20, 1 << 20, false), (5000 * 8, 4096, false), (100 * 8, 2 * Chunk - 8, true)];
        ulong generation = 0;
        foreach (var (offset, length, fua) in writes)
        {
            var data = Pattern(offset, length, ++generation);
            Assert.Equal(0u, await client.WriteAsync(offset, data, fua));
            data.CopyTo(reference, (int)offset);
        }
        // Pipelined: several large writes in flight at once, to disjoint ranges.
        var pending = Enumerable.Range(0, 8).Select(i =>
        {
            long offset = i * (1L << 19) + 24;
            var data = Pattern(offset, (1 << 19) - 64, 100 + (ulong)i);
            data.CopyTo(reference, (int)offset);
            return client.WriteAsync(offset, data).AsTask();
        }).ToArray();
        Assert.All(await Task.WhenAll(pending), errno => Assert.Equal(0u, errno));

        Assert.True(FileBytes(0, reference.Length).AsSpan().SequenceEqual(reference), "the file differs from the reference");
        await Eventually.WaitAsync(() => Volatile.Read(ref export.Ended) == Volatile.Read(ref export.Begun), "every held write was ended");
        int large = writes.Count(w => w.Length >= 128 << 10) + pending.Length;
        Assert.Equal(large, export.Begun);
        // Small writes are buffered; a large one whose payload had not all arrived had its rest written buffered too.
        int small = writes.Length + pending.Length - large;
        Assert.InRange(export.BufferedWrites, small, small + large);
        Assert.Equal(0, export.Failed);
        Assert.Equal(2, export.Flushes); // each FUA write, spliced or not, flushed once
    }

    [Fact]
    public async Task A_payload_still_on_its_way_is_not_waited_for_while_the_plan_is_held()
    {
        using var export = new ShuffledFileExport(_path);
        await using var server = await StartAsync(export);
        await using var raw = await OpenRawAsync(server);
        const long offset = 3 * Chunk + 16;
        var data = Pattern(offset, 1 << 20, 7);
        // The header and the first quarter of the payload; the rest only once the plan has been let go.
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdWrite, 0, 1, offset, (uint)data.Length));
        await raw.Stream.WriteAsync(data.AsMemory(0, data.Length / 4));
        await Eventually.WaitAsync(() => Volatile.Read(ref export.Ended) == 1, "the held write was ended before the rest of its payload arrived");
        Assert.Equal(1, export.Begun);
        await raw.Stream.WriteAsync(data.AsMemory(data.Length / 4));
        Assert.Equal(0u, await ReplyAsync(raw, 1));
        Assert.Equal(data, FileBytes(offset, data.Length));
        Assert.Equal(1, export.BufferedWrites); // the rest went through the export as a write of the remaining range
    }

    [Fact]
    public async Task A_write_refused_when_it_is_due_takes_the_buffered_path()
    {
        using var export = new ShuffledFileExport(_path) { RefuseWhenDue = true };
        await using var server = await StartAsync(export);
        await using var client = await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled");
        var data = Pattern(Chunk + 8, 1 << 20, 9);
        Assert.Equal(0u, await client.WriteAsync(Chunk + 8, data));
        Assert.Equal(data, FileBytes(Chunk + 8, data.Length));
        Assert.Equal(0, export.Begun);
        Assert.Equal(1, export.BufferedWrites);
    }

    [Fact]
    public async Task A_file_that_refuses_gives_EIO_and_the_connection_stays_in_step()
    {
        using var export = new ShuffledFileExport(_path);
        using var readOnly = File.OpenHandle(_path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        export.SpliceFile = readOnly; // splice() into it fails (EBADF) once payload bytes are in the pipe
        await using var server = await StartAsync(export);
        await using var raw = await OpenRawAsync(server);
        // Header and payload in one send, so payload bytes are in hand when the plan is held (the first splice fails).
        var data = Pattern(8, 1 << 20, 1);
        var request = new byte[28 + data.Length];
        RawNbd.Request(NbdWire.CmdWrite, 0, 1, 8, (uint)data.Length).CopyTo(request, 0);
        data.CopyTo(request, 28);
        await raw.Stream.WriteAsync(request);
        Assert.Equal(NbdErrno.EIO, await ReplyAsync(raw, 1));
        Assert.Equal(1, export.Failed);
        // Whatever was left of the payload was consumed: the next requests are read as requests.
        var small = Pattern(4096, 4096, 2);
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdWrite, 0, 2, 4096, 4096));
        await raw.Stream.WriteAsync(small);
        Assert.Equal(0u, await ReplyAsync(raw, 2));
        Assert.Equal(small, FileBytes(4096, 4096));
        Assert.Equal(export.Begun, export.Ended);
    }

    [Fact]
    public async Task A_rejected_write_has_its_payload_skipped()
    {
        using var export = new ShuffledFileExport(_path);
        await using var server = await StartAsync(export);
        await using var raw = await OpenRawAsync(server);
        var data = Pattern(0, 512 << 10, 3);
        // An unknown flag: EINVAL, decided after the header left the payload in the socket.
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdWrite, 0x8000, 1, 0, (uint)data.Length));
        await raw.Stream.WriteAsync(data);
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdWrite, 0, 2, 0, (uint)data.Length));
        await raw.Stream.WriteAsync(data);
        Assert.Equal(NbdErrno.EINVAL, await ReplyAsync(raw, 1));
        Assert.Equal(0u, await ReplyAsync(raw, 2));
        Assert.Equal(data, FileBytes(0, data.Length));
        Assert.Equal(1, export.Begun);
    }

    [Fact]
    public async Task The_switch_turns_spliced_writes_off()
    {
        using var export = new ShuffledFileExport(_path);
        await using var server = await StartAsync(export, splicedWriteMinBytes: int.MaxValue);
        await using var client = await NbdClient.ConnectTcpAsync("127.0.0.1", server.TcpEndPoint!.Port, "shuffled");
        var data = Pattern(8, 1 << 20, 4);
        Assert.Equal(0u, await client.WriteAsync(8, data));
        Assert.Equal(data, FileBytes(8, data.Length));
        Assert.Equal(0, export.Begun);
        Assert.Equal(1, export.BufferedWrites);
    }
}
