using BenchmarkDotNet.Attributes;
using Tessera.Core;

namespace Tessera.Benchmarks;

/// <summary>
/// The agent's whole data path below the socket: <c>VolumeExport</c> (what the NBD server calls) → DiskVolume
/// (split, gate, lookup) → container, on a disk whose every segment is mapped. <c>ContainerDirect</c> is the same
/// I/O straight to the container with no table: the difference is what the mapping costs.
/// </summary>
[MemoryDiagnoser]
public class DataPathBenchmarks
{
    private const long DiskBytes = 64L << 20;
    private const int SegmentBytes = 1 << 20;
    private const int Ops = 64;

    [Params("memory", "file")]
    public string Container { get; set; } = "memory";

    [Params(4096, 1 << 20)]
    public int IoBytes { get; set; }

    private MappedDisk _disk = null!;
    private byte[] _buffer = null!;
    private long[] _offsets = null!;

    [GlobalSetup]
    public void Setup()
    {
        _disk = new MappedDisk(Container, DiskBytes, SegmentBytes);
        _buffer = new byte[IoBytes];
        Random.Shared.NextBytes(_buffer);
        _offsets = Sync.Offsets(Ops, DiskBytes, IoBytes, alignBytes: IoBytes);
    }

    [GlobalCleanup]
    public void Cleanup() => _disk.Dispose();

    [Benchmark(OperationsPerInvoke = Ops)]
    public void Read()
    {
        var export = _disk.Export;
        var buffer = _buffer.AsMemory();
        foreach (var offset in _offsets) Sync.Result(export.ReadAsync(offset, buffer, null, default));
    }

    [Benchmark(OperationsPerInvoke = Ops)]
    public void Write()
    {
        var export = _disk.Export;
        var data = (ReadOnlyMemory<byte>)_buffer;
        foreach (var offset in _offsets) Sync.Result(export.WriteAsync(offset, data, fua: false, default));
    }

    /// <summary>Identity baseline: the container alone, no table, no gate.</summary>
    [Benchmark(OperationsPerInvoke = Ops, Baseline = true)]
    public void ContainerDirectRead()
    {
        var container = _disk.Container;
        var buffer = _buffer.AsMemory();
        foreach (var offset in _offsets) Sync.Result(container.ReadAsync(offset, buffer));
    }
}

/// <summary>
/// Requests that cross segment boundaries: the split into pieces, one gate entry and lookup per piece, and the
/// gathering of results. 64 KiB segments so a 1 MiB request is 16 or 17 pieces.
/// </summary>
[MemoryDiagnoser]
public class SplitBenchmarks
{
    private const long DiskBytes = 16L << 20;
    private const int SegmentBytes = 64 << 10;
    private MappedDisk _disk = null!;
    private byte[] _small = null!;
    private byte[] _large = null!;

    [GlobalSetup]
    public void Setup()
    {
        _disk = new MappedDisk("memory", DiskBytes, SegmentBytes);
        _small = new byte[8192];
        _large = new byte[1 << 20];
    }

    [GlobalCleanup]
    public void Cleanup() => _disk.Dispose();

    [Benchmark(Baseline = true)]
    public IoStatus Read8KiB_OnePiece() => Sync.Result(_disk.Volume.ReadAsync(SegmentBytes, _small, null, default));

    [Benchmark]
    public IoStatus Read8KiB_TwoPieces() => Sync.Result(_disk.Volume.ReadAsync(SegmentBytes - 4096, _small, null, default));

    [Benchmark]
    public IoStatus Write8KiB_TwoPieces() => Sync.Result(_disk.Volume.WriteAsync(SegmentBytes - 4096, _small, default));

    [Benchmark]
    public IoStatus Read1MiB_16Pieces() => Sync.Result(_disk.Volume.ReadAsync(0, _large, null, default));

    [Benchmark]
    public IoStatus Read1MiB_17Pieces() => Sync.Result(_disk.Volume.ReadAsync(4096, _large, null, default));

    [Benchmark]
    public IoStatus Write1MiB_17Pieces() => Sync.Result(_disk.Volume.WriteAsync(4096, _large, default));
}
