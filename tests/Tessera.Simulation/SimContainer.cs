using Tessera.Core;
using Tessera.Core.Containers;

namespace Tessera.Simulation;

/// <summary>
/// A simulated block device: bytes in memory, a durable image for power loss, and per-opener handles so every
/// write is attributed to the process incarnation that issued it (and a dead incarnation's handle writes nothing).
/// </summary>
public sealed class SimContainer(Simulation sim, string name, long sizeBytes)
{
    public const int SectorBytes = 512;

    private readonly byte[] _data = new byte[sizeBytes];
    private readonly byte[] _durable = new byte[sizeBytes];
    private readonly HashSet<long> _dirtySectors = new();

    public string Name { get; } = name;
    public string Uri => "sim://" + Name;
    public long SizeBytes { get; } = sizeBytes;

    /// <summary>Lost containers fail every operation (container loss).</summary>
    public bool Lost { get; set; }

    public long Writes;
    public long Reads;

    public SimContainerHandle Open(SimOwner owner) => new(this, owner, sim);

    internal void Apply(long offset, ReadOnlySpan<byte> data)
    {
        data.CopyTo(_data.AsSpan((int)offset));
        for (long s = offset / SectorBytes; s < (offset + data.Length + SectorBytes - 1) / SectorBytes; s++) _dirtySectors.Add(s);
    }

    internal void Zero(long offset, long length)
    {
        _data.AsSpan((int)offset, (int)length).Clear();
        for (long s = offset / SectorBytes; s < (offset + length + SectorBytes - 1) / SectorBytes; s++) _dirtySectors.Add(s);
    }

    internal void Read(long offset, Span<byte> buffer) => _data.AsSpan((int)offset, buffer.Length).CopyTo(buffer);

    internal void Flush()
    {
        foreach (var s in _dirtySectors.Order())
            _data.AsSpan((int)(s * SectorBytes), SectorBytes).CopyTo(_durable.AsSpan((int)(s * SectorBytes)));
        _dirtySectors.Clear();
    }

    /// <summary>Power loss: every sector written since the last flush keeps its new bytes or reverts (512-byte tearing).</summary>
    public int PowerLoss(Random random)
    {
        int reverted = 0;
        foreach (var s in _dirtySectors.Order())
            if (random.Next(2) == 0)
            {
                _durable.AsSpan((int)(s * SectorBytes), SectorBytes).CopyTo(_data.AsSpan((int)(s * SectorBytes)));
                reverted++;
            }
        _dirtySectors.Clear();
        return reverted;
    }

    public bool InRange(long offset, long length) => offset >= 0 && length >= 0 && offset + length <= SizeBytes;
}

/// <summary>Who opened a handle: an agent incarnation (host set) or a controller incarnation.</summary>
public sealed class SimOwner(string name, string? agentHost, int incarnation)
{
    public string Name { get; } = name;
    public string? AgentHost { get; } = agentHost;
    public int Incarnation { get; } = incarnation;
    public bool Dead { get; set; }
    public override string ToString() => Name;
}

public sealed class SimContainerHandle(SimContainer container, SimOwner owner, Simulation sim) : IStorageContainer
{
    public string Uri => container.Uri;
    public long SizeBytes => container.SizeBytes;
    public SimContainer Container => container;
    public SimOwner Owner => owner;

    public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!container.InRange(offset, buffer.Length)) return new(IoStatus.InvalidArgument);
        return sim.ContainerOp(this, ContainerOpKind.Read, () =>
        {
            if (owner.Dead) return IoStatus.Shutdown;
            container.Reads++;
            container.Read(offset, buffer.Span);
            return IoStatus.Ok;
        });
    }

    public ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        if (!container.InRange(offset, data.Length)) return new(IoStatus.InvalidArgument);
        return sim.ContainerOp(this, ContainerOpKind.Write, () =>
        {
            if (!sim.AdmitWrite(this, offset, data.Length)) return IoStatus.IoError;
            container.Writes++;
            if (sim.PlantedBug == "lose-write" && owner.AgentHost != null && container.Writes % 50 == 0) return IoStatus.Ok; // planted: acknowledged, never stored
            container.Apply(offset, data.Span);
            return IoStatus.Ok;
        });
    }

    public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default) =>
        sim.ContainerOp(this, ContainerOpKind.Flush, () =>
        {
            if (owner.Dead) return IoStatus.Shutdown;
            if (sim.PlantedBug == "ignore-flush" && owner.AgentHost != null) return IoStatus.Ok; // planted: a device that lies about FLUSH
            container.Flush();
            return IoStatus.Ok;
        });

    public ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        if (!container.InRange(offset, length)) return new(IoStatus.InvalidArgument);
        return sim.ContainerOp(this, ContainerOpKind.Zero, () =>
        {
            if (!sim.AdmitWrite(this, offset, length)) return IoStatus.IoError;
            container.Writes++;
            container.Zero(offset, length);
            return IoStatus.Ok;
        });
    }

    public void Dispose() { }
}

public enum ContainerOpKind { Read, Write, Flush, Zero }
