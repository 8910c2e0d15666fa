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
public sealed class VolumeExport(DiskVolume volume, ContainerSet containers) : INbdExport, INbdMappedReadExport, INbdSplicedWriteExport
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

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken) =>
        volume.ReadAsync(offset, buffer, zeroExtents, cancellationToken);

    public NbdMappedRead CreateMappedRead() => new VolumeMappedRead();

    public bool CanMapRead(long offset, int length) => volume.CanMapRead(offset, length);

    public bool TryBeginMappedRead(long offset, int length, NbdMappedRead read) =>
        volume.TryBeginMappedRead(offset, length, (VolumeMappedRead)read);

    public NbdSplicedWrite CreateSplicedWrite() => new VolumeSplicedWrite();

    public bool CanSpliceWrite(long offset, int length) => !_readOnly && volume.CanSpliceWrite(offset, length);

    public bool TryBeginSplicedWrite(long offset, int length, NbdSplicedWrite write) =>
        !_readOnly && volume.TryBeginSplicedWrite(offset, length, (VolumeSplicedWrite)write);

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
}
