using System.Buffers.Binary;
using Microsoft.Extensions.Logging;
using Tessera.Core;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd;

/// <summary>
/// One NBD connection over any duplex <see cref="Stream"/> (a socket, or an in-memory pipe in tests).
///
/// Transmission works like this. One reader loop parses request headers from a receive buffer, validates them
/// (range, read-only, flags, size - the export never sees a bad request) and starts the export operation on the
/// reader itself. An operation that completes synchronously is answered at once; one that does not registers a
/// cached continuation, and the reader goes on to the next request, so requests overlap without a task or channel
/// hop each. At most <see cref="NbdServerOptions.MaxInFlightPerConnection"/> are outstanding; the reader waits for
/// a free slot before parsing the next header. Small writes of a pipelined burst go to one worker instead, so they
/// overlap with receiving (NbdConnection.Worker.cs).
///
/// Replies go to a queue. Whoever enqueues while no one is sending becomes the sender and drains the queue,
/// copying small replies into one send buffer so that several become one write; large payloads are written from
/// their own buffer. Replies may leave in any order; cookies match them to requests.
///
/// Ending: a protocol violation, DISC, end of stream, server stop or export close stops the reader; requests
/// already started are given a grace period to finish (their token is cancelled when the export closes or the
/// grace ends, and a cancelled operation is answered ESHUTDOWN); then the stream is closed.
/// </summary>
internal sealed partial class NbdConnection
{
    private readonly Stream _stream;
    private readonly INbdExportCatalog _catalog;
    private readonly NbdServerOptions _options;
    private readonly ILogger _logger;
    private readonly long _id;
    private readonly NbdInput _input;

    private INbdExport _export = null!;
    /// <summary>The export, when it can send reads from file mappings and this transport can take them (NbdConnection.MappedReads.cs).</summary>
    private INbdMappedReadExport? _mappedReads;
    /// <summary>The export, when it can take writes spliced into files and this transport can splice (NbdConnection.SplicedWrites.cs).</summary>
    private INbdSplicedWriteExport? _splicedWrites;
    private long _sizeBytes;
    private NbdExportCapabilities _caps;
    private bool _readOnly;

    private readonly SemaphoreSlim _slots;
    private readonly Stack<RequestContext> _pool = new();
    private readonly CancellationTokenSource _opsCts = new();
    private CancellationToken _opsToken;
    private volatile bool _exportClosed;
    private int _inFlight;
    private TaskCompletionSource? _idleWaiter;

    private readonly Queue<RequestContext> _replies;
    private bool _sending;
    private volatile bool _deferFlush;
    private volatile bool _broken;
    private readonly byte[] _send;
    private int _sendLength;
    private CancellationTokenSource? _readCts;

    /// <summary>The transport blocks in place (a dedicated thread): wait for slots synchronously too, so the reader never moves to a pool thread.</summary>
    private readonly bool _blockingTransport;

    public NbdConnection(Stream stream, INbdExportCatalog catalog, NbdServerOptions options, ILogger logger, long id, bool blockingTransport = false)
    {
        _blockingTransport = blockingTransport;
        _stream = stream;
        _catalog = catalog;
        _options = options;
        _logger = logger;
        _id = id;
        _input = new NbdInput(stream, options.ReceiveBufferBytes);
        _slots = new SemaphoreSlim(options.MaxInFlightPerConnection, options.MaxInFlightPerConnection);
        _replies = new Queue<RequestContext>(options.MaxInFlightPerConnection);
        _send = new byte[options.SendBufferBytes];
    }

