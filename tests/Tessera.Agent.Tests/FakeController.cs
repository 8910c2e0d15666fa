using System.Collections.Concurrent;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Agent.Tests;

/// <summary>
/// An in-process stand-in for the controller that keeps a model of one disk's persistent table (missing = Zero)
/// and answers faults the way the real controller must: load the stored entry, allocate on the first write.
/// </summary>
internal sealed class FakeController : IControllerLink
{
    public const ulong DiskId = 42;
    public readonly AgentCore Core;
    public readonly MemoryContainer Container = new("mem://c1", 64 << 20);
    public readonly ConcurrentDictionary<long, MapEntry> Store = new();
    public readonly ConcurrentQueue<MapFault> Faults = new();
    public readonly ConcurrentQueue<MapFault> ZeroFaults = new();
    public readonly FakeTimeProvider Time = new();
    private readonly ConcurrentDictionary<ulong, TaskCompletionSource<CommandReply>> _pending = new();
    private long _nextPhysical;
    private ulong _nextCommand;

    /// <summary>When false, faults are recorded but not answered until <see cref="AnswerPendingFaults"/>.</summary>
    public volatile bool AutoAnswer = true;

    /// <summary>When set, write faults on Zero segments fail with this status instead of allocating.</summary>
    public IoStatus? FailAllocationsWith;

    /// <summary>Ahead-requests received (they are also in <see cref="Faults"/> unless held).</summary>
    public readonly ConcurrentQueue<MapFault> AheadFaults = new();

    /// <summary>When true, ahead-requests are recorded in <see cref="AheadFaults"/> only, and answered by <see cref="Answer"/> when the test says.</summary>
    public volatile bool HoldAhead;

    /// <summary>When true, ahead-requests are refused with NO_SPACE, as the controller does when no never-used space lies above the reserve.</summary>
    public volatile bool RefuseAhead;

    public FakeController(int segmentSizeBytes = 64 << 10, bool readOnly = false, long sizeBytes = 4 << 20)
    {
        var registry = new ContainerRegistry(uri => uri == Container.Uri ? Container : throw new IOException("no such container"));
        Core = new AgentCore("h1", new ContainerSet(registry), Time, NullLogger.Instance, faultTimeoutMs: 30_000);
        var registered = new Registered { ControllerEpoch = 1, LeaseMs = 10_000, HeartbeatIntervalMs = 1_000 };
        registered.Containers.Add(new ContainerInfo { Id = 1, Name = "c1", Uri = Container.Uri });
        Core.OnRegistered(this, registered);
        SegmentSizeBytes = segmentSizeBytes;
        var reply = Command(new Command { DiskId = DiskId, CreateTable = new CreateTable { Name = "d1", SizeBytes = (ulong)sizeBytes, SegmentSizeBytes = (uint)segmentSizeBytes, ReadOnly = readOnly } });
        if (!reply.IsCompletedSuccessfully || !reply.Result.Ok) throw new InvalidOperationException("create table failed");
    }

    public int SegmentSizeBytes { get; }
    public DiskVolume Volume => Core.FindVolume("d1")!;

    /// <summary>What a reconnect does: the old link goes, a new session registers (tables must be re-created by it).</summary>
    public void Reregister()
    {
        Core.OnDisconnected(this, "test: link lost");
        var registered = new Registered { ControllerEpoch = 2, LeaseMs = 10_000, HeartbeatIntervalMs = 1_000 };
        registered.Containers.Add(new ContainerInfo { Id = 1, Name = "c1", Uri = Container.Uri });
        Core.OnRegistered(this, registered);
    }

    public void Send(AgentMessage message)
    {
        switch (message.BodyCase)
        {
            case AgentMessage.BodyOneofCase.Fault when message.Fault.Ahead:
                AheadFaults.Enqueue(message.Fault);
                if (RefuseAhead) Task.Run(() => Deliver(new FaultResponse { FaultId = message.Fault.FaultId, Outcome = FaultOutcome.Fail, Status = (uint)IoStatus.NoSpace }));
                else if (!HoldAhead && AutoAnswer) Task.Run(() => Answer(message.Fault));
                break;
            case AgentMessage.BodyOneofCase.Fault:
                Faults.Enqueue(message.Fault);
                if (AutoAnswer) Task.Run(() => Answer(message.Fault));
                break;
            case AgentMessage.BodyOneofCase.Reply:
                if (_pending.TryRemove(message.Reply.CommandId, out var tcs)) tcs.TrySetResult(message.Reply);
                break;
        }
    }

    public void AnswerPendingFaults()
    {
        while (Faults.TryDequeue(out var f)) Answer(f);
    }

    public void Answer(MapFault fault)
    {
        long segment = (long)fault.Segment;
        if (fault.Zero)
        {
            // Like the controller: persist Zero, push it to the agent with the blocking flag, then answer.
            for (long i = 0; i < (long)fault.Count; i++) Store.TryRemove(segment + i, out _);
            ZeroFaults.Enqueue(fault);
            var push = Command(new Command { DiskId = fault.DiskId, Blocking = true, SetEntries = new SetEntries { FirstSegment = fault.Segment, Count = fault.Count, Entries = { MapEntry.Zero.Raw } } });
            push.ContinueWith(_ => Deliver(new FaultResponse { FaultId = fault.FaultId, Outcome = FaultOutcome.Retry }));
            return;
        }
        var entry = Store.GetValueOrDefault(segment, MapEntry.Zero);
        var response = new FaultResponse { FaultId = fault.FaultId, Outcome = FaultOutcome.Retry, FirstSegment = fault.Segment };
        if (fault.Write && entry.States == EntryStates.Zero)
        {
            if (FailAllocationsWith is { } status)
            {
                Deliver(new FaultResponse { FaultId = fault.FaultId, Outcome = FaultOutcome.Fail, Status = (uint)status });
                return;
            }
            lock (Store)
            {
                entry = Store.GetValueOrDefault(segment, MapEntry.Zero);
                if (entry.States == EntryStates.Zero)
                {
                    long units = SegmentSizeBytes / MapEntry.PhysicalUnitBytes;
                    entry = MapEntry.Mapped(1, Interlocked.Add(ref _nextPhysical, units) - units);
                    Store[segment] = entry;
                }
            }
        }
        response.Entries.Add(entry.Raw);
        Deliver(response);
    }

    private void Deliver(FaultResponse response) => Core.OnControllerMessage(this, new ControllerMessage { FaultResponse = response });

    public Task<CommandReply> Command(Command command)
    {
        command.CommandId = Interlocked.Increment(ref _nextCommand);
        var tcs = new TaskCompletionSource<CommandReply>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[command.CommandId] = tcs;
        Core.OnControllerMessage(this, new ControllerMessage { Command = command });
        return tcs.Task;
    }
}

internal static class Pattern
{
    /// <summary>Bytes that encode the disk offset and a generation, so a misplaced or stale block is obvious.</summary>
    public static byte[] For(long offset, int length, byte generation)
    {
        var data = new byte[length];
        for (int i = 0; i < length; i += 8)
        {
            long value = ((offset + i) << 8) | generation;
            BitConverter.TryWriteBytes(data.AsSpan(i, Math.Min(8, length - i)), value);
        }
        return data;
    }
}
