using System.Collections.Concurrent;
using Google.Protobuf;
using Microsoft.Extensions.Logging;
using Tessera.Core;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Agent;

/// <summary>
/// The agent's brain, independent of any transport: its volatile tables (one <see cref="DiskVolume"/> per disk
/// presented to its host), the controller's commands, map faults and the lease.
///
/// Transport seam: the connection calls <see cref="OnRegistered"/>, <see cref="OnControllerMessage"/> and
/// <see cref="OnDisconnected"/>; the core sends through the <see cref="IControllerLink"/> it is given. The gRPC
/// connection is one implementation; the simulation harness can supply another.
///
/// Lease (patent [0027]): the agent may use its tables only while its lease holds. The lease is renewed by each
/// acknowledged heartbeat and runs from the moment that heartbeat was <em>sent</em>, while the controller counts
/// from the moment it <em>received</em> it, so the agent always gives up first. The agent also gives up at
/// <see cref="LeaseSafetyFraction"/> of the lease to leave room for timer lag and I/O already in flight. When the
/// lease lapses the agent invalidates every table: all I/O then faults, and faults wait until the controller is
/// reachable again, which re-creates the tables. We chose invalidation over holding I/O because it puts the agent
/// in exactly the state of a restarted agent, the one state the controller already knows how to handle.
/// A lapsed agent acts on nothing until a heartbeat sent after the lapse's cause is acknowledged (or it registers
/// again): see AgentCore.Lease.cs.
/// </summary>
public sealed partial class AgentCore : IFaultSink
{
    public const double LeaseSafetyFraction = 0.8;

    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<ulong, DiskVolume> _volumesById = new();
    private readonly ConcurrentDictionary<string, DiskVolume> _volumesByName = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<(ulong DiskId, long Segment, bool Write), PendingFault> _faultsBySegment = new();
    private readonly ConcurrentDictionary<ulong, PendingFault> _faultsById = new();
    private readonly object _linkLock = new();
    private IControllerLink? _link;
    private long _nextFaultId;
    private long _leaseExpiresAtTicks = long.MinValue; // TimeProvider timestamp; MinValue = no lease yet; guarded by _leaseGate
    private bool _leaseLapsed = true; // guarded by _leaseGate

    /// <param name="incarnation">Fixed only by the deterministic simulation, which must replay a run bit for bit; random otherwise.</param>
    public AgentCore(string hostName, ContainerSet containers, TimeProvider time, ILogger logger, int faultTimeoutMs = 120_000, ulong? incarnation = null)
    {
        HostName = hostName;
        Containers = containers;
        _time = time;
        _logger = logger;
        FaultTimeoutMs = faultTimeoutMs;
        Incarnation = incarnation ?? (ulong)Random.Shared.NextInt64(1, long.MaxValue);
        containers.IoErrorObserved = ReportContainerError;
    }

    public string HostName { get; }
    public ulong Incarnation { get; }
    public ContainerSet Containers { get; }
    public int FaultTimeoutMs { get; }
    public int LeaseMs { get; private set; } = 10_000;
    public int HeartbeatIntervalMs { get; private set; } = 1_000;
    public ulong ControllerEpoch { get; private set; }

    /// <summary>Raised (outside any lock) when the set of volumes changes, so the NBD catalog can react.</summary>
    public event Action<DiskVolume, bool>? VolumeChanged;

    public IReadOnlyCollection<DiskVolume> Volumes => (IReadOnlyCollection<DiskVolume>)_volumesById.Values;

    public DiskVolume? FindVolume(string name) => _volumesByName.TryGetValue(name, out var v) ? v : null;

    /// <summary>Completes once a table for the disk named <paramref name="name"/> exists, so its export can be opened.</summary>
    public async Task WaitForVolumeAsync(string name, CancellationToken cancellationToken)
    {
        var present = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnChange(DiskVolume volume, bool added)
        {
            if (added && volume.Name == name) present.TrySetResult();
        }
        VolumeChanged += OnChange;
        try
        {
            if (FindVolume(name) is not null) return;
            await present.Task.WaitAsync(cancellationToken);
        }
        finally
        {
            VolumeChanged -= OnChange;
        }
    }

    public bool IsConnected { get { lock (_linkLock) return _link != null; } }

    // ---- connection lifecycle ----

