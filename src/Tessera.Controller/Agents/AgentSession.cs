using System.Collections.Concurrent;
using Grpc.Core;
using Tessera.Core.Protocol;
using Tessera.Core.Streams;

namespace Tessera.Controller.Agents;

/// <summary>The outcome of sending a command and waiting for the agent.</summary>
public enum AckOutcome
{
    /// <summary>The agent replied ok.</summary>
    Acknowledged,
    /// <summary>The agent did not reply (or refused); its session was closed and its lease has lapsed, so it does no I/O any more.</summary>
    Fenced,
}

/// <summary>
/// One registered agent connection. Everything sent to the agent goes through one bounded, ordered queue drained
/// by a single writer, because the agent relies on stream order (a fault response enqueued before a command is
/// applied before it). A session that cannot keep up (queue full) is closed rather than blocking the control path.
///
/// Lease bookkeeping (see <see cref="Mapping.DiskCoordinator"/> for the reasoning): the agent stops I/O when
/// <c>lease</c> has passed since it sent the last heartbeat that we acknowledged. We only know when we received it,
/// which is later than when it was sent, so "received + lease" is a safe upper bound for when the agent is
/// fenced. A closed session acknowledges nothing more, so its bound stops moving.
/// </summary>
public sealed class AgentSession
{
    public const int SendQueueCapacity = 4096;
    public const int MaxPendingCommands = 4096;

    private readonly InlineSendQueue<ControllerMessage> _queue;
    private readonly ConcurrentDictionary<ulong, TaskCompletionSource<CommandReply>> _pending = new();
    private readonly ConcurrentDictionary<ulong, bool> _tables = new(); // disk id -> read-only
    private readonly CancellationTokenSource _closed = new();
    private readonly TimeProvider _time;
    private long _lastAckedHeartbeatTimestamp;
    private long _nextCommandId;
    private string? _closeReason;

    public AgentSession(string host, ulong incarnation, string nbdAddress, TimeProvider time, TimeSpan lease)
    {
        Host = host;
        Incarnation = incarnation;
        NbdAddress = nbdAddress;
        _time = time;
        Lease = lease;
        _queue = new InlineSendQueue<ControllerMessage>(SendQueueCapacity, e => Close("stream broken: " + e.Message));
        _lastAckedHeartbeatTimestamp = time.GetTimestamp(); // Registered counts as the first acknowledged heartbeat
        RegisteredAt = time.GetUtcNow();
        LastHeartbeatAt = RegisteredAt;
    }

    public string Host { get; }
    public ulong Incarnation { get; }
    public string NbdAddress { get; }
    public TimeSpan Lease { get; }
    public DateTimeOffset RegisteredAt { get; }
    public DateTimeOffset LastHeartbeatAt { get; private set; }

    /// <summary>Set once Registered is queued: only then may others queue messages (Registered must come first).</summary>
    public bool Ready { get; set; }

    public bool IsClosed => _closed.IsCancellationRequested;
    public CancellationToken Closed => _closed.Token;
    public string? CloseReason => _closeReason;

    /// <summary>Disk ids this agent holds a table for (as far as the controller sent CreateTable).</summary>
    public ICollection<ulong> Tables => _tables.Keys;

    public bool HasTable(ulong diskId) => _tables.ContainsKey(diskId);

    public long Timestamp => _time.GetTimestamp();

    public bool IsReadOnly(ulong diskId) => _tables.TryGetValue(diskId, out var readOnly) && readOnly;

    public void AddTable(ulong diskId, bool readOnly) => _tables[diskId] = readOnly;

    public void RemoveTable(ulong diskId) => _tables.TryRemove(diskId, out _);

    /// <summary>Time left until the agent has surely stopped I/O, were no heartbeat acknowledged any more.</summary>
    public TimeSpan LeaseRemaining => Lease - _time.GetElapsedTime(Interlocked.Read(ref _lastAckedHeartbeatTimestamp));

    public bool LeaseLapsed => LeaseRemaining <= TimeSpan.Zero;

    /// <summary>Records a heartbeat and acknowledges it; a closed session acknowledges nothing (its lease must run out).</summary>
    public void OnHeartbeat(ulong sequence)
    {
        if (IsClosed) return;
        Interlocked.Exchange(ref _lastAckedHeartbeatTimestamp, _time.GetTimestamp());
        LastHeartbeatAt = _time.GetUtcNow();
        Send(new ControllerMessage { HeartbeatAck = new HeartbeatAck { Sequence = sequence } });
    }

    /// <summary>Queues a message in stream order. Never blocks; a full queue closes the session.</summary>
    public bool Send(ControllerMessage message)
    {
        if (IsClosed) return false;
        if (_queue.TrySend(message)) return true;
        if (IsClosed) return false; // closed meanwhile (or by a failed write), not full
        Close("send queue full: the agent is not reading its stream");
        return false;
    }

