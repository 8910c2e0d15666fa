using Tessera.Core;
using Tessera.Core.Containers;

namespace Tessera.Agent;

/// <summary>
/// The containers this agent may reach, indexed by the container id stored in map entries. A lookup is one array
/// load; the array is replaced (copy on write) on the rare updates the controller sends.
/// </summary>
public sealed class ContainerSet
{
    private readonly ContainerRegistry _registry;
    private volatile Slot?[] _slots = new Slot?[16];

    public ContainerSet(ContainerRegistry registry) => _registry = registry;

    public sealed class Slot
    {
        public required uint Id { get; init; }
        public required string Name { get; init; }
        public required string Uri { get; init; }
        public IStorageContainer? Container { get; init; }
        public bool Failed { get; init; }
        public string? FailureReason { get; init; }

        /// <summary>
        /// Written since the last flush. Shared by every slot that replaces this one for the same id (the controller
        /// re-sends the container list on each registration): a write acknowledged before the replacement, or
        /// completing into the old slot after it, must still be flushed by the next FLUSH.
        /// </summary>
        internal DirtyMark Dirty { get; init; } = new();
    }

    internal sealed class DirtyMark
    {
        /// <summary>Set after a write completes, cleared by the flush that makes it durable.</summary>
        public int Value;

        /// <summary>
        /// One flush of this container at a time. Without it a second flush could find the flag already cleared by a
        /// first whose fdatasync has not returned yet, and answer before the writes it must cover are durable.
        /// </summary>
        public readonly SemaphoreSlim FlushGate = new(1, 1);
    }

    /// <summary>Called when an operation on a container returns <see cref="IoStatus.IoError"/> (set before any Upsert).</summary>
    public Action<uint, string>? IoErrorObserved { get; set; }

    internal void OnIoError(uint id, string what) => IoErrorObserved?.Invoke(id, what);

    public Slot? Get(ushort id)
    {
        var slots = _slots;
        return id < slots.Length ? slots[id] : null;
    }

    /// <summary>Adds or replaces a container. Opening failures mark the slot failed instead of throwing.</summary>
    public Slot Upsert(uint id, string name, string uri, bool failed)
    {
        IStorageContainer? container = null;
        string? reason = failed ? "marked failed by the controller" : null;
        if (!failed)
        {
            try { container = _registry.Open(uri); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
            {
                reason = e.Message;
            }
        }
        if (container is not null && IoErrorObserved is not null) container = new ReportingContainer(container, id, this);
        Slot slot;
        lock (this)
        {
            var slots = _slots;
            var previous = id < slots.Length ? slots[id] : null;
            slot = new Slot { Id = id, Name = name, Uri = uri, Container = container, Failed = container is null, FailureReason = reason, Dirty = previous?.Dirty ?? new DirtyMark() };
            if (id >= slots.Length)
            {
                var grown = new Slot?[Math.Max(id + 1, (uint)slots.Length * 2)];
                Array.Copy(slots, grown, slots.Length);
                slots = grown;
            }
            else
            {
                slots = (Slot?[])slots.Clone();
            }
            slots[id] = slot;
            _slots = slots;
        }
        return slot;
    }

    /// <summary>Flushes every container written since its last flush: afterwards every write acknowledged before the call is durable.</summary>
    public async ValueTask<IoStatus> FlushDirtyAsync(CancellationToken cancellationToken)
    {
        var result = IoStatus.Ok;
        foreach (var slot in _slots)
        {
            // Not skipped on a clear flag without the gate: a flush in progress may have cleared it.
            if (slot?.Container is null) continue;
            var mark = slot.Dirty;
            await mark.FlushGate.WaitAsync(cancellationToken);
            try
            {
                // Re-checked under the gate: a flush that finished meanwhile covered every write completed before it.
                if (Interlocked.Exchange(ref mark.Value, 0) == 0) continue;
                var status = await slot.Container.FlushAsync(cancellationToken);
                if (status != IoStatus.Ok)
                {
                    Volatile.Write(ref mark.Value, 1); // still not durable
                    result = status;
                }
            }
            finally
            {
                mark.FlushGate.Release();
            }
        }
        return result;
    }
}
