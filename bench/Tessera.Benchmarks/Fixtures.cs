using Tessera.Agent;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;

namespace Tessera.Benchmarks;

/// <summary>
/// A disk whose every segment is mapped, built in-process without a controller: a <see cref="DiskVolume"/> over
/// one container, with the table filled so that segment i lives at physical segment (n - 1 - i). The reversal
/// makes the mapping real (a bug that ignored the table would read the wrong bytes) while costing the same as
/// any other permutation.
/// </summary>
public sealed class MappedDisk : IDisposable
{
    public const ushort ContainerId = 1;

    private readonly string? _tempFile;

    public MappedDisk(string kind, long diskBytes, int segmentBytes)
    {
        long containerBytes = diskBytes;
        if (kind == "memory")
        {
            Container = new MemoryContainer("mem://bench", containerBytes);
        }
        else if (kind == "file")
        {
            _tempFile = Path.Combine(Path.GetTempPath(), $"tessera-bench-{Environment.ProcessId}-{Guid.NewGuid():N}.img");
            var uri = new Uri(_tempFile).AbsoluteUri;
            FileContainer.CreateSparse(uri, containerBytes);
            Container = FileContainer.Open(uri);
            // Fill the file so every read hits the page cache, like the 1 GiB file of bench/nbd-peers.sh.
            var chunk = new byte[1 << 20];
            Random.Shared.NextBytes(chunk);
            for (long at = 0; at < containerBytes; at += chunk.Length)
                Container.WriteAsync(at, chunk.AsMemory(0, (int)Math.Min(chunk.Length, containerBytes - at))).AsTask().GetAwaiter().GetResult();
            Recache(_tempFile, containerBytes);
        }
        else throw new ArgumentException($"unknown container kind {kind}", nameof(kind));

        var registry = new ContainerRegistry(_ => Container);
        Containers = new ContainerSet(registry);
        Containers.Upsert(ContainerId, "bench", Container.Uri, failed: false);
        Volume = new DiskVolume(diskId: 1, "bench", diskBytes, segmentBytes, readOnly: false, "", Containers, NoFaults.Instance);
        long segments = Volume.Table.SegmentCount;
        long unitsPerSegment = segmentBytes / MapEntry.PhysicalUnitBytes;
        Volume.Table.SetRange(0, segments, i => MapEntry.Mapped(ContainerId, (segments - 1 - i) * unitsPerSegment));
        Export = new VolumeExport(Volume, Containers);
    }

    public IStorageContainer Container { get; }
    public ContainerSet Containers { get; }
    public DiskVolume Volume { get; }
    public VolumeExport Export { get; }

    public void Dispose()
    {
        Container.Dispose();
        if (_tempFile != null) File.Delete(_tempFile);
    }

    /// <summary>
    /// Flushes the file, drops it from the page cache and reads it back in 256 KiB reads. Written in 1 MiB writes,
    /// its cached pages would be large folios, on which ext4 charges several times more per 4 KiB write than on the
    /// pages a read brings in (see docs/benchmarks.md): that would measure the fill, not the data path.
    /// </summary>
    private static void Recache(string path, long length)
    {
        using (var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite))
        {
            RandomAccess.FlushToDisk(handle);
            if (OperatingSystem.IsLinux()) posix_fadvise((int)handle.DangerousGetHandle(), 0, 0, PosixFadvDontNeed);
        }
        using var read = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        var buffer = new byte[256 << 10];
        for (long at = 0; at < length; at += buffer.Length) RandomAccess.Read(read, buffer, at);
    }

    private const int PosixFadvDontNeed = 4;

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int posix_fadvise(int fd, long offset, long length, int advice);

    /// <summary>Every segment is mapped, so a fault means the benchmark is measuring the wrong thing.</summary>
    private sealed class NoFaults : IFaultSink
    {
        public static readonly NoFaults Instance = new();

        public ValueTask<FaultResult> FaultAsync(DiskVolume volume, long segment, bool write, MapEntry seen, CancellationToken cancellationToken) =>
            throw new InvalidOperationException($"unexpected map fault on segment {segment} ({seen}): the benchmark disk is fully mapped");

        public ValueTask<FaultResult> ZeroFaultAsync(DiskVolume volume, long firstSegment, long count, CancellationToken cancellationToken) =>
            throw new InvalidOperationException($"unexpected zeroing fault on segments {firstSegment}+{count}: the benchmarks do not zero");
    }
}

internal static class Sync
{
    /// <summary>Returns the result of an operation that must have completed synchronously (the steady mapped path).</summary>
    public static IoStatus Result(ValueTask<IoStatus> io)
    {
        if (!io.IsCompleted) throw new InvalidOperationException("the operation went asynchronous: not the steady path");
        var status = io.Result;
        if (status != IoStatus.Ok) throw new InvalidOperationException($"I/O failed: {status}");
        return status;
    }

    /// <summary>Offsets spread over the disk (deterministic), aligned to <paramref name="alignBytes"/>.</summary>
    public static long[] Offsets(int count, long diskBytes, int ioBytes, int alignBytes, int seed = 12345)
    {
        var random = new Random(seed);
        var offsets = new long[count];
        long slots = (diskBytes - ioBytes) / alignBytes + 1;
        for (int i = 0; i < count; i++) offsets[i] = random.NextInt64(slots) * alignBytes;
        return offsets;
    }
}
