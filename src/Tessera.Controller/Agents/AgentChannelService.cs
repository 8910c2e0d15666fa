using Grpc.Core;
using Microsoft.Extensions.Logging;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Agents;

/// <summary>
/// The agent end of the control path: one bidirectional stream per agent. What the agent can rely on:
/// <list type="number">
/// <item>The first message it sends must be Register; anything else ends the stream with FAILED_PRECONDITION.</item>
/// <item>The controller answers Registered, then one CreateTable command per disk presented to the host, before
/// anything else (in particular before any HeartbeatAck), so a table the agent kept from an older session is
/// replaced by an all-Invalid one before its lease is renewed.</item>
/// <item>Every later message to this agent leaves through one ordered queue: fault responses and commands
/// about a disk arrive in the order the controller decided them.</item>
/// <item>Each Heartbeat is acknowledged at once with the same sequence; a closed session acknowledges nothing.</item>
/// <item>A new registration of the same host ends the older stream (ABORTED).</item>
/// </list>
/// </summary>
public sealed partial class AgentChannelService : AgentChannel.AgentChannelBase
{
    public const int MaxHostNameLength = 253;

    private readonly ControllerCore _core;
    private readonly ILogger _log;

    public AgentChannelService(ControllerCore core, ILoggerFactory loggerFactory)
    {
        _core = core;
        _log = loggerFactory.CreateLogger<AgentChannelService>();
    }

    public override async Task Connect(IAsyncStreamReader<AgentMessage> requestStream, IServerStreamWriter<ControllerMessage> responseStream, ServerCallContext context)
    {
        var callToken = context.CancellationToken;
        if (!await requestStream.MoveNext(callToken).ConfigureAwait(false)) return;
        if (requestStream.Current.BodyCase != AgentMessage.BodyOneofCase.Register)
            throw new RpcException(new Status(StatusCode.FailedPrecondition, "the first message on the agent channel must be Register"));
        var register = requestStream.Current.Register;
        if (register.Host.Length is 0 or > MaxHostNameLength)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"host name must be 1..{MaxHostNameLength} characters"));

        var session = new AgentSession(register.Host, register.Incarnation, register.NbdAddress, _core.Time, TimeSpan.FromMilliseconds(_core.Options.LeaseMs));
        if (!_core.Sessions.TryAdd(session))
            throw new RpcException(new Status(StatusCode.ResourceExhausted, $"too many agent sessions (at most {SessionRegistry.MaxSessions})"));
        LogRegistered(_log, session.Host, session.Incarnation, session.NbdAddress);

        using var linked = CancellationTokenSource.CreateLinkedTokenSource(callToken, session.Closed, _core.Stopping);
        var writer = session.RunWriterAsync(responseStream, linked.Token);
        try
        {
            lock (_core.ContainerLock) // so an AddContainer either is in this list or is sent after it
            {
                var registered = new Registered
                {
                    ControllerEpoch = _core.Store.Epoch,
                    LeaseMs = (uint)_core.Options.LeaseMs,
                    HeartbeatIntervalMs = (uint)_core.Options.HeartbeatIntervalMs,
                };
                foreach (var c in _core.Store.ListContainers())
                    registered.Containers.Add(new ContainerInfo { Id = c.Id, Name = c.Name, Uri = c.Uri, Failed = c.Failed });
                session.Send(new ControllerMessage { Registered = registered });
                session.Ready = true;
            }
            _core.Store.UpsertAgent(session.Host, session.Incarnation, session.NbdAddress, _core.Time.GetUtcNow().ToString("O"));

            foreach (var p in _core.Store.ListPresentations(host: session.Host))
                if (_core.Store.GetDisk(p.DiskId) is { } disk)
                    _ = _core.Coordinator.SendCreateTable(session, disk, p.ReadOnly);
            _core.Sessions.MarkTablesSent(session.Host);

            while (await requestStream.MoveNext(linked.Token).ConfigureAwait(false))
            {
                var message = requestStream.Current;
                switch (message.BodyCase)
                {
                    case AgentMessage.BodyOneofCase.Heartbeat:
                        session.OnHeartbeat(message.Heartbeat.Sequence);
                        break;
                    case AgentMessage.BodyOneofCase.Fault:
                        _core.Coordinator.OnFault(session, message.Fault);
                        break;
                    case AgentMessage.BodyOneofCase.Reply:
                        session.OnReply(message.Reply);
                        break;
                    case AgentMessage.BodyOneofCase.ContainerError:
                        if (message.ContainerError.ContainerId is > 0 and <= ushort.MaxValue)
                            _ = _core.Coordinator.OnContainerErrorReported((ushort)message.ContainerError.ContainerId, "agent " + session.Host,
                                message.ContainerError.Message.Length > 200 ? message.ContainerError.Message[..200] : message.ContainerError.Message);
                        break;
                    default:
                        session.Close($"unexpected {message.BodyCase} message");
                        throw new RpcException(new Status(StatusCode.InvalidArgument, $"unexpected {message.BodyCase} message after Register"));
                }
            }
            session.Close("the agent ended its stream");
        }
        catch (OperationCanceledException) when (session.IsClosed || _core.Stopping.IsCancellationRequested)
        {
            // closed by us (replaced, fenced, queue full) or shutting down
        }
        catch (Exception e) when (e is IOException or OperationCanceledException)
        {
            session.Close("stream broken: " + e.Message);
        }
        finally
        {
            session.Close(session.CloseReason ?? "stream ended");
            _core.Sessions.Remove(session);
            await writer.ConfigureAwait(false);
            // last_seen is written at registration and here, not per heartbeat: one write a second per agent is waste.
            try
            {
                if (_core.Sessions.Get(session.Host) is null) // a newer session of the host owns the row otherwise
                    _core.Store.UpsertAgent(session.Host, session.Incarnation, session.NbdAddress, session.LastHeartbeatAt.ToString("O"));
            }
            catch (Exception e) when (e is Microsoft.Data.Sqlite.SqliteException or ObjectDisposedException or InvalidOperationException)
            {
                // the store is closing with the controller; the row from registration stays
            }
            LogClosed(_log, session.Host, session.Incarnation, session.CloseReason ?? "");
        }
        if (session.CloseReason is { } reason && reason.StartsWith("replaced", StringComparison.Ordinal))
            throw new RpcException(new Status(StatusCode.Aborted, reason));
    }

    [LoggerMessage(EventId = 100, Level = LogLevel.Information, Message = "agent {Host} registered (incarnation {Incarnation}, nbd {NbdAddress})")]
    private static partial void LogRegistered(ILogger logger, string host, ulong incarnation, string nbdAddress);

    [LoggerMessage(EventId = 101, Level = LogLevel.Information, Message = "agent {Host} (incarnation {Incarnation}) session closed: {Reason}")]
    private static partial void LogClosed(ILogger logger, string host, ulong incarnation, string reason);
}