    /// <summary>The controller accepted our registration on <paramref name="link"/>.</summary>
    /// <param name="registerSentTimestamp">
    /// When our Register was sent: the first lease runs from then, because the controller starts counting it when the
    /// Register arrives and Registered itself may be delayed by up to a lease on a silent stream. Null: now (tests).
    /// </param>
    public void OnRegistered(IControllerLink link, Registered registered, long? registerSentTimestamp = null)
    {
        LeaseMs = (int)registered.LeaseMs;
        HeartbeatIntervalMs = (int)registered.HeartbeatIntervalMs;
        ControllerEpoch = registered.ControllerEpoch;
        foreach (var c in registered.Containers) Containers.Upsert(c.Id, c.Name, c.Uri, c.Failed);
        ExtendLease(registerSentTimestamp ?? _time.GetTimestamp());
        ExpectTablesReconfirmed();
        lock (_linkLock) _link = link;
        Log.Registered(_logger, HostName, registered.ControllerEpoch, LeaseMs);
        // Faults sent on a previous link may have been lost with it: send them again (ids are unique per agent).
        lock (_leaseGate)
            foreach (var pending in _faultsById.Values)
            {
                pending.AnswerHeld = false;
                link.Send(new AgentMessage { Fault = pending.Message });
            }
    }

    public void OnDisconnected(IControllerLink link, string reason)
    {
        lock (_linkLock)
        {
            if (!ReferenceEquals(_link, link)) return;
            _link = null;
        }
        Log.Disconnected(_logger, reason);
    }

    /// <summary>Called when a heartbeat sent at <paramref name="sentTimestamp"/> was acknowledged.</summary>
    public void RenewLease(long sentTimestamp)
    {
        DropUnconfirmedTables();
        if (ExtendLease(sentTimestamp)) ResendHeldFaults();
    }

    // ---- faults (IFaultSink) ----

    public async ValueTask<FaultResult> FaultAsync(DiskVolume volume, long segment, bool write, MapEntry seen, CancellationToken cancellationToken)
    {
        var key = (volume.DiskId, segment, write);
        PendingFault? pending;
        bool created = false;
        while (true)
        {
            if (_faultsBySegment.TryGetValue(key, out pending)) break;
            var fresh = new PendingFault(key, new MapFault
            {
                FaultId = (ulong)Interlocked.Increment(ref _nextFaultId),
                DiskId = volume.DiskId,
                Segment = (ulong)segment,
                Write = write,
                SeenEntry = seen.Raw,
            });
            if (_faultsBySegment.TryAdd(key, fresh))
            {
                pending = fresh;
                created = true;
                break;
            }
        }
        if (created)
        {
            _faultsById[pending.Message.FaultId] = pending;
            Counters.FaultsSent++;
            SendFault(pending);
        }
        else
        {
            Counters.FaultsCoalesced++;
        }

        return await WaitForAnswerAsync(volume, segment, pending, cancellationToken);
    }

    public async ValueTask<FaultResult> ZeroFaultAsync(DiskVolume volume, long firstSegment, long count, CancellationToken cancellationToken)
    {
        // Zeroing faults are not coalesced: two of them rarely cover the same range, and merging different
        // ranges would answer one with the other's result.
        var pending = new PendingFault((volume.DiskId, firstSegment, true), new MapFault
        {
            FaultId = (ulong)Interlocked.Increment(ref _nextFaultId),
            DiskId = volume.DiskId,
            Segment = (ulong)firstSegment,
            Write = true,
            Zero = true,
            Count = (ulong)count,
        }, coalesced: false);
        _faultsById[pending.Message.FaultId] = pending;
        Counters.ZeroFaultsSent++;
        SendFault(pending);
        return await WaitForAnswerAsync(volume, firstSegment, pending, cancellationToken);
    }

    /// <summary>Sends on the current link; without one the fault goes out on the next registration.</summary>
    private void SendFault(PendingFault pending)
    {
        IControllerLink? link;
        lock (_linkLock) link = _link;
        link?.Send(new AgentMessage { Fault = pending.Message });
    }