    /// <summary>Serves the connection until it ends; never throws. <paramref name="stopping"/> is the server's stop signal.</summary>
    public async Task RunAsync(CancellationToken stopping)
    {
        string reason = "client disconnected";
        bool transmitting = false;
        _readCts = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        try
        {
            INbdExport? export;
            using (var handshakeCts = new CancellationTokenSource(_options.HandshakeTimeout, _options.TimeProvider))
            using (var linked = CancellationTokenSource.CreateLinkedTokenSource(handshakeCts.Token, stopping))
            {
                try
                {
                    export = await HandshakeAsync(linked.Token).ConfigureAwait(false);
                    if (handshakeCts.IsCancellationRequested)
                    {
                        // The deadline passed just as the handshake ended; a blocking transport may already have
                        // shut its receive side, so treat it as the timeout it nearly was.
                        export?.Dispose();
                        throw new OperationCanceledException(handshakeCts.Token);
                    }
                }
                catch (OperationCanceledException) when (handshakeCts.IsCancellationRequested)
                {
                    NbdLog.HandshakeTimedOut(_logger, _id);
                    reason = "handshake timed out";
                    return;
                }
            }
            if (export == null) { reason = "handshake ended by the client"; return; }
            _export = export;
            _sizeBytes = export.SizeBytes;
            _caps = export.Capabilities;
            _readOnly = export.ReadOnly;
            _mappedReads = export is INbdMappedReadExport mapped && _stream is BlockingSocketStream ? mapped : null;
            _splicedWrites = export is INbdSplicedWriteExport spliced && _stream is BlockingSocketStream && !_readOnly ? spliced : null;
            transmitting = true;
            NbdLog.ExportOpened(_logger, _id, export.Name, _sizeBytes, TransmissionFlags(export), _structured, _baseAllocation);
            using var linkedOps = CancellationTokenSource.CreateLinkedTokenSource(_opsCts.Token, export.Closed);
            _opsToken = linkedOps.Token;
            using var closedRegistration = export.Closed.Register(static s => ((NbdConnection)s!).OnExportClosed(), this);
            try
            {
                reason = await TransmitAsync(_readCts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_readCts.IsCancellationRequested)
            {
                reason = _exportClosed ? "export closed" : _broken ? "client went away (reply could not be sent)" : "server stopping";
            }
            finally
            {
                await DrainInFlightAsync().ConfigureAwait(false);
            }
        }
        catch (NbdProtocolException e)
        {
            NbdLog.ProtocolViolation(_logger, _id, e.Message);
            reason = "protocol violation: " + e.Message;
            if (transmitting) await DrainInFlightAsync().ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            reason = "server stopping";
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or System.Net.Sockets.SocketException)
        {
            NbdLog.TransportError(_logger, _id, e);
            reason = "transport error: " + e.Message;
            if (transmitting) await DrainInFlightAsync().ConfigureAwait(false);
        }
        finally
        {
            NbdLog.ConnectionClosed(_logger, _id, reason);
            _broken = true;
            try { await _stream.DisposeAsync().ConfigureAwait(false); } catch (Exception) { }
            if (transmitting) _export.Dispose();
            _readCts.Dispose();
            DiscardSplicePipe();
            lock (_pool) { while (_pool.Count > 0) _pool.Pop().ReturnBuffer(); }
        }
    }

    /// <summary>Cuts the transport off (server stop after the grace period): blocked receives and sends fail at once.</summary>
    public void Abort()
    {
        _broken = true;
        try { _stream.Dispose(); } catch (Exception) { }
    }

    private void OnExportClosed()
    {
        _exportClosed = true;
        NbdLog.ExportClosed(_logger, _id);
        try { _readCts?.Cancel(); } catch (ObjectDisposedException) { }
    }

    /// <summary>Waits for started requests to be answered: normally, then (after the grace period) cancelled.</summary>
    private async ValueTask DrainInFlightAsync()
    {
        ReleaseFlush();
        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _idleWaiter, waiter);
        if (Volatile.Read(ref _inFlight) == 0) waiter.TrySetResult();
        try
        {
            await waiter.Task.WaitAsync(_options.ShutdownGracePeriod, _options.TimeProvider).ConfigureAwait(false);
            return;
        }
        catch (TimeoutException) { }
        _opsCts.Cancel();
        try { await waiter.Task.WaitAsync(TimeSpan.FromSeconds(1), _options.TimeProvider).ConfigureAwait(false); }
        catch (TimeoutException) { } // an export that ignores cancellation; its late reply is dropped
    }

    private void EnterInFlight() => Interlocked.Increment(ref _inFlight);

    private void LeaveInFlight()
    {
        if (Interlocked.Decrement(ref _inFlight) == 0) Volatile.Read(ref _idleWaiter)?.TrySetResult();
    }

    private RequestContext RentContext()
    {
        lock (_pool) { if (_pool.Count > 0) return _pool.Pop(); }
        return new RequestContext(this);
    }

    private void ReturnContext(RequestContext ctx)
    {
        EndMappedRead(ctx);
        ctx.Reset();
        lock (_pool) _pool.Push(ctx);
        _slots.Release();
        LeaveInFlight();
    }

