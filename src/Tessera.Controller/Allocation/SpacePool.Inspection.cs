namespace Tessera.Controller.Allocation;

public sealed partial class SpacePool
{
    /// <summary>Whether one 64 KiB unit is taken, for tests that compare the pool with the segment map unit by unit.</summary>
    internal bool IsUnitUsed(ushort containerId, long unit)
    {
        lock (_lock) return _spaces.TryGetValue(containerId, out var space) && space.IsUsed(unit);
    }
}
