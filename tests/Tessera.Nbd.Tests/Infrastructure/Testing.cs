using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd.Tests.Infrastructure;

/// <summary>A duplex in-memory transport: what one side writes, the other reads. Disposing ends both directions.</summary>
public sealed class DuplexPipeStream(PipeReader reader, PipeWriter writer) : Stream
{
    private readonly Stream _in = reader.AsStream();
    private readonly Stream _out = writer.AsStream();

    public static (DuplexPipeStream A, DuplexPipeStream B) CreatePair()
    {
        var ab = new Pipe();
        var ba = new Pipe();
        return (new DuplexPipeStream(ba.Reader, ab.Writer), new DuplexPipeStream(ab.Reader, ba.Writer));
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() => _out.Flush();
    public override Task FlushAsync(CancellationToken ct) => _out.FlushAsync(ct);
    public override int Read(byte[] buffer, int offset, int count) => _in.Read(buffer, offset, count);
    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default) => _in.ReadAsync(buffer, ct);
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken ct) => _in.ReadAsync(buffer, offset, count, ct);
    public override void Write(byte[] buffer, int offset, int count) => _out.Write(buffer, offset, count);
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default) => _out.WriteAsync(buffer, ct);
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken ct) => _out.WriteAsync(buffer, offset, count, ct);
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            writer.Complete();
            reader.Complete();
        }
        base.Dispose(disposing);
    }
}

/// <summary>Captures log lines so tests can assert that a dropped client was dropped for the stated reason.</summary>
public sealed class ListLogger : ILogger<NbdServer>
{
    public readonly ConcurrentQueue<(int EventId, string Message)> Entries = new();
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        => Entries.Enqueue((eventId.Id, formatter(state, exception)));

    public bool Has(int eventId, string contains) => Entries.Any(e => e.EventId == eventId && e.Message.Contains(contains, StringComparison.OrdinalIgnoreCase));

    public async Task WaitForAsync(int eventId, string contains)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!Has(eventId, contains))
        {
            if (DateTime.UtcNow > deadline)
                throw new Xunit.Sdk.XunitException($"no log {eventId} containing '{contains}'; got:\n" + string.Join("\n", Entries.Select(e => $"{e.EventId}: {e.Message}")));
            await Task.Delay(10);
        }
    }
}

/// <summary>A server on a free loopback port with three exports: "disk" (read-write, everything), "ro", "nofast".</summary>
public sealed class TestServer : IAsyncDisposable
{
    public const long DiskBytes = 16 * 1024 * 1024;
    public readonly MemoryExport Disk = new("disk", DiskBytes);
    public readonly MemoryExport ReadOnlyDisk = new("ro", 4 * 1024 * 1024, readOnly: true);
    public readonly MemoryExport NoFastZero = new("nofast", 4 * 1024 * 1024) { FastZeroIsCheap = false };
    public readonly MemoryCatalog Catalog;
    public readonly ListLogger Log = new();
    public readonly NbdServer Server;

    public TestServer(Action<NbdServerOptions>? configure = null)
    {
        Catalog = new MemoryCatalog(Disk, ReadOnlyDisk, NoFastZero);
        var options = new NbdServerOptions();
        configure?.Invoke(options);
        Server = new NbdServer(Catalog, options, Log);
    }

    public int Port => Server.TcpEndPoint!.Port;

    public static async Task<TestServer> StartAsync(Action<NbdServerOptions>? configure = null)
    {
        var s = new TestServer(configure);
        await s.Server.StartAsync();
        return s;
    }

    public Task<NbdClient> ConnectAsync(string export = "disk", bool structured = true, bool baseAllocation = false) =>
        NbdClient.ConnectTcpAsync("127.0.0.1", Port, export, new NbdClientOptions { StructuredReplies = structured, BaseAllocation = baseAllocation });

    /// <summary>Proves the server still serves a fresh client: write then read back a self-describing block.</summary>
    public async Task AssertStillServesAsync()
    {
        await using var c = await ConnectAsync();
        var data = Pattern.Make(8 * 1024 * 1024 + 4096, 8192, 0x5A);
        Assert.Equal(0u, await c.WriteAsync(8 * 1024 * 1024 + 4096, data));
        var back = new byte[data.Length];
        Assert.Equal(0u, await c.ReadAsync(8 * 1024 * 1024 + 4096, back));
        Assert.Equal(data, back);
        await c.DisconnectAsync();
    }

    public async ValueTask DisposeAsync() => await Server.StopAsync();
}

/// <summary>Data that encodes its own offset: each 8-byte word is (offset of the word) XOR a seed, so misplacement shows.</summary>
public static class Pattern
{
    public static byte[] Make(long offset, int length, byte seed)
    {
        var b = new byte[length];
        for (int i = 0; i + 8 <= length; i += 8) BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(i), (ulong)(offset + i) ^ (0x0101010101010101UL * seed));
        for (int i = length & ~7; i < length; i++) b[i] = seed;
        return b;
    }
}