    /// <summary>The reader loop. Returns the reason the client ended the connection.</summary>
    private async Task<string> TransmitAsync(CancellationToken ct)
    {
        while (true)
        {
            if (_slots.CurrentCount == 0) ReleaseFlush();
            if (_blockingTransport) _slots.Wait(ct);
            else await _slots.WaitAsync(ct).ConfigureAwait(false);
            if (_input.BufferedCount < NbdWire.RequestHeaderBytes)
            {
                ReleaseFlush();
                if (!await _input.FillAsync(NbdWire.RequestHeaderBytes, "request header", ct).ConfigureAwait(false))
                {
                    _slots.Release();
                    return "client closed the connection without NBD_CMD_DISC";
                }
                _deferFlush = true;
            }
            var ctx = RentContext();
            EnterInFlight();
            if (!ParseHeader(_input.Buffered, ctx, out string? violation))
            {
                ReturnContext(ctx);
                throw new NbdProtocolException(violation!);
            }
            _input.Consume(NbdWire.RequestHeaderBytes);

            if (ctx.Command == NbdWire.CmdDisc)
            {
                ReturnContext(ctx);
                return "client sent NBD_CMD_DISC";
            }
            if (ctx.Command == NbdWire.CmdWrite)
            {
                if (ctx.Length > (uint)_options.MaxRequestBytes)
                {
                    ReturnContext(ctx);
                    throw new NbdProtocolException($"write of {ctx.Length} bytes exceeds the maximum {_options.MaxRequestBytes}");
                }
                if (!LeavePayloadInSocket(ctx))
                {
                    ctx.EnsureBuffer((int)ctx.Length);
                    try
                    {
                        if (_input.BufferedCount < (int)ctx.Length) ReleaseFlush();
                        await _input.ReadExactAsync(ctx.Payload, "write payload", ct).ConfigureAwait(false);
                        _deferFlush = true;
                    }
                    catch
                    {
                        ReturnContext(ctx);
                        throw;
                    }
                }
            }
            ctx.Errno = Validate(ctx);
            if (_exportClosed) ctx.Errno = NbdErrno.ESHUTDOWN;
            if (ctx.Errno != 0 && ctx.PayloadInSocket)
            {
                try { await SkipPayloadInSocketAsync(ctx, ct).ConfigureAwait(false); }
                catch
                {
                    ReturnContext(ctx);
                    throw;
                }
            }
            if (ctx.Errno != 0) EnqueueReply(ctx);
            else if (ctx.PayloadInSocket)
            {
                // The reader splices the payload out of the socket before it reads the next header.
                Dispatch(ctx);
                if (_broken) return "transport error while receiving a write payload";
            }
            else if (ctx.Length >= (uint)_options.InlineMaxBytes && ctx.Command is NbdWire.CmdRead or NbdWire.CmdWrite)
                ThreadPool.UnsafeQueueUserWorkItem(ctx, preferLocal: false);
            else if (ShouldOverlap(ctx)) EnqueueWork(ctx);
            else Dispatch(ctx);
        }
    }

    private static bool ParseHeader(ReadOnlySpan<byte> h, RequestContext ctx, out string? violation)
    {
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(h);
        if (magic != NbdWire.RequestMagic)
        {
            violation = $"bad request magic 0x{magic:x8}";
            return false;
        }
        ctx.Flags = BinaryPrimitives.ReadUInt16BigEndian(h[4..]);
        ctx.Command = BinaryPrimitives.ReadUInt16BigEndian(h[6..]);
        ctx.Cookie = BinaryPrimitives.ReadUInt64BigEndian(h[8..]);
        ctx.Offset = BinaryPrimitives.ReadUInt64BigEndian(h[16..]);
        ctx.Length = BinaryPrimitives.ReadUInt32BigEndian(h[24..]);
        violation = null;
        return true;
    }

    /// <summary>Everything the server checks before the export sees a request; returns an errno or 0.</summary>
    private uint Validate(RequestContext ctx)
    {
        ushort cmd = ctx.Command, flags = ctx.Flags;
        // Decided first: even an error reply to READ or BLOCK_STATUS must be structured once structured replies are on.
        ctx.Structured = _structured && (cmd == NbdWire.CmdRead || cmd == NbdWire.CmdBlockStatus);
        const ushort known = NbdWire.CmdFlagFua | NbdWire.CmdFlagNoHole | NbdWire.CmdFlagDf | NbdWire.CmdFlagReqOne | NbdWire.CmdFlagFastZero;
        if ((flags & ~known) != 0) return NbdErrno.EINVAL;
        if ((flags & NbdWire.CmdFlagDf) != 0 && (cmd != NbdWire.CmdRead || !_structured)) return NbdErrno.EINVAL;
        if ((flags & NbdWire.CmdFlagReqOne) != 0 && cmd != NbdWire.CmdBlockStatus) return NbdErrno.EINVAL;
        if ((flags & (NbdWire.CmdFlagNoHole | NbdWire.CmdFlagFastZero)) != 0 && cmd != NbdWire.CmdWriteZeroes) return NbdErrno.EINVAL;
        bool inRange = ctx.Offset <= (ulong)_sizeBytes && ctx.Length <= (ulong)_sizeBytes - ctx.Offset;
        switch (cmd)
        {
            case NbdWire.CmdRead:
                if (ctx.Length > (uint)_options.MaxRequestBytes) return NbdErrno.EINVAL;
                if (!inRange) return NbdErrno.EINVAL;
                ctx.SendHoles = _structured && (flags & NbdWire.CmdFlagDf) == 0;
                return 0;
            case NbdWire.CmdWrite:
                if (_readOnly) return NbdErrno.EPERM;
                return inRange ? 0 : NbdErrno.EINVAL;
            case NbdWire.CmdFlush:
                return (_caps & NbdExportCapabilities.Flush) != 0 ? 0 : NbdErrno.EINVAL;
            case NbdWire.CmdTrim:
                if (_readOnly) return NbdErrno.EPERM;
                if ((_caps & NbdExportCapabilities.Trim) == 0) return NbdErrno.EINVAL;
                return inRange ? 0 : NbdErrno.EINVAL;
            case NbdWire.CmdWriteZeroes:
                if (_readOnly) return NbdErrno.EPERM;
                if ((_caps & NbdExportCapabilities.WriteZeroes) == 0) return NbdErrno.EINVAL;
                if ((flags & NbdWire.CmdFlagFastZero) != 0 && (_caps & NbdExportCapabilities.FastZero) == 0) return NbdErrno.EINVAL;
                return inRange ? 0 : NbdErrno.EINVAL;
            case NbdWire.CmdCache:
                if ((_caps & NbdExportCapabilities.Cache) == 0) return NbdErrno.EINVAL;
                return inRange ? 0 : NbdErrno.EINVAL;
            case NbdWire.CmdBlockStatus:
                if (!_structured || !_baseAllocation) return NbdErrno.EINVAL;
                return ctx.Length == 0 || !inRange ? NbdErrno.EINVAL : 0;
            default:
                return NbdErrno.EINVAL;
        }
    }

