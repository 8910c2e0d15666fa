using Tessera.Controller.Allocation;
using Tessera.Controller.Store;
using Tessera.Core.Mapping;

namespace Tessera.Controller.Tests.StoreCrash;

/// <summary>
/// The invariants a recovered store must hold, checked through the store's public reads and the rebuilt pool.
/// Returns every violation as a sentence (empty = all hold), so a failure names what broke.
/// </summary>
public static class StoreInvariants
{
    /// <param name="lineageOf">Maps a disk name to its lineage (a disk, its snapshots and their clones share one); only disks of one lineage may name the same location.</param>
    /// <param name="pool">When given, its used units must be exactly the units the segment map names (call it with no job running).</param>
    public static List<string> Check(ControllerStore store, Func<string, string> lineageOf, SpacePool? pool)
    {
        var problems = new List<string>();
        var containers = store.ListContainers().ToDictionary(c => c.Id);
        var disks = store.ListDisks().ToDictionary(d => d.Id);
        var referenced = new Dictionary<ushort, SortedDictionary<long, (int Units, HashSet<ulong> Disks)>>();

        foreach (var row in store.AllSegments())
        {
            if (!disks.TryGetValue(row.DiskId, out var disk))
            {
                problems.Add($"segment row {row.DiskId}/{row.Segment} belongs to no disk");
                continue;
            }
            if (row.Segment < 0 || row.Segment >= disk.SegmentCount)
                problems.Add($"disk {disk.Name} has a row for segment {row.Segment}, beyond its {disk.SegmentCount} segments");
            var entry = row.Entry;
            if (entry.ContainerId == 0) continue; // Zero rows name no space
            int units = disk.UnitsPerSegment;
            if (!containers.TryGetValue(entry.ContainerId, out var container))
            {
                problems.Add($"disk {disk.Name} segment {row.Segment} names unknown container {entry.ContainerId}");
                continue;
            }
            long containerUnits = container.SizeBytes / MapEntry.PhysicalUnitBytes;
            if (entry.PhysicalIndex < 0 || entry.PhysicalIndex + units > containerUnits)
                problems.Add($"disk {disk.Name} segment {row.Segment} names units {entry.PhysicalIndex}+{units}, outside container {container.Name} ({containerUnits} units)");
            if (!referenced.TryGetValue(entry.ContainerId, out var locations)) referenced[entry.ContainerId] = locations = new();
            if (!locations.TryGetValue(entry.PhysicalIndex, out var at)) locations[entry.PhysicalIndex] = at = (units, new());
            else if (at.Units != units)
                problems.Add($"container {container.Name} unit {entry.PhysicalIndex} is named with {at.Units} and with {units} units (segment sizes differ)");
            at.Disks.Add(disk.Id);
        }

        foreach (var (containerId, locations) in referenced)
        {
            long end = long.MinValue;
            long endOf = 0;
            foreach (var (first, (units, owners)) in locations)
            {
                var lineages = owners.Select(d => lineageOf(disks[d].Name)).Distinct().ToList();
                if (lineages.Count > 1)
                    problems.Add($"container {containerId} unit {first} is named by unrelated disks {string.Join(", ", owners.Select(d => disks[d].Name))}");
                if (first < end)
                    problems.Add($"container {containerId} units {first}+{units} overlap the location at {endOf}");
                if (first + units > end)
                {
                    end = first + units;
                    endOf = first;
                }
            }
        }

        foreach (var snapshot in store.ListSnapshots())
            if (!snapshot.Ready) problems.Add($"half-created snapshot {snapshot.Disk.Name} survived the start");

        foreach (var presentation in store.ListPresentations())
            if (!disks.ContainsKey(presentation.DiskId)) problems.Add($"presentation of missing disk {presentation.DiskId} to {presentation.Host}");

        if (pool is not null)
        {
            foreach (var container in containers.Values)
            {
                long containerUnits = container.SizeBytes / MapEntry.PhysicalUnitBytes;
                var named = new bool[containerUnits];
                if (referenced.TryGetValue(container.Id, out var locations))
                    foreach (var (first, (units, _)) in locations)
                        for (long u = first; u < first + units && u < containerUnits; u++)
                            if (u >= 0) named[u] = true;
                int leaked = 0, missing = 0;
                long firstBad = -1;
                for (long u = 0; u < containerUnits; u++)
                {
                    bool used = pool.IsUnitUsed(container.Id, u);
                    if (used == named[u]) continue;
                    if (used) leaked++;
                    else missing++;
                    if (firstBad < 0) firstBad = u;
                }
                if (leaked + missing > 0)
                    problems.Add($"allocator disagrees with the segment map on container {container.Name}: {leaked} units used but unnamed, {missing} named but free (first at unit {firstBad})");
            }
        }
        return problems;
    }
}
