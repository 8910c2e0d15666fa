using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd;

/// <summary>
/// The reply side: a queue and a single sender at a time. A thread that enqueues while nobody is sending becomes
/// the sender and keeps draining until the queue is empty, so replies that complete together leave in one write.
/// While the reader is working through requests that arrived together (<see cref="_deferFlush"/>), the sender
/// leaves small replies in the send buffer; the reader releases them before it next waits, so a pipelined burst
/// of requests is answered with one send instead of one per request.
/// </summary>
internal sealed partial class NbdConnection
{
    private void EnqueueReply(RequestContext ctx)
    {
        lock (_replies)
        {
            _replies.Enqueue(ctx);
            if (_sending) return;
            _sending = true;
        }
        EnterInFlight(); // the sender counts as in flight, so draining waits for the last bytes to leave
        _ = SendLoopAsync();
    }

    /// <summary>
    /// Called by the reader before it may wait (for bytes, or for a free slot): replies it left in the send buffer
    /// while working through a batch of already-received requests go out now, in one write.
    /// </summary>
    private void ReleaseFlush()
    {
        lock (_replies)
        {
            _deferFlush = false;
            if (_sending || _sendLength == 0) return;
            _sending = true;
        }
        EnterInFlight();
        _ = SendLoopAsync();
    }

    private async Task SendLoopAsync()
    {
        while (true)
        {
            RequestContext? ctx;
            lock (_replies)
            {
                if (!_replies.TryDequeue(out ctx))
                {
                    if (_broken) _sendLength = 0;
                    if (_sendLength == 0 || _deferFlush || _workerDefer)
                    {
                        _sending = false;
                        break;
                    }
                }
            }
            if (ctx == null)
            {
                await FlushSendAsync().ConfigureAwait(false);
                continue;
            }
            try
            {
                if (!_broken) await WriteReplyAsync(ctx).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                MarkBroken(e);
            }
            finally
            {
                ReturnContext(ctx);
            }
        }
        LeaveInFlight();
    }