    private ValueTask<IoStatus> Start(RequestContext ctx)
    {
        long offset = (long)ctx.Offset;
        bool fua = (ctx.Flags & NbdWire.CmdFlagFua) != 0;
        var ct = _opsToken;
        switch (ctx.Command)
        {
            case NbdWire.CmdRead:
                if (DeferToMappedRead(ctx)) return ValueTask.FromResult(IoStatus.Ok);
                ctx.EnsureBuffer((int)ctx.Length);
                return _export.ReadAsync(offset, ctx.Payload, ctx.SendHoles ? ctx.Extents : null, ct);
            case NbdWire.CmdWrite:
                if (ctx.PayloadInSocket) return SplicedWrite(ctx, fua, ct);
                return _export.WriteAsync(offset, ctx.Payload, fua, ct);
            case NbdWire.CmdFlush:
                return _export.FlushAsync(ct);
            case NbdWire.CmdTrim:
                return _export.TrimAsync(offset, ctx.Length, fua, ct);
            case NbdWire.CmdWriteZeroes:
                return _export.WriteZeroesAsync(offset, ctx.Length, fua, (ctx.Flags & NbdWire.CmdFlagNoHole) != 0,
                    (ctx.Flags & NbdWire.CmdFlagFastZero) != 0, ct);
            case NbdWire.CmdCache:
                return _export.CacheAsync(offset, ctx.Length, ct);
            case NbdWire.CmdBlockStatus:
                if ((_caps & NbdExportCapabilities.BlockStatus) == 0)
                {
                    ctx.Extents.Add(offset, ctx.Length, NbdExtentFlags.Data); // no allocation map: all data is the honest answer
                    return ValueTask.FromResult(IoStatus.Ok);
                }
                return _export.GetExtentsAsync(offset, ctx.Length, ctx.Extents, ct);
            default:
                return ValueTask.FromResult(IoStatus.InvalidArgument);
        }
    }

    internal void Dispatch(RequestContext ctx)
    {
        ValueTask<IoStatus> pending;
        try
        {
            pending = Start(ctx);
        }
        catch (Exception e)
        {
            Complete(ctx, FromException(ctx, e));
            return;
        }
        if (pending.IsCompleted)
        {
            Complete(ctx, Result(ctx, pending));
            return;
        }
        ctx.Pending = pending;
        pending.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(ctx.OnCompleted);
    }

    internal void OnOperationCompleted(RequestContext ctx)
    {
        var pending = ctx.Pending;
        ctx.Pending = default;
        Complete(ctx, Result(ctx, pending));
    }

    private IoStatus Result(RequestContext ctx, ValueTask<IoStatus> pending)
    {
        try { return pending.Result; }
        catch (Exception e) { return FromException(ctx, e); }
    }

    private IoStatus FromException(RequestContext ctx, Exception e)
    {
        if (e is OperationCanceledException) return IoStatus.Shutdown;
        NbdLog.ExportThrew(_logger, _id, ctx.Command, e);
        return IoStatus.IoError;
    }

    private void Complete(RequestContext ctx, IoStatus status)
    {
        ctx.Errno = NbdErrors.ToErrno(status);
        EnqueueReply(ctx);
    }
}
