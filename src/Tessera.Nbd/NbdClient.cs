using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using System.Threading.Tasks.Sources;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd;

public sealed class NbdClientOptions
{
    /// <summary>Negotiate structured replies (needed for block status and sparse reads).</summary>
    public bool StructuredReplies { get; set; } = true;

    /// <summary>Negotiate the base:allocation meta context (implies structured replies).</summary>
    public bool BaseAllocation { get; set; }

    public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Largest reply payload the client accepts (a bound against a hostile server).</summary>
    public int MaxReplyBytes { get; set; } = 64 * 1024 * 1024;
}

/// <summary>The connection failed, or the server broke the protocol or refused the handshake.</summary>
public sealed class NbdClientException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// An NBD client: fixed-newstyle handshake with NBD_OPT_GO (falling back to EXPORT_NAME), then any number of
/// concurrent requests matched to replies by cookie. Operations return the NBD errno (0 = success; see
/// <see cref="NbdErrno"/> and <see cref="NbdErrors.ToIoStatus"/>); a broken connection throws <see cref="NbdClientException"/>.
/// </summary>
public sealed class NbdClient : IAsyncDisposable
{
    /// <summary>One outstanding request; pooled, completed exactly once by whoever removes it from the table.</summary>
    private sealed class Pending : IValueTaskSource<uint>
    {
        private ManualResetValueTaskSourceCore<uint> _core = new() { RunContinuationsAsynchronously = true };
        private readonly NbdClient _owner;
        public ushort Command;
        public long Offset;
        public Memory<byte> Buffer;
        public NbdExtentList? Extents;
        public uint Errno;

        public Pending(NbdClient owner) => _owner = owner;

        public ValueTask<uint> Task => new(this, _core.Version);
        public void SetResult(uint errno) => _core.SetResult(errno);
        public void SetException(Exception e) => _core.SetException(e);
        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);
        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
            _core.OnCompleted(continuation, state, token, flags);

