using Tessera.Core;
using Tessera.Core.Containers;

namespace Tessera.Nbd;

/// <summary>
/// The exports of <c>tessera store</c>: local files or block devices served as plain NBD exports, so a machine
/// with disks can offer them to a Tessera pool as <c>nbd://</c> containers. No table, no controller: bytes in,
/// bytes out, fdatasync on flush.
/// </summary>
public sealed class FileStoreCatalog : INbdExportCatalog, IDisposable
{
    private readonly Dictionary<string, FileContainer> _files = new(StringComparer.Ordinal);

    /// <summary>Opens every NAME=PATH pair; throws with a clear message when a file cannot be opened.</summary>
    public FileStoreCatalog(IEnumerable<(string Name, string Path)> exports)
    {
        foreach (var (name, path) in exports)
        {
            if (_files.ContainsKey(name)) throw new ArgumentException($"export '{name}' is given twice");
            _files[name] = FileContainer.Open("file://" + System.IO.Path.GetFullPath(path));
        }
    }

    public IReadOnlyList<NbdExportDescriptor> ListExports() =>
        _files.Select(kv => new NbdExportDescriptor(kv.Key, kv.Value.Uri)).OrderBy(e => e.Name, StringComparer.Ordinal).ToList();

    public INbdExport? Open(string name)
    {
        if (name.Length == 0 && _files.Count == 1) name = _files.Keys.First();
        return _files.TryGetValue(name, out var file) ? new FileExport(name, file) : null;
    }

    public void Dispose()
    {
        foreach (var f in _files.Values) f.Dispose();
    }

    private sealed class FileExport(string name, FileContainer file) : INbdExport
    {
        public string Name => name;
        public string Description => file.Uri;
        public long SizeBytes => file.SizeBytes;
        public bool ReadOnly => false;

        // fdatasync covers every connection's writes to the file, so a flush on any connection is enough: MultiConn.
        public NbdExportCapabilities Capabilities =>
            NbdExportCapabilities.Flush | NbdExportCapabilities.Fua | NbdExportCapabilities.WriteZeroes | NbdExportCapabilities.Trim |
            NbdExportCapabilities.Cache | NbdExportCapabilities.MultiConn;

        public CancellationToken Closed => CancellationToken.None;

        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken) =>
            file.ReadAsync(offset, buffer, cancellationToken);

        public async ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken)
        {
            var status = await file.WriteAsync(offset, data, cancellationToken);
            return status == IoStatus.Ok && fua ? await file.FlushAsync(cancellationToken) : status;
        }

        public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken) => file.FlushAsync(cancellationToken);

        public ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken) => new(IoStatus.Ok);

        public async ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken cancellationToken)
        {
            if (fastZero) return IoStatus.NotSupported; // punching a hole may fall back to writing: never promise fast
            var status = await file.ZeroAsync(offset, length, cancellationToken);
            return status == IoStatus.Ok && fua ? await file.FlushAsync(cancellationToken) : status;
        }

        public ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken cancellationToken) => new(IoStatus.Ok);

        public ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken cancellationToken)
        {
            extents.Add(offset, length, NbdExtentFlags.Data);
            return new(IoStatus.Ok);
        }

        public void Dispose() { }
    }
}
