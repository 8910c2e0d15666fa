using Tessera.Core;
using Tessera.Core.Protocol;

namespace Tessera.Cli.Infrastructure;

// JSON shapes printed with --json. Names follow admin.proto's fields in snake_case.

public sealed record ContainerJson(uint Id, string Name, string Uri, ulong SizeBytes, ulong SegmentSizeBytes,
    ulong TotalSegments, ulong UsedSegments, ulong UsedBytes, ulong FreeBytes, string Health, string FailureReason)
{
    public static ContainerJson From(ContainerView c) => new(c.Id, c.Name, c.Uri, c.SizeBytes, c.SegmentSizeBytes,
        c.TotalSegments, c.UsedSegments, c.UsedBytes, c.FreeBytes, c.Health, c.FailureReason);
}

public sealed record PresentationJson(string Host, bool ReadOnly);

public sealed record DiskJson(ulong Id, string Name, ulong SizeBytes, uint SegmentSizeBytes, ulong SegmentCount,
    ulong AllocatedSegments, ulong AllocatedBytes, PresentationJson[] Presentations, string CreatedAt)
{
    public static DiskJson From(DiskView d) => new(d.Id, d.Name, d.SizeBytes, d.SegmentSizeBytes, d.SegmentCount,
        d.AllocatedSegments, d.AllocatedBytes, d.Presentations.Select(p => new PresentationJson(p.Host, p.ReadOnly)).ToArray(), d.CreatedAt);
}

public sealed record MapRangeJson(ulong FirstSegment, ulong Count, string State, uint ContainerId, string Container, ulong FirstPhysicalSegment)
{
    public static MapRangeJson From(MapRange r) => new(r.FirstSegment, r.Count, r.State, r.ContainerId, r.Container, r.FirstPhysicalSegment);
}

public sealed record DiskMapJson(DiskJson Disk, MapRangeJson[] Ranges);

public sealed record HostJson(string Host, string NbdAddress, ulong Incarnation, bool Connected, string LeaseExpiresAt,
    string LastHeartbeatAt, string[] Disks)
{
    public static HostJson From(HostView h) => new(h.Host, h.NbdAddress, h.Incarnation, h.Connected, h.LeaseExpiresAt,
        h.LastHeartbeatAt, h.Disks.ToArray());
}

public sealed record StatusJson(string Controller, ulong ControllerEpoch, string StartedAt, uint Containers, uint Disks,
    uint HostsConnected, ulong PoolSizeBytes, ulong PoolUsedBytes, string DataDir, string Version)
{
    public static StatusJson From(string url, StatusReply s) => new(url, s.ControllerEpoch, s.StartedAt, s.Containers, s.Disks,
        s.HostsConnected, s.PoolSizeBytes, s.PoolUsedBytes, s.DataDir, s.Version);
}

public sealed record ContainersJson(ContainerJson[] Containers);
public sealed record DisksJson(DiskJson[] Disks);
public sealed record HostsJson(HostJson[] Hosts);

/// <summary>The answer to commands that change something and return nothing (delete, present, unpresent).</summary>
public sealed record DoneJson(string Action, string Disk, string? Host = null, bool? ReadOnly = null);

public static class Format
{
    public static string Size(ulong bytes) => ByteSize.Format(checked((long)bytes));

    public static string Presentations(IEnumerable<PresentationView> presentations)
    {
        var text = string.Join(", ", presentations.Select(p => p.ReadOnly ? $"{p.Host} (ro)" : p.Host));
        return text.Length == 0 ? "-" : text;
    }

    public static string OrDash(string? text) => string.IsNullOrEmpty(text) ? "-" : text;

    /// <summary>An ISO-8601 timestamp from the controller, shortened to the second for tables (JSON keeps it whole).</summary>
    public static string Time(string? text) =>
        DateTimeOffset.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.None, out var t)
            ? t.ToString("yyyy-MM-dd HH:mm:ssK", System.Globalization.CultureInfo.InvariantCulture)
            : OrDash(text);
}
