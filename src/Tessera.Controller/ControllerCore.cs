using Microsoft.Extensions.Logging;
using Tessera.Controller.Agents;
using Tessera.Controller.Allocation;
using Tessera.Controller.Mapping;
using Tessera.Controller.Store;
using Tessera.Core.Mapping;

namespace Tessera.Controller;

/// <summary>The controller's state shared by the agent channel and the admin API: store, space, sessions, coordinator.</summary>
public sealed class ControllerCore : IDisposable
{
    private readonly CancellationTokenSource _stopping = new();

    public ControllerCore(ControllerOptions options, ILoggerFactory loggerFactory)
    {
        Options = options;
        Time = options.TimeProvider;
        StartedAt = Time.GetUtcNow();
        Store = ControllerStore.Open(options.DataDirectory);
        try
        {
            Store.RollBackIncompleteSnapshots(); // a snapshot whose NoWrite push was not acknowledged never happened
            Pool = RebuildPool(Store);
        }
        catch
        {
            Store.Dispose();
            throw;
        }
        Sessions = new SessionRegistry();
        Coordinator = new DiskCoordinator(Store, Pool, Sessions, loggerFactory.CreateLogger<DiskCoordinator>(), _stopping.Token, Time, TimeSpan.FromMilliseconds(options.LeaseMs))
        {
            AllocateAheadSegments = options.AllocateAheadSegments,
        };
        Migrations = new Operations.MigrationRunner(this, loggerFactory.CreateLogger<Operations.MigrationRunner>()); // resumes unfinished jobs
    }

    public Operations.MigrationRunner Migrations { get; }

    public ControllerOptions Options { get; }
    public TimeProvider Time { get; }
    public DateTimeOffset StartedAt { get; }
    public ControllerStore Store { get; }
    public SpacePool Pool { get; }
    public SessionRegistry Sessions { get; }
    public DiskCoordinator Coordinator { get; }
    public CancellationToken Stopping => _stopping.Token;

    /// <summary>Orders container additions against the container list sent in Registered.</summary>
    public object ContainerLock { get; } = new();

    /// <summary>Free space is not persisted: it is whatever the segment map does not use.</summary>
    private static SpacePool RebuildPool(ControllerStore store)
    {
        var pool = new SpacePool();
        var containers = store.ListContainers();
        foreach (var c in containers)
            pool.AddContainer(c.Id, c.SizeBytes / MapEntry.PhysicalUnitBytes, c.Failed, store.GetHighWater(c.Id));
        var segmentSizes = store.ListDisks().ToDictionary(d => d.Id, d => d.UnitsPerSegment);
        var seen = new HashSet<PhysicalLocation>(); // snapshots and clones share locations: mark each once
        foreach (var row in store.AllSegments())
            if (row.Entry.ContainerId != 0 && seen.Add(new(row.Entry.ContainerId, row.Entry.PhysicalIndex)))
                pool.MarkUsed(row.Entry.ContainerId, row.Entry.PhysicalIndex, segmentSizes[row.DiskId]);
        // A mapped unit above the persisted mark breaks the mark's invariant (it cannot happen when every writer
        // followed the rule); persist what the map proves, so that freeing such a unit later cannot make it "never used".
        foreach (var c in containers)
            store.AdvanceHighWater(c.Id, pool.HighWaterUnit(c.Id));
        return pool;
    }

    public void Stop()
    {
        _stopping.Cancel();
        Sessions.CloseAll("controller stopping");
    }

    public void Dispose()
    {
        Stop();
        Migrations.WaitStopped();
        Store.Dispose();
        _stopping.Dispose();
    }
}