/// <summary>A hand-rolled handshake speaker for option-level tests and hostile byte streams.</summary>
public sealed class RawNbd : IAsyncDisposable
{
    public readonly Stream Stream;
    private readonly Socket? _socket;

    public RawNbd(Stream stream, Socket? socket = null) { Stream = stream; _socket = socket; }

    public static async Task<RawNbd> ConnectAsync(int port)
    {
        var s = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await s.ConnectAsync("127.0.0.1", port);
        return new RawNbd(new NetworkStream(s, ownsSocket: true), s);
    }

    public async Task<byte[]> ReadExactAsync(int n)
    {
        var b = new byte[n];
        await Stream.ReadExactlyAsync(b).AsTask().WaitAsync(TimeSpan.FromSeconds(20));
        return b;
    }

    /// <summary>Reads the greeting and sends client flags (fixed newstyle + no zeroes by default).</summary>
    public async Task<ushort> GreetAsync(uint clientFlags = NbdWire.ClientFlagFixedNewstyle | NbdWire.ClientFlagNoZeroes)
    {
        var g = await ReadExactAsync(18);
        Assert.Equal(NbdWire.InitMagic, BinaryPrimitives.ReadUInt64BigEndian(g));
        Assert.Equal(NbdWire.OptionMagic, BinaryPrimitives.ReadUInt64BigEndian(g.AsSpan(8)));
        var f = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(f, clientFlags);
        await Stream.WriteAsync(f);
        return BinaryPrimitives.ReadUInt16BigEndian(g.AsSpan(16));
    }

    public async Task SendOptionAsync(uint option, byte[] data, uint? announcedLength = null)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, NbdWire.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), announcedLength ?? (uint)data.Length);
        data.CopyTo(b, 16);
        await Stream.WriteAsync(b);
    }

    public async Task<(uint Option, uint Type, byte[] Data)> ReadReplyAsync()
    {
        var h = await ReadExactAsync(20);
        Assert.Equal(NbdWire.OptionReplyMagic, BinaryPrimitives.ReadUInt64BigEndian(h));
        uint len = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        return (BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8)), BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12)), await ReadExactAsync((int)len));
    }

    /// <summary>Reads replies to one option until ACK or an error; returns them all.</summary>
    public async Task<List<(uint Type, byte[] Data)>> ReadRepliesAsync(uint option)
    {
        var list = new List<(uint, byte[])>();
        while (true)
        {
            var (o, t, d) = await ReadReplyAsync();
            Assert.Equal(option, o);
            list.Add((t, d));
            if (t == NbdWire.RepAck || (t & 0x80000000) != 0) return list;
        }
    }

    public static byte[] NameAndInfos(string name, params ushort[] infos)
    {
        var n = Encoding.UTF8.GetBytes(name);
        var b = new byte[4 + n.Length + 2 + 2 * infos.Length];
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)n.Length);
        n.CopyTo(b, 4);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4 + n.Length), (ushort)infos.Length);
        for (int i = 0; i < infos.Length; i++) BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6 + n.Length + 2 * i), infos[i]);
        return b;
    }

    public static byte[] MetaQuery(string export, params string[] queries)
    {
        var ms = new MemoryStream();
        void U32(uint v) { var t = new byte[4]; BinaryPrimitives.WriteUInt32BigEndian(t, v); ms.Write(t); }
        var n = Encoding.UTF8.GetBytes(export);
        U32((uint)n.Length); ms.Write(n);
        U32((uint)queries.Length);
        foreach (var q in queries) { var qb = Encoding.UTF8.GetBytes(q); U32((uint)qb.Length); ms.Write(qb); }
        return ms.ToArray();
    }

    public static byte[] Request(ushort command, ushort flags, ulong cookie, ulong offset, uint length, uint magic = NbdWire.RequestMagic)
    {
        var h = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(h, magic);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(6), command);
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), length);
        return h;
    }

    /// <summary>True when the peer closes the connection within the timeout (reads until end of stream).</summary>
    public async Task<bool> ClosedByPeerAsync(TimeSpan timeout)
    {
        var buf = new byte[4096];
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            while (true)
                if (await Stream.ReadAsync(buf, cts.Token) == 0) return true;
        }
        catch (OperationCanceledException) { return false; }
        catch (IOException) { return true; }
    }

    public async ValueTask DisposeAsync()
    {
        await Stream.DisposeAsync();
        _socket?.Dispose();
    }
}

/// <summary>A catalogue of one export, opened whatever name the client asks for.</summary>
public sealed class OneExportCatalog(INbdExport export) : INbdExportCatalog
{
    public IReadOnlyList<NbdExportDescriptor> ListExports() => [new(export.Name, export.Description)];
    public INbdExport? Open(string name) => export;
}

public static class Eventually
{
    /// <summary>Waits (polling, bounded at 20 s) until <paramref name="condition"/> holds; fails the test naming <paramref name="what"/> otherwise.</summary>
    public static async Task WaitAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail("timed out waiting until " + what);
            await Task.Delay(5);
        }
    }
}
