using Tessera.Core;
using Tessera.Nbd;

namespace Tessera.Agent;

/// <summary>The NBD view of this agent: one export per disk presented to its host, named after the disk.</summary>
public sealed class AgentCatalog(AgentCore core) : INbdExportCatalog
{
    public IReadOnlyList<NbdExportDescriptor> ListExports()
    {
        var list = new List<NbdExportDescriptor>();
        foreach (var v in core.Volumes) if (!v.IsClosed) list.Add(new NbdExportDescriptor(v.Name, v.Description));
        list.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        return list;
    }

    public INbdExport? Open(string name)
    {
        var volume = name.Length == 0 && core.Volumes.Count == 1 ? core.Volumes.First() : core.FindVolume(name);
        return volume is null || volume.IsClosed ? null : new VolumeExport(volume, core.Containers);
    }
}

/// <summary>One NBD connection's handle on a <see cref="DiskVolume"/>.</summary>
public sealed class VolumeExport(DiskVolume volume, ContainerSet containers) : INbdExport
{
    private readonly long _sizeBytes = volume.SizeBytes;
    private readonly bool _readOnly = volume.ReadOnly;

    public string Name => volume.Name;
    public string Description => volume.Description;
    public long SizeBytes => _sizeBytes;
    public bool ReadOnly => _readOnly;

    // Flush makes every container written by anyone durable, so a flush on one connection covers all: MultiConn.
    public NbdExportCapabilities Capabilities =>
        NbdExportCapabilities.Flush | NbdExportCapabilities.Fua | NbdExportCapabilities.Trim | NbdExportCapabilities.WriteZeroes |
        NbdExportCapabilities.FastZero | NbdExportCapabilities.Cache | NbdExportCapabilities.BlockStatus | NbdExportCapabilities.MultiConn;

    public CancellationToken Closed => volume.Closed;

    public async ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken)
    {
        var status = await volume.ReadAsync(offset, buffer, zeroExtents, cancellationToken);
        if (zeroExtents is { Count: > 1 }) SortIfNeeded(zeroExtents);
        return status;
    }

    public async ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken)
    {
        if (_readOnly) return IoStatus.NotPermitted;
        var status = await volume.WriteAsync(offset, data, cancellationToken);
        if (status == IoStatus.Ok && fua) status = await containers.FlushDirtyAsync(cancellationToken);
        return status;
    }

    public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken) => containers.FlushDirtyAsync(cancellationToken);

    public async ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken)
    {
        if (_readOnly) return IoStatus.NotPermitted;
        var status = await volume.TrimAsync(offset, length, cancellationToken);
        if (status == IoStatus.Ok && fua) status = await containers.FlushDirtyAsync(cancellationToken);
        return status;
    }

    public async ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken cancellationToken)
    {
        if (_readOnly) return IoStatus.NotPermitted;
        var status = await volume.WriteZeroesAsync(offset, length, fastZero, noHole, cancellationToken);
        if (status == IoStatus.Ok && fua) status = await containers.FlushDirtyAsync(cancellationToken);
        return status;
    }

    public ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken cancellationToken) => new(IoStatus.Ok);

    public ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken cancellationToken) =>
        volume.GetExtentsAsync(offset, length, extents, cancellationToken);

    public void Dispose() { }

    // Pieces that waited on a fault can finish out of order; the list is tiny, so an insertion sort is enough.
    private static void SortIfNeeded(NbdExtentList list)
    {
        bool sorted = true;
        for (int i = 1; i < list.Count && sorted; i++) sorted = list[i - 1].Offset <= list[i].Offset;
        if (sorted) return;
        var items = new NbdExtent[list.Count];
        for (int i = 0; i < items.Length; i++) items[i] = list[i];
        Array.Sort(items, (a, b) => a.Offset.CompareTo(b.Offset));
        list.Clear();
        foreach (var e in items) list.Add(e.Offset, e.Length, e.Flags);
    }
}
