// Serves one file as NBD export "bench" for fio/nbdkit/qemu-nbd comparisons (see bench/README.md).
// Usage: Tessera.Nbd.Bench <file> <port> [unix-socket-path]
// Environment: INLINE_MAX, MAPPED_READ_MIN, SPLICED_WRITE_MIN set the NbdServerOptions of the same names (bytes).
using System.Net;
using Microsoft.Win32.SafeHandles;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Nbd;

var file = args[0];
var options = new NbdServerOptions
{
    TcpEndPoint = new IPEndPoint(IPAddress.Loopback, int.Parse(args[1])),
    UnixSocketPath = args.Length > 2 ? args[2] : null,
};
if (Environment.GetEnvironmentVariable("INLINE_MAX") is { } inlineMax) options.InlineMaxBytes = int.Parse(inlineMax);
// For A/B runs of the data-path options against one another (int.MaxValue turns a path off).
if (Environment.GetEnvironmentVariable("MAPPED_READ_MIN") is { } mappedMin) options.MappedReadMinBytes = int.Parse(mappedMin);
if (Environment.GetEnvironmentVariable("SPLICED_WRITE_MIN") is { } splicedMin) options.SplicedWriteMinBytes = int.Parse(splicedMin);
var export = new FileExport(file);
await using var server = new NbdServer(new SingleCatalog(export), options);
await server.StartAsync();
Console.WriteLine($"READY {server.TcpEndPoint}");
var done = new TaskCompletionSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; done.TrySetResult(); };
AppDomain.CurrentDomain.ProcessExit += (_, _) => done.TrySetResult();
await done.Task;

sealed class SingleCatalog(FileExport export) : INbdExportCatalog
{
    public IReadOnlyList<NbdExportDescriptor> ListExports() => [new(export.Name, export.Description)];
    public INbdExport? Open(string name) => name is "bench" or "" ? export : null;
}

/// <summary>
/// Synchronous positional I/O on a file (page cache): completes inline, like nbdkit's file plugin. Large reads go out
/// from a mapping of the file and large writes are spliced into it, as the agent does with its file containers
/// (docs/architecture.md, "Mapped reads", "Spliced writes"), so this server stays the agent's data path without the map.
/// </summary>
sealed class FileExport : INbdExport, INbdMappedReadExport, INbdSplicedWriteExport
{
    private readonly SafeFileHandle _handle;
    private readonly FileMapping? _mapping;
    private readonly string path;

    public FileExport(string path)
    {
        this.path = path;
        _handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        _mapping = FileMapping.TryCreate(_handle, RandomAccess.GetLength(_handle));
    }

    public NbdMappedRead CreateMappedRead() => new PlainMappedRead();
    public bool CanMapRead(long offset, int length) => _mapping is not null;
    public bool TryBeginMappedRead(long offset, int length, NbdMappedRead read) => _mapping is not null && read.TryAdd(_mapping, offset, length);

    private sealed class PlainMappedRead : NbdMappedRead
    {
        public override void End() => Clear();
    }

    public NbdSplicedWrite CreateSplicedWrite() => new PlainSplicedWrite();
    public bool CanSpliceWrite(long offset, int length) => true;
    public bool TryBeginSplicedWrite(long offset, int length, NbdSplicedWrite write) => write.TryAdd(_handle, offset, length);

    private sealed class PlainSplicedWrite : NbdSplicedWrite
    {
        public override void End(int failedRange, int errno) => Clear();
    }

    public string Name => "bench";
    public string Description => path;
    public long SizeBytes => RandomAccess.GetLength(_handle);
    public bool ReadOnly => false;
    public NbdExportCapabilities Capabilities => NbdExportCapabilities.Flush | NbdExportCapabilities.Fua | NbdExportCapabilities.MultiConn;
    public CancellationToken Closed => CancellationToken.None;
    public void Dispose() { }

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken ct)
    {
        RandomAccess.Read(_handle, buffer.Span, offset);
        return ValueTask.FromResult(IoStatus.Ok);
    }

    public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct)
    {
        RandomAccess.Write(_handle, data.Span, offset);
        return ValueTask.FromResult(IoStatus.Ok);
    }

    public ValueTask<IoStatus> FlushAsync(CancellationToken ct)
    {
        RandomAccess.FlushToDisk(_handle);
        return ValueTask.FromResult(IoStatus.Ok);
    }

    public ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken ct) => ValueTask.FromResult(IoStatus.NotSupported);
    public ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken ct) => ValueTask.FromResult(IoStatus.NotSupported);
    public ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken ct) => ValueTask.FromResult(IoStatus.Ok);

    public ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken ct)
    {
        extents.Add(offset, length, NbdExtentFlags.Data);
        return ValueTask.FromResult(IoStatus.Ok);
    }
}
