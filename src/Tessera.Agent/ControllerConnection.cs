using System.Collections.Concurrent;
using System.Threading.Channels;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Tessera.Core.Protocol;
using Tessera.Core.Streams;

namespace Tessera.Agent;

/// <summary>
/// Keeps the agent connected to the controller over one long-lived gRPC stream: registers, sends heartbeats,
/// feeds every controller message to <see cref="AgentCore"/> in order, and reconnects with backoff when the
/// stream breaks. Also runs the lease check, which must keep running while disconnected.
/// Sessions are opened through <see cref="IControllerTransport"/> and every wait is on the given
/// <see cref="TimeProvider"/>, so the deterministic simulation runs this very loop over simulated streams and time.
/// </summary>
public sealed partial class ControllerConnection : IAsyncDisposable
{
    private const int SendQueueLimit = 16_384;
    private const int MaxBackoffMs = 2_000;

    private readonly AgentCore _core;
    private readonly IControllerTransport _transport;
    private readonly string _nbdAddress;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly TaskCompletionSource _registeredOnce = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task? _run;
    private Task? _leaseLoop;

    public ControllerConnection(AgentCore core, string controllerUrl, string nbdAddress, TimeProvider time, ILogger logger)
        : this(core, new GrpcControllerTransport(controllerUrl), nbdAddress, time, logger)
    {
    }

    /// <param name="transport">Owned from here on: disposed with the connection.</param>
    public ControllerConnection(AgentCore core, IControllerTransport transport, string nbdAddress, TimeProvider time, ILogger logger)
    {
        _core = core;
        _transport = transport;
        _nbdAddress = nbdAddress;
        _time = time;
        _logger = logger;
    }

    /// <summary>Completes when the agent registered with the controller for the first time.</summary>
    public Task RegisteredOnce => _registeredOnce.Task;

    public void Start()
    {
        _run = Task.Run(RunAsync);
        _leaseLoop = Task.Run(LeaseLoopAsync);
    }

    private async Task RunAsync()
    {
        int backoffMs = 50;
        while (!_stop.IsCancellationRequested)
        {
            string reason;
            try
            {
                reason = await RunOneSessionAsync(() => backoffMs = 50);
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (RpcException e)
            {
                reason = e.Status.Detail is { Length: > 0 } d ? $"{e.StatusCode}: {d}" : e.StatusCode.ToString();
            }
            catch (Exception e) when (e is IOException or HttpRequestException or InvalidOperationException or ChannelClosedException)
            {
                reason = e.Message;
            }
            Log.SessionEnded(_logger, _transport.Address, reason, backoffMs);
            try { await Task.Delay(TimeSpan.FromMilliseconds(backoffMs), _time, _stop.Token); }
            catch (OperationCanceledException) { return; }
            backoffMs = Math.Min(backoffMs * 2, MaxBackoffMs);
        }
    }

    private async Task<string> RunOneSessionAsync(Action onRegistered)
    {
        using var sessionEnd = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        using var call = _transport.Connect(sessionEnd.Token);
        var link = new GrpcLink(sessionEnd);
        var writer = link.WriteToAsync(call.RequestStream);
        try
        {
            long registerSentAt = _time.GetTimestamp();
            link.Send(new AgentMessage { Register = new Register { Host = _core.HostName, Incarnation = _core.Incarnation, NbdAddress = _nbdAddress, Version = "1" } });
            var responses = call.ResponseStream;
            if (!await responses.MoveNext(sessionEnd.Token)) return "controller closed the stream before registering us";
            if (responses.Current.BodyCase != ControllerMessage.BodyOneofCase.Registered) return $"controller answered {responses.Current.BodyCase} to Register";
            _core.OnRegistered(link, responses.Current.Registered, registerSentAt);
            onRegistered();
            _registeredOnce.TrySetResult();

            var heartbeatSent = new ConcurrentDictionary<ulong, long>();
            var heartbeats = HeartbeatLoopAsync(link, heartbeatSent, sessionEnd.Token);
            try
            {
                while (await responses.MoveNext(sessionEnd.Token))
                {
                    var message = responses.Current;
                    if (message.BodyCase == ControllerMessage.BodyOneofCase.HeartbeatAck)
                    {
                        if (heartbeatSent.TryRemove(message.HeartbeatAck.Sequence, out var sentAt)) _core.RenewLease(sentAt);
                        continue;
                    }
                    _core.OnControllerMessage(link, message);
                }
                return "controller ended the stream";
            }
            finally
            {
                sessionEnd.Cancel();
                await heartbeats;
            }
        }
        finally
        {
            _core.OnDisconnected(link, "session ended");
            sessionEnd.Cancel();
            link.Complete();
            try { await writer; } catch (Exception) { /* the session is over either way */ }
        }
    }

    private async Task HeartbeatLoopAsync(GrpcLink link, ConcurrentDictionary<ulong, long> sent, CancellationToken cancellationToken)
    {
        ulong sequence = 0;
        try
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                sequence++;
                sent[sequence] = _time.GetTimestamp();
                // Only recent heartbeats matter; keep the map bounded if acks stop coming.
                if (sent.Count > 64) foreach (var k in sent.Keys) if (k + 64 < sequence) sent.TryRemove(k, out _);
                link.Send(new AgentMessage { Heartbeat = new Heartbeat { Sequence = sequence } });
                await Task.Delay(TimeSpan.FromMilliseconds(Math.Max(10, _core.HeartbeatIntervalMs)), _time, cancellationToken);
            }
        }
        catch (OperationCanceledException) { }
    }

    private async Task LeaseLoopAsync()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                _core.CheckLease();
                await Task.Delay(TimeSpan.FromMilliseconds(Math.Clamp(_core.LeaseMs / 20, 10, 250)), _time, _stop.Token);
            }
        }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        if (_run != null) await _run;
        if (_leaseLoop != null) await _leaseLoop;
        _transport.Dispose();
    }

    /// <summary>
    /// One session's ordered, bounded send queue. A message sent while the stream is idle is written on the sender's
    /// thread (InlineSendQueue: no pump to wake on the fault path). A full queue or a failed write ends the session
    /// rather than block the data path.
    /// </summary>
    private sealed class GrpcLink : IControllerLink
    {
        private readonly CancellationTokenSource _sessionEnd;
        private readonly InlineSendQueue<AgentMessage> _queue;

        public GrpcLink(CancellationTokenSource sessionEnd)
        {
            _sessionEnd = sessionEnd;
            _queue = new InlineSendQueue<AgentMessage>(SendQueueLimit, _ => EndSession());
        }

        public void Send(AgentMessage message)
        {
            if (!_queue.TrySend(message)) EndSession();
        }

        private void EndSession()
        {
            if (_sessionEnd.IsCancellationRequested) return;
            try { _sessionEnd.Cancel(); }
            catch (ObjectDisposedException) { /* the session is already over */ }
        }

        public void Complete() => _queue.Complete();

        /// <summary>Starts writing to <paramref name="stream"/>; the task completes once the link is complete and no write is in flight.</summary>
        public Task WriteToAsync(IClientStreamWriter<AgentMessage> stream)
        {
            _queue.Attach(stream.WriteAsync);
            return _queue.Finished;
        }
    }

    private static partial class Log
    {
        [LoggerMessage(120, LogLevel.Warning, "controller session with {Url} ended: {Reason}; reconnecting in {BackoffMs} ms")]
        public static partial void SessionEnded(ILogger logger, string url, string reason, int backoffMs);
    }
}
