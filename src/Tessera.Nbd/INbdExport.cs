using Tessera.Core;

namespace Tessera.Nbd;

/// <summary>What an NBD server serves: the catalogue of exports visible to one listener.</summary>
public interface INbdExportCatalog
{
    /// <summary>The exports a client may see in NBD_OPT_LIST (for an agent: the disks presented to its host).</summary>
    IReadOnlyList<NbdExportDescriptor> ListExports();

    /// <summary>
    /// Opens an export by name for one connection; returns null when no such export is visible here.
    /// The empty name selects the default export, if the catalogue has one.
    /// </summary>
    INbdExport? Open(string name);
}

public sealed record NbdExportDescriptor(string Name, string Description);

[Flags]
public enum NbdExportCapabilities
{
    None = 0,
    Flush = 1,
    Fua = 2,
    Trim = 4,
    WriteZeroes = 8,
    FastZero = 16,
    Cache = 32,
    BlockStatus = 64,
    /// <summary>A flush on any connection makes every connection's acknowledged writes durable.</summary>
    MultiConn = 128,
}

/// <summary>base:allocation flags of one extent (NBD_STATE_HOLE = 1, NBD_STATE_ZERO = 2).</summary>
[Flags]
public enum NbdExtentFlags : uint
{
    Data = 0,
    Hole = 1,
    Zero = 2,
}

public readonly record struct NbdExtent(long Offset, long Length, NbdExtentFlags Flags);

/// <summary>
/// A reusable list of extents owned by one connection, so block status and sparse reads allocate nothing per
/// request. Appending an extent that continues the previous one with the same flags merges the two.
/// </summary>
public sealed class NbdExtentList
{
    private NbdExtent[] _items = new NbdExtent[16];

    public int Count { get; private set; }

    public NbdExtent this[int index] => index < Count ? _items[index] : throw new ArgumentOutOfRangeException(nameof(index));

    public void Clear() => Count = 0;

    /// <summary>Sorts by offset and merges neighbours (extents appended out of order by concurrent pieces).</summary>
    public void SortByOffset()
    {
        bool sorted = true;
        for (int i = 1; i < Count && sorted; i++) sorted = _items[i - 1].Offset <= _items[i].Offset;
        if (sorted) return;
        Array.Sort(_items, 0, Count, Comparer<NbdExtent>.Create((a, b) => a.Offset.CompareTo(b.Offset)));
        int n = Count;
        Count = 0;
        for (int i = 0; i < n; i++)
        {
            var e = _items[i];
            Add(e.Offset, e.Length, e.Flags);
        }
    }

    public void Add(long offset, long length, NbdExtentFlags flags)
    {
        if (length <= 0) return;
        if (Count > 0)
        {
            ref var last = ref _items[Count - 1];
            if (last.Flags == flags && last.Offset + last.Length == offset)
            {
                last = last with { Length = last.Length + length };
                return;
            }
        }
        if (Count == _items.Length) Array.Resize(ref _items, _items.Length * 2);
        _items[Count++] = new NbdExtent(offset, length, flags);
    }
}

/// <summary>
/// One export opened by one connection. Every operation returns an <see cref="IoStatus"/>; the NBD layer turns
/// it into an NBD error in one place. Offsets and lengths have been validated against <see cref="SizeBytes"/>
/// by the caller. Operations may run concurrently on one export.
/// </summary>
public interface INbdExport : IDisposable
{
    string Name { get; }

    string Description { get; }

    /// <summary>Size at open time; a connection keeps the size it was given during the handshake.</summary>
    long SizeBytes { get; }

    bool ReadOnly { get; }

    NbdExportCapabilities Capabilities { get; }

    /// <summary>Cancelled when the export goes away (unpresented, agent stopping): the connection ends with ESHUTDOWN.</summary>
    CancellationToken Closed { get; }

    /// <summary>
    /// Reads <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>. When <paramref name="zeroExtents"/>
    /// is not null, the export appends the ranges that read as zeros because of table state (thin, never written)
    /// and need not fill those parts of the buffer; the caller sends them as holes.
    /// </summary>
    ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken);

    ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken);

    ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken);

    ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken);

    /// <summary>
    /// Makes the range read as zeros. With <paramref name="fastZero"/>, returns <see cref="IoStatus.NotSupported"/>
    /// unless zeroing is cheap (a table change). <paramref name="noHole"/> asks to keep the range allocated.
    /// </summary>
    ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken cancellationToken);

    ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken cancellationToken);

    /// <summary>Appends base:allocation extents covering at least the first byte of the range (at most its end).</summary>
    ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken cancellationToken);
}