    private void MarkBroken(Exception e)
    {
        if (_broken) return;
        _broken = true;
        NbdLog.TransportError(_logger, _id, e);
        try { _readCts?.Cancel(); } catch (ObjectDisposedException) { }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FlushSendAsync()
    {
        int n = _sendLength;
        _sendLength = 0;
        if (n == 0 || _broken) return;
        try
        {
            await _stream.WriteAsync(_send.AsMemory(0, n)).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            MarkBroken(e);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteReplyAsync(RequestContext ctx)
    {
        if (ctx.ReadDeferred) await ResolveDeferredReadAsync(ctx).ConfigureAwait(false);
        if (!ctx.Structured)
        {
            if (_send.Length - _sendLength < NbdWire.SimpleReplyHeaderBytes) await FlushSendAsync().ConfigureAwait(false);
            var h = _send.AsSpan(_sendLength, NbdWire.SimpleReplyHeaderBytes);
            BinaryPrimitives.WriteUInt32BigEndian(h, NbdWire.SimpleReplyMagic);
            BinaryPrimitives.WriteUInt32BigEndian(h[4..], ctx.Errno);
            BinaryPrimitives.WriteUInt64BigEndian(h[8..], ctx.Cookie);
            _sendLength += NbdWire.SimpleReplyHeaderBytes;
            if (ctx.Command == NbdWire.CmdRead && ctx.Errno == 0 && ctx.Length > 0)
            {
                if (ctx.MappedReadActive) SendMappedPayload(ctx, 0, (int)ctx.Length);
                else await AppendPayloadAsync(ctx.Buffer, 0, (int)ctx.Length).ConfigureAwait(false);
            }
            return;
        }
        if (ctx.Errno != 0)
        {
            const int n = NbdWire.StructuredReplyHeaderBytes + 6;
            if (_send.Length - _sendLength < n) await FlushSendAsync().ConfigureAwait(false);
            var h = _send.AsSpan(_sendLength, n);
            WriteChunkHeader(h, ctx.Cookie, NbdWire.ReplyFlagDone, NbdWire.ReplyTypeError, 6);
            BinaryPrimitives.WriteUInt32BigEndian(h[20..], ctx.Errno);
            BinaryPrimitives.WriteUInt16BigEndian(h[24..], 0);
            _sendLength += n;
            return;
        }
        if (ctx.Command == NbdWire.CmdBlockStatus)
        {
            if (_send.Length - _sendLength < NbdWire.StructuredReplyHeaderBytes + 4 + 8 * _options.MaxExtentsPerReply)
                await FlushSendAsync().ConfigureAwait(false);
            WriteBlockStatus(ctx);
            return;
        }
        // Structured read.
        long start = (long)ctx.Offset, end = start + ctx.Length;
        if (ctx.Length == 0)
        {
            await AppendChunkHeaderAsync(ctx.Cookie, NbdWire.ReplyFlagDone, NbdWire.ReplyTypeNone, 0, 0).ConfigureAwait(false);
            return;
        }
        if (!ctx.SendHoles || ctx.Extents.Count == 0 || !ExtentsUsable(ctx))
        {
            await AppendDataChunkAsync(ctx, start, end, NbdWire.ReplyFlagDone).ConfigureAwait(false);
            return;
        }
        long pos = start;
        for (int i = 0; i < ctx.Extents.Count; i++)
        {
            var e = ctx.Extents[i];
            long s = Math.Max(e.Offset, pos), t = Math.Min(e.Offset + e.Length, end);
            if (t <= s) continue;
            if (s > pos) await AppendDataChunkAsync(ctx, pos, s, 0).ConfigureAwait(false);
            await AppendChunkHeaderAsync(ctx.Cookie, 0, NbdWire.ReplyTypeOffsetHole, 12, s).ConfigureAwait(false);
            BinaryPrimitives.WriteUInt32BigEndian(_send.AsSpan(_sendLength), (uint)(t - s));
            _sendLength += 4;
            pos = t;
        }
        if (pos < end) await AppendDataChunkAsync(ctx, pos, end, 0).ConfigureAwait(false);
        await AppendChunkHeaderAsync(ctx.Cookie, NbdWire.ReplyFlagDone, NbdWire.ReplyTypeNone, 0, 0).ConfigureAwait(false);
    }

    /// <summary>
    /// The export promised ascending, non-overlapping zero extents and left those bytes unfilled. If it broke the
    /// promise, zero the ranges it named and send everything as data rather than risk sending stale bytes.
    /// </summary>
    private static bool ExtentsUsable(RequestContext ctx)
    {
        long prevEnd = long.MinValue, start = (long)ctx.Offset, end = start + ctx.Length;
        bool ok = true;
        for (int i = 0; i < ctx.Extents.Count; i++)
        {
            var e = ctx.Extents[i];
            if (e.Offset < prevEnd || e.Length < 0) { ok = false; break; }
            prevEnd = e.Offset + e.Length;
        }
        if (ok) return true;
        for (int i = 0; i < ctx.Extents.Count; i++)
        {
            var e = ctx.Extents[i];
            long s = Math.Max(e.Offset, start), t = Math.Min(e.Offset + e.Length, end);
            if (t > s) ctx.Buffer.AsSpan((int)(s - start), (int)(t - s)).Clear();
        }
        return false;
    }

    private async ValueTask AppendDataChunkAsync(RequestContext ctx, long from, long to, ushort flags)
    {
        await AppendChunkHeaderAsync(ctx.Cookie, flags, NbdWire.ReplyTypeOffsetData, (uint)(8 + to - from), from).ConfigureAwait(false);
        if (ctx.MappedReadActive) SendMappedPayload(ctx, (int)(from - (long)ctx.Offset), (int)(to - from));
        else await AppendPayloadAsync(ctx.Buffer, (int)(from - (long)ctx.Offset), (int)(to - from)).ConfigureAwait(false);
    }

    /// <summary>Appends a chunk header, plus the 8-byte offset when <paramref name="length"/> is at least 8.</summary>
    private async ValueTask AppendChunkHeaderAsync(ulong cookie, ushort flags, ushort type, uint length, long offset)
    {
        int n = NbdWire.StructuredReplyHeaderBytes + (length >= 8 ? 8 : 0) + 4;
        if (_send.Length - _sendLength < n) await FlushSendAsync().ConfigureAwait(false);
        var h = _send.AsSpan(_sendLength);
        WriteChunkHeader(h, cookie, flags, type, length);
        _sendLength += NbdWire.StructuredReplyHeaderBytes;
        if (length >= 8)
        {
            BinaryPrimitives.WriteUInt64BigEndian(h[20..], (ulong)offset);
            _sendLength += 8;
        }
    }

    private static void WriteChunkHeader(Span<byte> h, ulong cookie, ushort flags, ushort type, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(h, NbdWire.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(h[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(h[6..], type);
        BinaryPrimitives.WriteUInt64BigEndian(h[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(h[16..], length);
    }

    private async ValueTask AppendPayloadAsync(byte[] buffer, int offset, int count)
    {
        if (count <= _options.CopyPayloadMaxBytes)
        {
            if (_send.Length - _sendLength < count) await FlushSendAsync().ConfigureAwait(false);
            buffer.AsSpan(offset, count).CopyTo(_send.AsSpan(_sendLength));
            _sendLength += count;
            return;
        }
        if (_stream is BlockingSocketStream socket)
        {
            int head = _sendLength;
            _sendLength = 0;
            if (_broken) return;
            try { socket.WriteGather(_send, head, buffer, offset, count); }
            catch (Exception e) { MarkBroken(e); }
            return;
        }
        await FlushSendAsync().ConfigureAwait(false);
        if (_broken) return;
        try
        {
            await _stream.WriteAsync(buffer.AsMemory(offset, count)).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            MarkBroken(e);
        }
    }

    private void WriteBlockStatus(RequestContext ctx)
    {
        long start = (long)ctx.Offset, end = start + ctx.Length;
        int max = (ctx.Flags & NbdWire.CmdFlagReqOne) != 0 ? 1 : _options.MaxExtentsPerReply;
        // Count the usable descriptors first: they must start at the request offset and be contiguous.
        int count = 0;
        long pos = start;
        for (int i = 0; i < ctx.Extents.Count && count < max && pos < end; i++)
        {
            var e = ctx.Extents[i];
            if (e.Offset > pos || e.Offset + e.Length <= pos) break;
            pos = Math.Min(e.Offset + e.Length, end);
            count++;
        }
        int n = NbdWire.StructuredReplyHeaderBytes + 4 + 8 * Math.Max(count, 1);
        var h = _send.AsSpan(_sendLength, n);
        if (count == 0)
        {
            // The export gave nothing usable for the first byte: report it honestly as an I/O error.
            WriteChunkHeader(h, ctx.Cookie, NbdWire.ReplyFlagDone, NbdWire.ReplyTypeError, 6);
            BinaryPrimitives.WriteUInt32BigEndian(h[20..], NbdErrno.EIO);
            BinaryPrimitives.WriteUInt16BigEndian(h[24..], 0);
            _sendLength += NbdWire.StructuredReplyHeaderBytes + 6;
            return;
        }
        WriteChunkHeader(h, ctx.Cookie, NbdWire.ReplyFlagDone, NbdWire.ReplyTypeBlockStatus, (uint)(4 + 8 * count));
        BinaryPrimitives.WriteUInt32BigEndian(h[20..], NbdWire.BaseAllocationId);
        int at = 24;
        pos = start;
        for (int i = 0; i < count; i++)
        {
            var e = ctx.Extents[i];
            long t = Math.Min(e.Offset + e.Length, end);
            BinaryPrimitives.WriteUInt32BigEndian(h[at..], (uint)(t - pos));
            BinaryPrimitives.WriteUInt32BigEndian(h[(at + 4)..], (uint)e.Flags & 3);
            at += 8;
            pos = t;
        }
        _sendLength += n;
    }
}
