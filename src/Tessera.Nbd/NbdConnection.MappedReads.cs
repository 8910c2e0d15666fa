using System.Runtime.CompilerServices;
using Tessera.Core;

namespace Tessera.Nbd;

/// <summary>
/// Reads sent from file mappings (<see cref="INbdMappedReadExport"/>, docs/architecture.md "Mapped reads").
///
/// A large read whose range the export can map is not read when the request arrives: it is resolved by the sender,
/// just before its reply header is written. The export then holds the ranges (for an agent, the disk's in-flight
/// gate, so a blocking table command waits for this read as for a pread), the sender hands header and ranges to
/// sendmsg() without waiting for socket room, and the ranges are let go as soon as the call returns - by then the
/// kernel has copied the bytes into the socket's own buffers, so nothing sent later can change. Whatever did not fit
/// is copied out with pread while the ranges are still held, and sent conventionally after they are released: a slow
/// client never keeps a blocking command waiting, and one read at a time per connection holds anything.
///
/// If the ranges cannot be held when the reply is due (the table changed since, a fault is needed), the sender reads
/// through the export as usual; the header is not written yet, so a failure still becomes an error reply.
/// </summary>
internal sealed partial class NbdConnection
{
    /// <summary>At request start: true when the read's reply will be sent from mappings (decided again when it is sent).</summary>
    private bool DeferToMappedRead(RequestContext ctx)
    {
        var mapped = _mappedReads;
        if (mapped is null || ctx.Length < (uint)_options.MappedReadMinBytes) return false;
        if (!mapped.CanMapRead((long)ctx.Offset, (int)ctx.Length)) return false;
        ctx.ReadDeferred = true;
        return true;
    }

    /// <summary>In the sender, before the reply header: hold the mapped ranges, or read into the buffer after all.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ResolveDeferredReadAsync(RequestContext ctx)
    {
        ctx.ReadDeferred = false;
        if (ctx.Errno != 0) return;
        long offset = (long)ctx.Offset;
        int length = (int)ctx.Length;
        var read = ctx.MappedRead ??= _mappedReads!.CreateMappedRead();
        if (_mappedReads!.TryBeginMappedRead(offset, length, read))
        {
            ctx.MappedReadActive = true;
            return;
        }
        ctx.EnsureBuffer(length);
        IoStatus status;
        try { status = await _export.ReadAsync(offset, ctx.Payload, ctx.SendHoles ? ctx.Extents : null, _opsToken).ConfigureAwait(false); }
        catch (Exception e) { status = FromException(ctx, e); }
        ctx.Errno = NbdErrors.ToErrno(status);
    }

    private static void EndMappedRead(RequestContext ctx)
    {
        if (!ctx.MappedReadActive) return;
        ctx.MappedReadActive = false;
        ctx.MappedRead!.End();
    }

    /// <summary>Sends the pending headers and <paramref name="count"/> payload bytes from <paramref name="skip"/> on, from the mappings.</summary>
    private void SendMappedPayload(RequestContext ctx, int skip, int count)
    {
        var socket = (BlockingSocketStream)_stream;
        int head = _sendLength;
        _sendLength = 0;
        if (_broken)
        {
            EndMappedRead(ctx);
            return;
        }
        try
        {
            long sent = socket.SendMappedWithoutWaiting(_send, head, ctx.MappedRead!, skip, count);
            if (sent == (long)head + count)
            {
                EndMappedRead(ctx);
                return;
            }
            // The socket is full: copy the rest out while the ranges are held, release them, then wait for room.
            int payloadSent = (int)Math.Max(0, sent - head);
            int rest = count - payloadSent;
            ctx.EnsureBuffer(rest);
            ctx.MappedRead!.CopyTo(ctx.Buffer.AsSpan(0, rest), skip + payloadSent, rest);
            EndMappedRead(ctx);
            if (sent < head) socket.Write(_send.AsSpan((int)sent, head - (int)sent));
            socket.Write(ctx.Buffer.AsSpan(0, rest));
        }
        catch (NbdMappedReadException e)
        {
            // The header promised bytes that cannot follow: the connection must end. Read the range again through the
            // export so the failure takes the usual path (an agent reports the container to the controller).
            EndMappedRead(ctx);
            NbdLog.MappedReadFailed(_logger, _id, (long)ctx.Offset, ctx.Length, e.Message);
            MarkBroken(e);
            _ = ReadAgainAsync((long)ctx.Offset, (int)ctx.Length);
        }
        catch (Exception e)
        {
            EndMappedRead(ctx);
            MarkBroken(e);
        }
    }

    private async Task ReadAgainAsync(long offset, int length)
    {
        try { await _export.ReadAsync(offset, new byte[length], null, CancellationToken.None).ConfigureAwait(false); }
        catch (Exception) { } // only here to surface the failure through the export; the client is already gone
    }
}