    private async Task<FaultResult> WaitForAnswerAsync(DiskVolume volume, long segment, PendingFault pending, CancellationToken cancellationToken)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(FaultTimeoutMs), _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token, volume.Closed);
        try
        {
            return await pending.Completion.Task.WaitAsync(linked.Token);
        }
        catch (OperationCanceledException)
        {
            // A zeroing fault given up must not go out again on the next registration: its caller is told the
            // WRITE_ZEROES/TRIM failed and may write the range afterwards, and a late resend would zero those
            // acknowledged writes. (A map fault changes no data, so resending it is harmless, and others may share it.)
            if (!pending.Coalesced) _faultsById.TryRemove(pending.Message.FaultId, out _);
            if (volume.IsClosed) return FaultResult.Fail(IoStatus.Shutdown);
            if (timeout.IsCancellationRequested)
            {
                Log.FaultTimedOut(_logger, volume.Name, segment, FaultTimeoutMs);
                return FaultResult.Fail(IoStatus.IoError);
            }
            throw;
        }
    }

    private void CompleteFault(ulong faultId, FaultResult result)
    {
        if (!_faultsById.TryRemove(faultId, out var pending)) return; // duplicate or stale response
        if (pending.Coalesced) _faultsBySegment.TryRemove(new KeyValuePair<(ulong, long, bool), PendingFault>(pending.Key, pending));
        pending.Completion.TrySetResult(result);
    }

    private void FailFaultsOf(ulong diskId, IoStatus status)
    {
        foreach (var p in _faultsById.Values)
            if (p.Key.DiskId == diskId) CompleteFault(p.Message.FaultId, FaultResult.Fail(status));
    }

    private sealed class PendingFault((ulong DiskId, long Segment, bool Write) key, MapFault message, bool coalesced = true)
    {
        /// <summary>Its answer came while the lease was lapsed and was dropped: ask again once the lease is renewed. Guarded by _leaseGate.</summary>
        public bool AnswerHeld;

        public bool Coalesced { get; } = coalesced;
        public (ulong DiskId, long Segment, bool Write) Key { get; } = key;
        public MapFault Message { get; } = message;
        public TaskCompletionSource<FaultResult> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    // ---- messages from the controller ----

    /// <summary>
    /// Applies one message. Called in stream order by one reader: table changes are applied before this returns;
    /// only the reply of a blocking command is deferred until the gate drained.
    /// </summary>
    public void OnControllerMessage(IControllerLink link, ControllerMessage message)
    {
        switch (message.BodyCase)
        {
            case ControllerMessage.BodyOneofCase.FaultResponse:
                ApplyFaultResponse(message.FaultResponse);
                break;
            case ControllerMessage.BodyOneofCase.Command:
                ApplyCommand(link, message.Command);
                break;
            case ControllerMessage.BodyOneofCase.HeartbeatAck:
                break; // handled by the connection, which knows when the heartbeat was sent
            default:
                Log.UnexpectedMessage(_logger, message.BodyCase.ToString());
                break;
        }
    }

    private void ApplyFaultResponse(FaultResponse response)
    {
        if (!_faultsById.TryGetValue(response.FaultId, out var pending)) return;
        if (response.Outcome == FaultOutcome.Retry)
        {
            lock (_leaseGate)
            {
                bool leaseHolds = CheckLease();
                // A zeroing's answer only reports that the controller changed the table (it pushed the entries itself),
                // and asking again would zero the range a second time, over writes made since: it completes even
                // during a lapse, without installing anything. A map fault's answer is held and asked again.
                if (!leaseHolds && pending.Message.Ahead)
                {
                    DropAheadAnswer(pending); // nothing waits on it: not asked again (AgentCore.Ahead.cs)
                    return;
                }
                if (!leaseHolds && !pending.Message.Zero)
                {
                    HoldAnswer(pending);
                    return;
                }
                if (leaseHolds && response.Entries.Count > 0 && _volumesById.TryGetValue(pending.Key.DiskId, out var volume))
                {
                    var table = volume.Table;
                    long first = (long)response.FirstSegment;
                    int count = (int)Math.Min(response.Entries.Count, Math.Max(0, table.SegmentCount - first));
                    for (int i = 0; i < count; i++) table.Set(first + i, new MapEntry(response.Entries[i]));
                }
            }
            CompleteFault(response.FaultId, FaultResult.RetryLookup);
        }
        else
        {
            var status = Enum.IsDefined(typeof(IoStatus), (byte)response.Status) && response.Status != 0 ? (IoStatus)response.Status : IoStatus.IoError;
            if (!string.IsNullOrEmpty(response.Message)) Log.FaultFailed(_logger, pending.Key.DiskId, pending.Key.Segment, status, response.Message);
            CompleteFault(response.FaultId, FaultResult.Fail(status));
        }
    }

    private void ApplyCommand(IControllerLink link, Command command)
    {
        var reply = new CommandReply { CommandId = command.CommandId, Ok = true };
        DiskVolume? volume = null;
        try
        {
            switch (command.OpCase)
            {
                case Command.OpOneofCase.CreateTable:
                    volume = CreateTable(command.DiskId, command.CreateTable);
                    TableReconfirmed(command.DiskId);
                    break;
                case Command.OpOneofCase.DeleteTable:
                    volume = DeleteTable(command.DiskId);
                    break;
                case Command.OpOneofCase.GetEntries:
                    {
                        volume = RequireVolume(command.DiskId);
                        var get = command.GetEntries;
                        CheckRange(volume, get.FirstSegment, get.Count);
                        for (ulong i = 0; i < get.Count; i++) reply.Entries.Add(volume.Table.Get((long)(get.FirstSegment + i)).Raw);
                        break;
                    }
                case Command.OpOneofCase.SetEntries:
                    {
                        volume = RequireVolume(command.DiskId);
                        var set = command.SetEntries;
                        ulong count = set.Count == 0 ? (ulong)set.Entries.Count : set.Count;
                        CheckRange(volume, set.FirstSegment, count);
                        if (set.Entries.Count != 1 && (ulong)set.Entries.Count != count)
                            throw new CommandException($"set entries: {set.Entries.Count} entries for a range of {count}");
                        lock (_leaseGate)
                        {
                            if (!CheckLease()) break; // the lapse invalidated every entry, already stricter than these
                            if (set.Entries.Count == 1) volume.Table.Fill((long)set.FirstSegment, (long)count, new MapEntry(set.Entries[0]));
                            else volume.Table.SetRange((long)set.FirstSegment, (long)count, i => new MapEntry(set.Entries[(int)i]));
                        }
                        break;
                    }
                case Command.OpOneofCase.ChangeStates:
                    {
                        volume = RequireVolume(command.DiskId);
                        var change = command.ChangeStates;
                        CheckRange(volume, change.FirstSegment, change.Count);
                        lock (_leaseGate)
                        {
                            // While lapsed every entry is Invalid; clearing that now would revive a location the lapse voided.
                            if (CheckLease()) volume.Table.ChangeStates((long)change.FirstSegment, (long)change.Count, (EntryStates)(change.Set & 0xF), (EntryStates)(change.Clear & 0xF));
                        }
                        break;
                    }
                case Command.OpOneofCase.ResizeTable:
                    volume = RequireVolume(command.DiskId);
                    volume.Resize((long)command.ResizeTable.SizeBytes);
                    break;
                case Command.OpOneofCase.UpsertContainer:
                    {
                        var c = command.UpsertContainer.Container;
                        Containers.Upsert(c.Id, c.Name, c.Uri, c.Failed);
                        break;
                    }
                default:
                    throw new CommandException($"unknown command {command.OpCase}");
            }
        }
        catch (Exception e) when (e is CommandException or ArgumentException)
        {
            reply.Ok = false;
            reply.Error = e.Message;
        }

        if (command.Blocking && reply.Ok && volume != null)
        {
            // Patent [0037]: the table already changed; answer once every piece that saw the old table finished.
            _ = volume.Gate.DrainAsync().ContinueWith(
                _ => link.Send(new AgentMessage { Reply = reply }),
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        else
        {
            link.Send(new AgentMessage { Reply = reply });
        }
    }

    private DiskVolume CreateTable(ulong diskId, CreateTable create)
    {
        if (string.IsNullOrEmpty(create.Name)) throw new CommandException("create table: empty name");
        if (_volumesById.TryGetValue(diskId, out var existing))
        {
            if (existing.SegmentSizeBytes != (int)create.SegmentSizeBytes || existing.Name != create.Name)
                throw new CommandException($"create table: disk {diskId} exists with another name or segment size");
            existing.ReplaceTable((long)create.SizeBytes, create.ReadOnly);
            Log.TableCreated(_logger, create.Name, diskId, (long)create.SizeBytes, create.ReadOnly, true);
            return existing;
        }
        DiskVolume volume;
        try
        {
            volume = new DiskVolume(diskId, create.Name, (long)create.SizeBytes, (int)create.SegmentSizeBytes, create.ReadOnly,
                create.Description, Containers, this);
        }
        catch (ArgumentException e)
        {
            throw new CommandException("create table: " + e.Message);
        }
        if (!_volumesByName.TryAdd(create.Name, volume)) throw new CommandException($"create table: another disk is already named {create.Name}");
        _volumesById[diskId] = volume;
        Log.TableCreated(_logger, create.Name, diskId, (long)create.SizeBytes, create.ReadOnly, false);
        VolumeChanged?.Invoke(volume, true);
        return volume;
    }

    private DiskVolume DeleteTable(ulong diskId)
    {
        var volume = RequireVolume(diskId);
        _volumesById.TryRemove(diskId, out _);
        _volumesByName.TryRemove(new KeyValuePair<string, DiskVolume>(volume.Name, volume));
        volume.Table.InvalidateAll();
        volume.Close();
        FailFaultsOf(diskId, IoStatus.Shutdown);
        Log.TableDeleted(_logger, volume.Name, diskId);
        VolumeChanged?.Invoke(volume, false);
        return volume;
    }

    private DiskVolume RequireVolume(ulong diskId) =>
        _volumesById.TryGetValue(diskId, out var v) ? v : throw new CommandException($"no table for disk {diskId}");

    private static void CheckRange(DiskVolume volume, ulong first, ulong count)
    {
        if (first + count < first || first + count > (ulong)volume.Table.SegmentCount)
            throw new CommandException($"range [{first}, {first + count}) outside table of {volume.Table.SegmentCount} segments");
    }

    /// <summary>Counters for rare paths (diagnostics and tests).</summary>
    public AgentCounters Counters { get; } = new();

    private sealed class CommandException(string message) : Exception(message);

    private static partial class Log
    {
        [LoggerMessage(100, LogLevel.Information, "registered as host {Host} with controller epoch {Epoch}, lease {LeaseMs} ms")]
        public static partial void Registered(ILogger logger, string host, ulong epoch, int leaseMs);

        [LoggerMessage(101, LogLevel.Warning, "lost the controller: {Reason}")]
        public static partial void Disconnected(ILogger logger, string reason);

        [LoggerMessage(102, LogLevel.Warning, "lease of {LeaseMs} ms lapsed: every table invalidated until the controller is back")]
        public static partial void LeaseLapsed(ILogger logger, int leaseMs);

        [LoggerMessage(103, LogLevel.Information, "table for disk {Name} (id {DiskId}, {SizeBytes} bytes, read-only {ReadOnly}) created (replaced: {Replaced})")]
        public static partial void TableCreated(ILogger logger, string name, ulong diskId, long sizeBytes, bool readOnly, bool replaced);

        [LoggerMessage(104, LogLevel.Information, "table for disk {Name} (id {DiskId}) deleted")]
        public static partial void TableDeleted(ILogger logger, string name, ulong diskId);

        [LoggerMessage(109, LogLevel.Warning, "disk {DiskId} is no longer presented here (the controller did not re-create its table at registration): table dropped")]
        public static partial void TableDroppedAtRegistration(ILogger logger, ulong diskId);

        [LoggerMessage(105, LogLevel.Warning, "map fault on disk {Name} segment {Segment} got no answer in {TimeoutMs} ms: failing the I/O")]
        public static partial void FaultTimedOut(ILogger logger, string name, long segment, int timeoutMs);

        [LoggerMessage(106, LogLevel.Information, "map fault on disk {DiskId} segment {Segment} failed with {Status}: {Message}")]
        public static partial void FaultFailed(ILogger logger, ulong diskId, long segment, IoStatus status, string message);

        [LoggerMessage(107, LogLevel.Warning, "unexpected message from the controller: {Kind}")]
        public static partial void UnexpectedMessage(ILogger logger, string kind);
    }
}

/// <summary>How the core sends to the controller. Send never blocks; it may drop when the link is closing.</summary>
public interface IControllerLink
{
    void Send(AgentMessage message);
}

public sealed class AgentCounters
{
    public long FaultsSent;
    public long FaultsCoalesced;
    public long ZeroFaultsSent;
    /// <summary>Map-fault answers dropped because they arrived while the lease was lapsed (asked again after the renewal).</summary>
    public long AnswersHeldWhileLapsed;
    /// <summary>Ahead-requests sent (write faults no I/O waits on, ahead of a sequential writer).</summary>
    public long AheadRequestsSent;
    /// <summary>Ahead-requests the controller refused (no never-used space above the pool's reserve).</summary>
    public long AheadRequestsRefused;
}
