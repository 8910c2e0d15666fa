using System.Buffers.Binary;
using System.Text;
using BenchmarkDotNet.Attributes;
using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Core;
using Tessera.Nbd;
using Tessera.Nbd.Protocol;

namespace Tessera.Benchmarks;

/// <summary>
/// The real NBD server connection (Tessera.Nbd's NbdConnection) driven over an in-memory stream: each operation
/// is one request header (and payload) in, one reply out, through the server's parse, validation, dispatch,
/// reply encoding and send batching. <c>Flush_NullExport</c> isolates the protocol cost (header parse, validate,
/// 16-byte simple reply encode); the reads and writes go on into the agent's mapped DiskVolume, so they are the
/// whole in-process data path without a socket. Reads use structured replies, as libnbd and fio negotiate them.
/// </summary>
[MemoryDiagnoser]
public class NbdBenchmarks
{
    private const long DiskBytes = 64L << 20;
    private const int Ops = 64;

    [Params("memory", "file")]
    public string Container { get; set; } = "memory";

    private MappedDisk _disk = null!;
    private ScriptedStream _nullStream = null!, _diskStream = null!;
    private Task _nullRun = null!, _diskRun = null!;
    private byte[] _flush = null!, _read4k = null!, _write4k = null!, _read1m = null!, _write1m = null!;

    [GlobalSetup]
    public void Setup()
    {
        _disk = new MappedDisk(Container, DiskBytes, 1 << 20);
        (_nullStream, _nullRun) = Connect(new Catalog(new NullExport()));
        (_diskStream, _diskRun) = Connect(new Catalog(_disk.Export));
        _flush = Request(NbdWire.CmdFlush, 0, 0, 0);
        _read4k = Request(NbdWire.CmdRead, 1 << 20, 4096, 0);
        _write4k = Request(NbdWire.CmdWrite, 1 << 20, 4096, 4096);
        _read1m = Request(NbdWire.CmdRead, 3 << 20, 1 << 20, 0);
        _write1m = Request(NbdWire.CmdWrite, 3 << 20, 1 << 20, 1 << 20);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _nullStream.Close(true);
        _diskStream.Close(true);
        Task.WaitAll([_nullRun, _diskRun], TimeSpan.FromSeconds(10));
        _disk.Dispose();
    }

    [Benchmark(OperationsPerInvoke = Ops)]
    public void Flush_NullExport() => Run(_nullStream, _flush);

    [Benchmark(OperationsPerInvoke = Ops)]
    public void Read4KiB() => Run(_diskStream, _read4k);

    [Benchmark(OperationsPerInvoke = Ops)]
    public void Write4KiB() => Run(_diskStream, _write4k);

    [Benchmark(OperationsPerInvoke = Ops)]
    public void Read1MiB() => Run(_diskStream, _read1m);

    [Benchmark(OperationsPerInvoke = Ops)]
    public void Write1MiB() => Run(_diskStream, _write1m);

    private static void Run(ScriptedStream stream, byte[] request)
    {
        for (int i = 0; i < Ops; i++)
        {
            long before = stream.BytesWritten;
            stream.Feed(request);
            if (stream.BytesWritten == before) throw new InvalidOperationException("no reply: the request did not complete synchronously");
        }
    }

    private static (ScriptedStream, Task) Connect(INbdExportCatalog catalog)
    {
        var stream = new ScriptedStream((2 << 20) + 4096);
        var hello = new List<byte>();
        void U32(uint v) { var b = new byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, v); hello.AddRange(b); }
        void U64(ulong v) { var b = new byte[8]; BinaryPrimitives.WriteUInt64BigEndian(b, v); hello.AddRange(b); }
        U32(NbdWire.ClientFlagFixedNewstyle | NbdWire.ClientFlagNoZeroes);
        U64(NbdWire.OptionMagic); U32(NbdWire.OptStructuredReply); U32(0);
        var name = Encoding.UTF8.GetBytes("bench");
        U64(NbdWire.OptionMagic); U32(NbdWire.OptGo); U32((uint)(4 + name.Length + 2));
        U32((uint)name.Length); hello.AddRange(name); hello.Add(0); hello.Add(0);
        stream.Feed(hello.ToArray());
        var connection = new NbdConnection(stream, catalog, new NbdServerOptions(), NullLogger.Instance, id: 1);
        var run = connection.RunAsync(CancellationToken.None);
        if (run.IsCompleted) throw new InvalidOperationException("the connection ended during the handshake");
        long before = stream.BytesWritten;
        stream.Feed(Request(NbdWire.CmdFlush, 0, 0, 0));
        if (stream.BytesWritten == before) throw new InvalidOperationException("the connection is not transmitting");
        return (stream, run);
    }

    private static byte[] Request(ushort command, long offset, int length, int payloadBytes)
    {
        var r = new byte[NbdWire.RequestHeaderBytes + payloadBytes];
        BinaryPrimitives.WriteUInt32BigEndian(r, NbdWire.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(4), 0);
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(6), command);
        BinaryPrimitives.WriteUInt64BigEndian(r.AsSpan(8), 0x1234);
        BinaryPrimitives.WriteUInt64BigEndian(r.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(24), (uint)length);
        return r;
    }

    private sealed class Catalog(INbdExport export) : INbdExportCatalog
    {
        public IReadOnlyList<NbdExportDescriptor> ListExports() => [new(export.Name, export.Description)];
        public INbdExport? Open(string name) => export;
    }

    /// <summary>An export that does nothing, so only the protocol is measured.</summary>
    private sealed class NullExport : INbdExport
    {
        public string Name => "bench";
        public string Description => "";
        public long SizeBytes => DiskBytes;
        public bool ReadOnly => false;
        public NbdExportCapabilities Capabilities => NbdExportCapabilities.Flush | NbdExportCapabilities.Fua;
        public CancellationToken Closed => CancellationToken.None;
        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken ct) => new(IoStatus.Ok);
        public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct) => new(IoStatus.Ok);
        public ValueTask<IoStatus> FlushAsync(CancellationToken ct) => new(IoStatus.Ok);
        public ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken ct) => new(IoStatus.Ok);
        public ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken ct) => new(IoStatus.Ok);
        public ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken ct) => new(IoStatus.Ok);
        public ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken ct) => new(IoStatus.Ok);
        public void Dispose() { }
    }
}
