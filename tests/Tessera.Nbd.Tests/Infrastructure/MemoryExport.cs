using Tessera.Core;

namespace Tessera.Nbd.Tests.Infrastructure;

/// <summary>
/// A reference model of a disk for tests: bytes plus a per-64 KiB "hole" map. Never-written and trimmed blocks are
/// holes; reads report them as zero extents and deliberately leave 0xEE garbage in the caller's buffer there, so a
/// server that sends hole bytes as data is caught. Shared by every connection that opens it.
/// </summary>
public sealed class MemoryExport : INbdExport
{
    public const int BlockBytes = 64 * 1024;
    private readonly byte[] _data;
    private readonly bool[] _hole;
    private readonly object _lock = new();
    private readonly CancellationTokenSource _closed = new();

    public MemoryExport(string name, long sizeBytes, bool readOnly = false,
        NbdExportCapabilities caps = NbdExportCapabilities.Flush | NbdExportCapabilities.Fua | NbdExportCapabilities.Trim
            | NbdExportCapabilities.WriteZeroes | NbdExportCapabilities.FastZero | NbdExportCapabilities.Cache
            | NbdExportCapabilities.BlockStatus | NbdExportCapabilities.MultiConn)
    {
        Name = name;
        SizeBytes = sizeBytes;
        ReadOnly = readOnly;
        Capabilities = caps;
        _data = new byte[sizeBytes];
        _hole = new bool[(sizeBytes + BlockBytes - 1) / BlockBytes];
        Array.Fill(_hole, true);
    }

    public string Name { get; }
    public string Description { get; set; } = "in-memory test disk";
    public long SizeBytes { get; }
    public bool ReadOnly { get; }
    public NbdExportCapabilities Capabilities { get; }
    public CancellationToken Closed => _closed.Token;

    /// <summary>When false, WriteZeroes with FAST_ZERO answers NotSupported (zeroing would cost a write).</summary>
    public bool FastZeroIsCheap { get; set; } = true;

    /// <summary>When set, every operation waits for it (or for cancellation) before running.</summary>
    public TaskCompletionSource? Gate { get; set; }

    /// <summary>When set, only reads at this offset wait for <see cref="Gate"/>.</summary>
    public long? GateOnlyReadsAt { get; set; }

    public int Flushes;
    public int FuaWrites;
    public int Caches;
    public int OperationsStarted;

    public byte[] Snapshot() { lock (_lock) return (byte[])_data.Clone(); }

    public bool IsHole(long offset) { lock (_lock) return _hole[offset / BlockBytes]; }

    public void Close() => _closed.Cancel();

    public void Dispose() { }

    private async ValueTask WaitGateAsync(CancellationToken ct, long? readOffset = null)
    {
        Interlocked.Increment(ref OperationsStarted);
        if (Gate is { } g && (GateOnlyReadsAt == null || GateOnlyReadsAt == readOffset)) await g.Task.WaitAsync(ct);
    }

    public async ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken ct)
    {
        await WaitGateAsync(ct, offset);
        lock (_lock)
        {
            _data.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span);
            if (zeroExtents == null) return IoStatus.Ok;
            long end = offset + buffer.Length;
            for (long b = offset / BlockBytes * BlockBytes; b < end; b += BlockBytes)
            {
                if (!_hole[b / BlockBytes]) continue;
                long s = Math.Max(b, offset), t = Math.Min(b + BlockBytes, end);
                buffer.Span.Slice((int)(s - offset), (int)(t - s)).Fill(0xEE);
                zeroExtents.Add(s, t - s, NbdExtentFlags.Hole | NbdExtentFlags.Zero);
            }
        }
        return IoStatus.Ok;
    }

    public async ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct)
    {
        await WaitGateAsync(ct);
        lock (_lock)
        {
            data.Span.CopyTo(_data.AsSpan((int)offset));
            for (long b = offset / BlockBytes; b * BlockBytes < offset + data.Length; b++) _hole[b] = false;
            if (fua) FuaWrites++;
        }
        return IoStatus.Ok;
    }

    public async ValueTask<IoStatus> FlushAsync(CancellationToken ct)
    {
        await WaitGateAsync(ct);
        Interlocked.Increment(ref Flushes);
        return IoStatus.Ok;
    }

    public async ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken ct)
    {
        await WaitGateAsync(ct);
        Zero(offset, length, punch: true);
        return IoStatus.Ok;
    }

    public async ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken ct)
    {
        await WaitGateAsync(ct);
        if (fastZero && !FastZeroIsCheap) return IoStatus.NotSupported;
        Zero(offset, length, punch: !noHole);
        return IoStatus.Ok;
    }

    private void Zero(long offset, long length, bool punch)
    {
        lock (_lock)
        {
            _data.AsSpan((int)offset, (int)length).Clear();
            for (long b = offset / BlockBytes; b * BlockBytes < offset + length; b++)
            {
                bool whole = b * BlockBytes >= offset && (b + 1) * BlockBytes <= offset + length;
                if (punch && whole) _hole[b] = true;
                else if (!punch) _hole[b] = false;
            }
        }
    }

    public async ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken ct)
    {
        await WaitGateAsync(ct);
        Interlocked.Increment(ref Caches);
        return IoStatus.Ok;
    }

    public async ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken ct)
    {
        await WaitGateAsync(ct);
        lock (_lock)
        {
            long end = offset + length;
            for (long b = offset / BlockBytes * BlockBytes; b < end; b += BlockBytes)
            {
                long s = Math.Max(b, offset), t = Math.Min(b + BlockBytes, end);
                extents.Add(s, t - s, _hole[b / BlockBytes] ? NbdExtentFlags.Hole | NbdExtentFlags.Zero : NbdExtentFlags.Data);
            }
        }
        return IoStatus.Ok;
    }
}

public sealed class MemoryCatalog : INbdExportCatalog
{
    private readonly Dictionary<string, MemoryExport> _exports = new();

    public MemoryCatalog(params MemoryExport[] exports)
    {
        foreach (var e in exports) _exports[e.Name] = e;
    }

    public int Opens;

    public IReadOnlyList<NbdExportDescriptor> ListExports() =>
        _exports.Values.Select(e => new NbdExportDescriptor(e.Name, e.Description)).ToList();

    public INbdExport? Open(string name)
    {
        Interlocked.Increment(ref Opens);
        return _exports.GetValueOrDefault(name);
    }
}