    /// <summary>Queues a command and returns a task for its reply (a failed reply when the session closes first).</summary>
    public Task<CommandReply> SendCommand(Command command)
    {
        command.CommandId = (ulong)Interlocked.Increment(ref _nextCommandId);
        var tcs = new TaskCompletionSource<CommandReply>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (_pending.Count >= MaxPendingCommands)
        {
            Close("too many commands without reply");
            tcs.SetResult(Failed(command.CommandId, "session closed"));
            return tcs.Task;
        }
        _pending[command.CommandId] = tcs;
        if (!Send(new ControllerMessage { Command = command }) || IsClosed)
        {
            if (_pending.TryRemove(command.CommandId, out var t)) t.TrySetResult(Failed(command.CommandId, "session closed"));
        }
        return tcs.Task;
    }

    /// <summary>
    /// Sends a command and waits for its reply, or for the agent to be fenced: when no reply came within one lease
    /// of sending (or the session closed) the session is closed and we wait until its lease surely lapsed.
    /// </summary>
    public Task<AckOutcome> SendAndWaitAsync(Command command, CancellationToken cancellationToken)
    {
        long sentAt = _time.GetTimestamp();
        return WaitForReplyAsync(SendCommand(command), sentAt, cancellationToken);
    }

    /// <summary>The waiting half of <see cref="SendAndWaitAsync"/>, for a command sent at <paramref name="sentAt"/> (a timestamp of this session's TimeProvider).</summary>
    public async Task<AckOutcome> WaitForReplyAsync(Task<CommandReply> reply, long sentAt, CancellationToken cancellationToken)
    {
        while (!reply.IsCompleted)
        {
            var untilNoReply = Lease - _time.GetElapsedTime(sentAt);
            var wait = untilNoReply < LeaseRemaining ? untilNoReply : LeaseRemaining;
            if (wait <= TimeSpan.Zero) break;
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            var delay = Task.Delay(RoundUpToMilliseconds(wait), _time, cts.Token);
            await Task.WhenAny(reply, delay).ConfigureAwait(false);
            cts.Cancel();
            cancellationToken.ThrowIfCancellationRequested();
        }
        if (reply.IsCompleted && reply.Result.Ok) return AckOutcome.Acknowledged;
        // A refusal leaves the agent's table in a state we do not know; treat it like silence: fence the agent.
        Close(reply.IsCompleted ? "command refused: " + reply.Result.Error : "no reply to a command within the lease");
        await WaitLeaseLapsedAsync(cancellationToken).ConfigureAwait(false);
        return AckOutcome.Fenced;
    }

    /// <summary>Waits until the agent has surely stopped I/O. Only meaningful once the session is closed.</summary>
    public async Task WaitLeaseLapsedAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            var remaining = LeaseRemaining;
            if (remaining <= TimeSpan.Zero) return;
            await Task.Delay(RoundUpToMilliseconds(remaining), _time, cancellationToken).ConfigureAwait(false);
        }
    }

    public void OnReply(CommandReply reply)
    {
        if (_pending.TryRemove(reply.CommandId, out var tcs)) tcs.TrySetResult(reply);
    }

    /// <summary>Ends the session: no more sends or heartbeat acks, pending commands fail, the stream ends.</summary>
    public void Close(string reason)
    {
        lock (_closed)
        {
            if (_closed.IsCancellationRequested) return;
            _closeReason = reason;
            _closed.Cancel();
        }
        _queue.Complete();
        foreach (var id in _pending.Keys)
            if (_pending.TryRemove(id, out var tcs)) tcs.TrySetResult(Failed(id, "session closed: " + reason));
    }

    /// <summary>
    /// Writes the send queue into the response stream until the session closes or the stream breaks. A message sent
    /// while the stream is idle is written on the sender's thread (<see cref="InlineSendQueue{T}"/>): a fault's
    /// answer leaves without waking a writer task. The task completes once the session closed and no write is in
    /// flight, so the stream may be ended.
    /// </summary>
    public Task RunWriterAsync(IAsyncStreamWriter<ControllerMessage> stream, CancellationToken cancellationToken)
    {
        var closeOnCancel = cancellationToken.Register(static s => ((AgentSession)s!).Close("stream broken: the call ended"), this);
        // A closed session sends nothing more (no HeartbeatAck may leave once its lease bound stopped moving).
        _queue.Attach(message => IsClosed ? Task.CompletedTask : stream.WriteAsync(message, cancellationToken));
        return FinishedAsync(closeOnCancel);
    }

    private async Task FinishedAsync(CancellationTokenRegistration closeOnCancel)
    {
        await _queue.Finished.ConfigureAwait(false);
        await closeOnCancel.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Task.Delay counts whole milliseconds and truncates: a remainder below 1 ms completes at once, and a loop
    /// that re-checks the remaining time then spins until the clock moves (forever under a simulated clock).
    /// Rounding up also keeps a wait from ending before the bound it waits for.
    /// </summary>
    internal static TimeSpan RoundUpToMilliseconds(TimeSpan delay) => TimeSpan.FromMilliseconds(Math.Ceiling(delay.TotalMilliseconds));

    private static CommandReply Failed(ulong id, string error) => new() { CommandId = id, Ok = false, Error = error };
}