        public uint GetResult(short token)
        {
            try { return _core.GetResult(token); }
            finally
            {
                _core.Reset();
                Buffer = default;
                Extents = null;
                Errno = 0;
                _owner.ReturnPending(this);
            }
        }
    }

    private readonly ConcurrentStack<Pending> _pendingPool = new();

    private Pending RentPending() => _pendingPool.TryPop(out var p) ? p : new Pending(this);

    private void ReturnPending(Pending p)
    {
        if (_pendingPool.Count < 256) _pendingPool.Push(p);
    }

    private readonly Stream _stream;
    private readonly NbdInput _input;
    private readonly NbdClientOptions _options;
    private readonly ConcurrentDictionary<ulong, Pending> _pending = new();
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly byte[] _sendBuffer = new byte[64 * 1024];
    private long _nextCookie;
    private Task _readerLoop = Task.CompletedTask;
    private volatile Exception? _failure;
    private int _disposed;

    private NbdClient(Stream stream, NbdClientOptions options)
    {
        _stream = stream;
        _options = options;
        _input = new NbdInput(stream, 128 * 1024);
    }

    public long SizeBytes { get; private set; }

    public ushort TransmissionFlags { get; private set; }

    public bool StructuredReplies { get; private set; }

    /// <summary>The server granted base:allocation; <see cref="BlockStatusAsync"/> works.</summary>
    public bool BaseAllocation { get; private set; }

    public uint MaxBlockBytes { get; private set; } = 32 * 1024 * 1024;

    public uint PreferredBlockBytes { get; private set; } = 4096;

    public bool ReadOnly => (TransmissionFlags & NbdWire.TxReadOnly) != 0;

    public bool Has(ushort transmissionFlag) => (TransmissionFlags & transmissionFlag) == transmissionFlag;

    public static async Task<NbdClient> ConnectTcpAsync(string host, int port, string exportName, NbdClientOptions? options = null, CancellationToken ct = default)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try { await socket.ConnectAsync(host, port, ct).ConfigureAwait(false); }
        catch { socket.Dispose(); throw; }
        return await ConnectAsync(new NetworkStream(socket, ownsSocket: true), exportName, options, ct).ConfigureAwait(false);
    }

    public static async Task<NbdClient> ConnectUnixAsync(string path, string exportName, NbdClientOptions? options = null, CancellationToken ct = default)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try { await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct).ConfigureAwait(false); }
        catch { socket.Dispose(); throw; }
        return await ConnectAsync(new NetworkStream(socket, ownsSocket: true), exportName, options, ct).ConfigureAwait(false);
    }

    /// <summary>Runs the handshake over any connected transport; the client owns the stream from here on.</summary>
    public static async Task<NbdClient> ConnectAsync(Stream transport, string exportName, NbdClientOptions? options = null, CancellationToken ct = default)
    {
        var client = new NbdClient(transport, options ?? new NbdClientOptions());
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(client._options.HandshakeTimeout);
        try
        {
            await client.HandshakeAsync(exportName, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            await transport.DisposeAsync().ConfigureAwait(false);
            if (e is NbdClientException) throw;
            throw new NbdClientException("NBD handshake failed: " + e.Message, e);
        }
        client._readerLoop = Task.Run(client.ReaderLoopAsync);
        return client;
    }

    private async Task HandshakeAsync(string exportName, CancellationToken ct)
    {
        if (!await _input.FillAsync(18, "greeting", ct).ConfigureAwait(false)) throw new NbdClientException("server closed before greeting");
        var g = _input.Buffered;
        if (BinaryPrimitives.ReadUInt64BigEndian(g) != NbdWire.InitMagic || BinaryPrimitives.ReadUInt64BigEndian(g[8..]) != NbdWire.OptionMagic)
            throw new NbdClientException("not a newstyle NBD server");
        ushort serverFlags = BinaryPrimitives.ReadUInt16BigEndian(g[16..]);
        _input.Consume(18);
        if ((serverFlags & NbdWire.FlagFixedNewstyle) == 0) throw new NbdClientException("server does not support fixed newstyle");
        bool noZeroes = (serverFlags & NbdWire.FlagNoZeroes) != 0;
        var flags = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(flags, NbdWire.ClientFlagFixedNewstyle | (noZeroes ? NbdWire.ClientFlagNoZeroes : 0u));
        await _stream.WriteAsync(flags, ct).ConfigureAwait(false);

        if (_options.StructuredReplies || _options.BaseAllocation)
        {
            await SendOptionAsync(NbdWire.OptStructuredReply, [], ct).ConfigureAwait(false);
            var (type, _) = await ReadOptionReplyAsync(NbdWire.OptStructuredReply, ct).ConfigureAwait(false);
            StructuredReplies = type == NbdWire.RepAck;
        }
        byte[] name = Encoding.UTF8.GetBytes(exportName);
        if (_options.BaseAllocation && StructuredReplies)
        {
            var q = new byte[4 + name.Length + 4 + 4 + NbdWire.BaseAllocation.Length];
            BinaryPrimitives.WriteUInt32BigEndian(q, (uint)name.Length);
            name.CopyTo(q, 4);
            BinaryPrimitives.WriteUInt32BigEndian(q.AsSpan(4 + name.Length), 1);
            BinaryPrimitives.WriteUInt32BigEndian(q.AsSpan(8 + name.Length), (uint)NbdWire.BaseAllocation.Length);
            Encoding.ASCII.GetBytes(NbdWire.BaseAllocation, q.AsSpan(12 + name.Length));
            await SendOptionAsync(NbdWire.OptSetMetaContext, q, ct).ConfigureAwait(false);
            while (true)
            {
                var (type, data) = await ReadOptionReplyAsync(NbdWire.OptSetMetaContext, ct).ConfigureAwait(false);
                if (type == NbdWire.RepMetaContext && data.Length >= 4)
                {
                    _baseAllocationId = BinaryPrimitives.ReadUInt32BigEndian(data);
                    BaseAllocation = Encoding.ASCII.GetString(data, 4, data.Length - 4) == NbdWire.BaseAllocation;
                }
                else break; // ACK or an error: either way the option is over
            }
        }

        var go = new byte[4 + name.Length + 2 + 2];
        BinaryPrimitives.WriteUInt32BigEndian(go, (uint)name.Length);
        name.CopyTo(go, 4);
        BinaryPrimitives.WriteUInt16BigEndian(go.AsSpan(4 + name.Length), 1);
        BinaryPrimitives.WriteUInt16BigEndian(go.AsSpan(6 + name.Length), NbdWire.InfoBlockSize);
        await SendOptionAsync(NbdWire.OptGo, go, ct).ConfigureAwait(false);
        bool haveExport = false;
        while (true)
        {
            var (type, data) = await ReadOptionReplyAsync(NbdWire.OptGo, ct).ConfigureAwait(false);
            if (type == NbdWire.RepAck) break;
            if (type == NbdWire.RepInfo && data.Length >= 2)
            {
                ushort info = BinaryPrimitives.ReadUInt16BigEndian(data);
                if (info == NbdWire.InfoExport && data.Length == 12)
                {
                    SizeBytes = CheckedSize(BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2)));
                    TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
                    haveExport = true;
                }
                else if (info == NbdWire.InfoBlockSize && data.Length == 14)
                {
                    PreferredBlockBytes = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(6));
                    MaxBlockBytes = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(10));
                    // Requests are split at MaxBlockBytes: 0 would split forever, a few bytes into millions of requests.
                    if (MaxBlockBytes < MinUsableMaxBlockBytes)
                        throw new NbdClientException($"server's maximum block size {MaxBlockBytes} is below {MinUsableMaxBlockBytes} bytes");
                }
                continue;
            }
            if (type == NbdWire.RepErrUnsup)
            {
                // Old server without GO: EXPORT_NAME has no error path, the server just closes on a bad name.
                await SendOptionAsync(NbdWire.OptExportName, name, ct).ConfigureAwait(false);
                int n = noZeroes ? 10 : 134;
                if (!await _input.FillAsync(n, "export reply", ct).ConfigureAwait(false)) throw new NbdClientException($"server refused export '{exportName}'");
                SizeBytes = CheckedSize(BinaryPrimitives.ReadUInt64BigEndian(_input.Buffered));
                TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(_input.Buffered[8..]);
                _input.Consume(n);
                return;
            }
            if ((type & 0x80000000) != 0)
                throw new NbdClientException(type == NbdWire.RepErrUnknown ? $"server has no export '{exportName}'" : $"server refused NBD_OPT_GO (reply 0x{type:x})");
        }
        if (!haveExport) throw new NbdClientException("server finished NBD_OPT_GO without NBD_INFO_EXPORT");
    }

    private uint _baseAllocationId;

    /// <summary>The smallest maximum block size accepted from a server: one 512-byte sector.</summary>
    public const uint MinUsableMaxBlockBytes = 512;

    /// <summary>Sizes are 64-bit unsigned on the wire; one beyond long.MaxValue would become a negative disk size.</summary>
    private static long CheckedSize(ulong sizeBytes) =>
        sizeBytes <= long.MaxValue ? (long)sizeBytes : throw new NbdClientException($"server reported an export size of {sizeBytes} bytes, more than 2^63-1");

    private async ValueTask SendOptionAsync(uint option, byte[] data, CancellationToken ct)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, NbdWire.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)data.Length);
        data.CopyTo(b, 16);
        await _stream.WriteAsync(b, ct).ConfigureAwait(false);
        await _stream.FlushAsync(ct).ConfigureAwait(false);
    }

    private async ValueTask<(uint Type, byte[] Data)> ReadOptionReplyAsync(uint option, CancellationToken ct)
    {
        if (!await _input.FillAsync(20, "option reply", ct).ConfigureAwait(false)) throw new NbdClientException("server closed during the handshake");
        var h = _input.Buffered;
        if (BinaryPrimitives.ReadUInt64BigEndian(h) != NbdWire.OptionReplyMagic) throw new NbdClientException("bad option reply magic");
        uint replyOption = BinaryPrimitives.ReadUInt32BigEndian(h[8..]);
        uint type = BinaryPrimitives.ReadUInt32BigEndian(h[12..]);
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h[16..]);
        _input.Consume(20);
        if (replyOption != option) throw new NbdClientException($"option reply for {replyOption}, expected {option}");
        if (length > 1024 * 1024) throw new NbdClientException("option reply too long");
        var data = new byte[length];
        await _input.ReadExactAsync(data, "option reply", ct).ConfigureAwait(false);
        return (type, data);
    }

    // ---- transmission ----

    /// <summary>Reads buffer.Length bytes; a buffer larger than the server's maximum block size is read in pieces.</summary>
    public ValueTask<uint> ReadAsync(long offset, Memory<byte> buffer, bool dontFragment = false, CancellationToken ct = default)
    {
        ushort flags = dontFragment ? NbdWire.CmdFlagDf : (ushort)0;
        if (buffer.Length <= MaxBlockBytes) return SendAsync(NbdWire.CmdRead, flags, offset, (uint)buffer.Length, default, buffer, null, ct);
        return ReadSplitAsync(offset, buffer, flags, ct);
    }

    /// <summary>Writes data; data larger than the server's maximum block size is written in pieces.</summary>
    public ValueTask<uint> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken ct = default)
    {
        ushort flags = fua ? NbdWire.CmdFlagFua : (ushort)0;
        if (data.Length <= MaxBlockBytes) return SendAsync(NbdWire.CmdWrite, flags, offset, (uint)data.Length, data, default, null, ct);
        return WriteSplitAsync(offset, data, flags, ct);
    }

    private async ValueTask<uint> ReadSplitAsync(long offset, Memory<byte> buffer, ushort flags, CancellationToken ct)
    {
        int step = (int)Math.Min(MaxBlockBytes, int.MaxValue);
        var parts = new List<Task<uint>>();
        for (int at = 0; at < buffer.Length; at += step)
        {
            var piece = buffer.Slice(at, Math.Min(step, buffer.Length - at));
            parts.Add(SendAsync(NbdWire.CmdRead, flags, offset + at, (uint)piece.Length, default, piece, null, ct).AsTask());
        }
        foreach (var e in await Task.WhenAll(parts).ConfigureAwait(false)) if (e != 0) return e;
        return 0;
    }

    private async ValueTask<uint> WriteSplitAsync(long offset, ReadOnlyMemory<byte> data, ushort flags, CancellationToken ct)
    {
        int step = (int)Math.Min(MaxBlockBytes, int.MaxValue);
        var parts = new List<Task<uint>>();
        for (int at = 0; at < data.Length; at += step)
        {
            var piece = data.Slice(at, Math.Min(step, data.Length - at));
            parts.Add(SendAsync(NbdWire.CmdWrite, flags, offset + at, (uint)piece.Length, piece, default, null, ct).AsTask());
        }
        foreach (var e in await Task.WhenAll(parts).ConfigureAwait(false)) if (e != 0) return e;
        return 0;
    }

    public ValueTask<uint> FlushAsync(CancellationToken ct = default)
        => SendAsync(NbdWire.CmdFlush, 0, 0, 0, default, default, null, ct);

    public ValueTask<uint> TrimAsync(long offset, uint length, bool fua = false, CancellationToken ct = default)
        => SendAsync(NbdWire.CmdTrim, fua ? NbdWire.CmdFlagFua : (ushort)0, offset, length, default, default, null, ct);

    public ValueTask<uint> CacheAsync(long offset, uint length, CancellationToken ct = default)
        => SendAsync(NbdWire.CmdCache, 0, offset, length, default, default, null, ct);

    public ValueTask<uint> WriteZeroesAsync(long offset, uint length, bool fua = false, bool noHole = false, bool fastZero = false, CancellationToken ct = default)
    {
        ushort flags = (ushort)((fua ? NbdWire.CmdFlagFua : 0) | (noHole ? NbdWire.CmdFlagNoHole : 0) | (fastZero ? NbdWire.CmdFlagFastZero : 0));
        return SendAsync(NbdWire.CmdWriteZeroes, flags, offset, length, default, default, null, ct);
    }

    /// <summary>Appends the base:allocation extents the server reports for the range to <paramref name="extents"/>.</summary>
    public ValueTask<uint> BlockStatusAsync(long offset, uint length, NbdExtentList extents, bool reqOne = false, CancellationToken ct = default)
        => SendAsync(NbdWire.CmdBlockStatus, reqOne ? NbdWire.CmdFlagReqOne : (ushort)0, offset, length, default, default, extents, ct);

    /// <summary>Sends any command with any flags (for tests and diagnostics); a READ's data is discarded.</summary>
    public ValueTask<uint> SendCommandAsync(ushort command, ushort flags, long offset, uint length, ReadOnlyMemory<byte> payload = default, CancellationToken ct = default)
    {
        Memory<byte> sink = command == NbdWire.CmdRead ? new byte[length] : default;
        return SendAsync(command, flags, offset, length, payload, sink, command == NbdWire.CmdBlockStatus ? new NbdExtentList() : null, ct);
    }

    /// <summary>Sends NBD_CMD_DISC, waits (bounded) for the server to close, and releases the connection.</summary>
    public async Task DisconnectAsync()
    {
        if (_failure == null)
        {
            try
            {
                var header = new byte[NbdWire.RequestHeaderBytes];
                WriteRequestHeader(header, NbdWire.CmdDisc, 0, 0, 0, 0);
                await _sendLock.WaitAsync().ConfigureAwait(false);
                try { await _stream.WriteAsync(header).ConfigureAwait(false); }
                finally { _sendLock.Release(); }
                await _readerLoop.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            }
            catch (Exception) { }
        }
        await DisposeAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Fail(new NbdClientException("NBD client disposed"));
        await _stream.DisposeAsync().ConfigureAwait(false);
        try { await _readerLoop.ConfigureAwait(false); } catch (Exception) { }
    }

    private static void WriteRequestHeader(Span<byte> h, ushort command, ushort flags, ulong cookie, long offset, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(h, NbdWire.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(h[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(h[6..], command);
        BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
        BinaryPrimitives.WriteUInt64BigEndian(h[16..], (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(h[24..], length);
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<uint> SendAsync(ushort command, ushort flags, long offset, uint length, ReadOnlyMemory<byte> payload,
        Memory<byte> readBuffer, NbdExtentList? extents, CancellationToken ct)
    {
        if (_failure is { } f) throw new NbdClientException("NBD connection is broken: " + f.Message, f);
        ulong cookie = (ulong)Interlocked.Increment(ref _nextCookie);
        var op = RentPending();
        op.Command = command;
        op.Offset = offset;
        op.Buffer = readBuffer;
        op.Extents = extents;
        _pending[cookie] = op;
        await _sendLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            WriteRequestHeader(_sendBuffer, command, flags, cookie, offset, length);
            if (payload.Length <= _sendBuffer.Length - NbdWire.RequestHeaderBytes)
            {
                payload.Span.CopyTo(_sendBuffer.AsSpan(NbdWire.RequestHeaderBytes));
                await _stream.WriteAsync(_sendBuffer.AsMemory(0, NbdWire.RequestHeaderBytes + payload.Length), ct).ConfigureAwait(false);
            }
            else
            {
                await _stream.WriteAsync(_sendBuffer.AsMemory(0, NbdWire.RequestHeaderBytes), ct).ConfigureAwait(false);
                await _stream.WriteAsync(payload, ct).ConfigureAwait(false);
            }
        }
        catch (Exception e)
        {
            _pending.TryRemove(cookie, out _);
            Fail(e);
            throw new NbdClientException("NBD send failed: " + e.Message, e);
        }
        finally
        {
            _sendLock.Release();
        }
        if (_failure != null && _pending.TryRemove(cookie, out _)) throw new NbdClientException("NBD connection is broken", _failure);
        return await op.Task.ConfigureAwait(false);
    }

    private void Fail(Exception e)
    {
        _failure ??= e;
        foreach (var key in _pending.Keys)
            if (_pending.TryRemove(key, out var op))
                op.SetException(new NbdClientException("NBD connection lost: " + e.Message, e));
    }

    private async Task ReaderLoopAsync()
    {
        try
        {
            while (true)
            {
                if (!await _input.FillAsync(4, "reply", default).ConfigureAwait(false)) throw new NbdClientException("server closed the connection");
                uint magic = BinaryPrimitives.ReadUInt32BigEndian(_input.Buffered);
                if (magic == NbdWire.SimpleReplyMagic) await ReadSimpleReplyAsync().ConfigureAwait(false);
                else if (magic == NbdWire.StructuredReplyMagic && StructuredReplies) await ReadChunkAsync().ConfigureAwait(false);
                else throw new NbdClientException($"bad reply magic 0x{magic:x8}");
            }
        }
        catch (Exception e)
        {
            Fail(e);
        }
    }

    private Pending Lookup(ulong cookie) =>
        _pending.TryGetValue(cookie, out var op) ? op : throw new NbdClientException($"reply for unknown cookie {cookie}");

    private async ValueTask ReadSimpleReplyAsync()
    {
        await _input.FillAsync(16, "simple reply", default).ConfigureAwait(false);
        uint errno = BinaryPrimitives.ReadUInt32BigEndian(_input.Buffered[4..]);
        ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(_input.Buffered[8..]);
        _input.Consume(16);
        var op = Lookup(cookie);
        if (op.Command == NbdWire.CmdRead && errno == 0)
            await _input.ReadExactAsync(op.Buffer, "read payload", default).ConfigureAwait(false);
        if (_pending.TryRemove(cookie, out _)) op.SetResult(errno);
    }

    private async ValueTask ReadChunkAsync()
    {
        await _input.FillAsync(20, "structured reply", default).ConfigureAwait(false);
        var h = _input.Buffered;
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(h[4..]);
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(h[6..]);
        ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(h[8..]);
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h[16..]);
        _input.Consume(20);
        if (length > (uint)_options.MaxReplyBytes) throw new NbdClientException($"reply chunk of {length} bytes is too long");
        var op = Lookup(cookie);
        switch (type)
        {
            case NbdWire.ReplyTypeNone:
                if (length != 0) throw new NbdClientException("NONE chunk with payload");
                break;
            case NbdWire.ReplyTypeOffsetData:
            {
                if (length < 8 || op.Command != NbdWire.CmdRead) throw new NbdClientException("unexpected OFFSET_DATA chunk");
                long at = await ReadInt64Async().ConfigureAwait(false) - op.Offset;
                long n = length - 8;
                if (at < 0 || at + n > op.Buffer.Length) throw new NbdClientException("OFFSET_DATA outside the request");
                await _input.ReadExactAsync(op.Buffer.Slice((int)at, (int)n), "read data", default).ConfigureAwait(false);
                break;
            }
            case NbdWire.ReplyTypeOffsetHole:
            {
                if (length != 12 || op.Command != NbdWire.CmdRead) throw new NbdClientException("unexpected OFFSET_HOLE chunk");
                long at = await ReadInt64Async().ConfigureAwait(false) - op.Offset;
                await _input.FillAsync(4, "hole", default).ConfigureAwait(false);
                uint n = BinaryPrimitives.ReadUInt32BigEndian(_input.Buffered);
                _input.Consume(4);
                if (at < 0 || at + n > op.Buffer.Length) throw new NbdClientException("OFFSET_HOLE outside the request");
                op.Buffer.Span.Slice((int)at, (int)n).Clear();
                break;
            }
            case NbdWire.ReplyTypeBlockStatus:
            {
                if (length < 12 || (length - 4) % 8 != 0 || op.Extents == null) throw new NbdClientException("unexpected BLOCK_STATUS chunk");
                var data = new byte[length];
                await _input.ReadExactAsync(data, "block status", default).ConfigureAwait(false);
                long pos = op.Offset;
                for (int i = 4; i < data.Length; i += 8)
                {
                    uint n = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(i));
                    uint f = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(i + 4));
                    op.Extents.Add(pos, n, (NbdExtentFlags)f);
                    pos += n;
                }
                break;
            }
            default:
                if ((type & 0x8000) != 0)
                {
                    if (length < 6) throw new NbdClientException("short error chunk");
                    var data = new byte[length];
                    await _input.ReadExactAsync(data, "error chunk", default).ConfigureAwait(false);
                    uint errno = BinaryPrimitives.ReadUInt32BigEndian(data);
                    if (op.Errno == 0) op.Errno = errno == 0 ? NbdErrno.EIO : errno;
                }
                else
                {
                    await _input.SkipAsync(length, "unknown chunk", default).ConfigureAwait(false);
                }
                break;
        }
        if ((flags & NbdWire.ReplyFlagDone) != 0)
        {
            if (_pending.TryRemove(cookie, out _)) op.SetResult(op.Errno);
        }
    }

    private async ValueTask<long> ReadInt64Async()
    {
        await _input.FillAsync(8, "chunk offset", default).ConfigureAwait(false);
        long v = (long)BinaryPrimitives.ReadUInt64BigEndian(_input.Buffered);
        _input.Consume(8);
        return v;
    }
}
