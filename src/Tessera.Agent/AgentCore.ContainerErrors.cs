using Tessera.Core.Protocol;

namespace Tessera.Agent;

public sealed partial class AgentCore
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<uint, long> _lastContainerErrorReport = new();

    /// <summary>Tells the controller that I/O on a container failed here: at most about once a second per container.</summary>
    private void ReportContainerError(uint containerId, string message)
    {
        long now = _time.GetTimestamp();
        long last = _lastContainerErrorReport.GetValueOrDefault(containerId, long.MinValue);
        if (last != long.MinValue && _time.GetElapsedTime(last, now) < TimeSpan.FromSeconds(1)) return;
        _lastContainerErrorReport[containerId] = now;
        IControllerLink? link;
        lock (_linkLock) link = _link;
        link?.Send(new AgentMessage { ContainerError = new ContainerError { ContainerId = containerId, Message = message } });
    }
}
