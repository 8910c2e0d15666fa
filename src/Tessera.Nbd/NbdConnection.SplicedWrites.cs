using Tessera.Core;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd;

/// <summary>
/// Writes spliced from the socket into files (<see cref="INbdSplicedWriteExport"/>, docs/architecture.md "Spliced
/// writes").
///
/// A large WRITE whose range the export can place in files leaves its payload in the socket when its header is read,
/// and the reader, which owns the socket, writes it right away: it asks the export to hold the ranges (for an agent,
/// the disk's in-flight gate), then moves the payload through the connection's pipe into the files, a pipeful at a
/// time - splice() from the socket into the pipe takes the kernel's pages by reference, splice() from the pipe into a
/// file copies them into the page cache. While holding the ranges the reader only moves bytes that have already
/// arrived: when the socket has nothing more, it lets go and receives the rest into the request's buffer, which goes
/// through the export as an ordinary write of the remaining range. So the gate is never held while waiting for the
/// client, and the payload is out of the socket before the reader parses the next header. A range the export cannot
/// hold (the table changed since the header, a fault is needed) takes the buffered path for the whole write.
/// </summary>
internal sealed partial class NbdConnection
{
    private SplicePipe? _splicePipe;
    private bool _splicePipeUnavailable;
    private NbdSplicedWrite? _splicedWrite;

    /// <summary>At the header of a WRITE: true when its payload is left in the socket for <see cref="SplicedWrite"/>.</summary>
    private bool LeavePayloadInSocket(RequestContext ctx)
    {
        var export = _splicedWrites;
        if (export is null || ctx.Length < (uint)_options.SplicedWriteMinBytes) return false;
        if (_splicePipe is null)
        {
            if (_splicePipeUnavailable) return false;
            _splicePipe = SplicePipe.TryCreate(_options.SplicePipeBytes);
            if (_splicePipe is null) { _splicePipeUnavailable = true; return false; }
        }
        if (!export.CanSpliceWrite((long)ctx.Offset, (int)ctx.Length)) return false;
        ctx.PayloadInSocket = true;
        return true;
    }

    /// <summary>A request that will not be written after all (rejected, export closed): consume its payload so the stream stays in step.</summary>
    private ValueTask SkipPayloadInSocketAsync(RequestContext ctx, CancellationToken ct)
    {
        ctx.PayloadInSocket = false;
        return _input.SkipAsync(ctx.Length, "write payload", ct);
    }

    /// <summary>
    /// Runs on the reader and does not return before the payload is out of the socket. Returns the write's status; a
    /// transport failure marks the connection broken (the reader then stops).
    /// </summary>
    private ValueTask<IoStatus> SplicedWrite(RequestContext ctx, bool fua, CancellationToken ct)
    {
        ctx.PayloadInSocket = false;
        long offset = (long)ctx.Offset;
        int length = (int)ctx.Length;
        var pipe = _splicePipe!;
        var write = _splicedWrite ??= _splicedWrites!.CreateSplicedWrite();
        try
        {
            if (!_splicedWrites!.TryBeginSplicedWrite(offset, length, write))
            {
                ctx.EnsureBuffer(length);
                ReceiveWithoutSplicing(ctx.Buffer.AsMemory(0, length), ct);
                return _export.WriteAsync(offset, ctx.Payload, fua, ct);
            }
            var cursor = new SpliceCursor(write);
            int done = 0, errno = 0;
            // What the reader already received goes through the pipe too (a copy in, a copy out: as much as pwrite).
            int buffered = Math.Min(_input.BufferedCount, length);
            if (buffered > 0)
            {
                pipe.Write(_input.Buffered[..buffered]);
                _input.Consume(buffered);
                if (!cursor.SpliceOut(pipe, buffered, out errno)) return Failed(cursor, buffered, length, ct, errno);
                done = buffered;
            }
            var socket = (BlockingSocketStream)_stream;
            while (done < length)
            {
                int moved = socket.SpliceArrived(pipe, length - done);
                if (moved == 0) break; // nothing more has arrived: stop holding the ranges
                if (!cursor.SpliceOut(pipe, moved, out errno)) return Failed(cursor, done + moved, length, ct, errno);
                done += moved;
            }
            write.End(-1, 0);
            if (done == length) return fua ? _export.FlushAsync(ct) : new(IoStatus.Ok);
            // The rest, once it arrives, is an ordinary write of the remaining range.
            int rest = length - done;
            ctx.EnsureBuffer(rest);
            ReceiveWithoutSplicing(ctx.Buffer.AsMemory(0, rest), ct);
            return _export.WriteAsync(offset + done, ctx.Buffer.AsMemory(0, rest), fua, ct);
        }
        catch (Exception e)
        {
            // Whatever failed, the payload's place in the stream is lost: the connection ends (its reader stops before
            // the next header, rather than parse payload bytes as one).
            if (write.Count > 0) write.End(-1, 0); // still held; the files took what they were given (dirty), none refused
            DiscardSplicePipe();
            MarkBroken(e);
            return new(IoStatus.Shutdown);
        }
    }

    /// <summary>A file refused the payload: end the plan, then consume what is left of the payload (pipe and socket).</summary>
    private ValueTask<IoStatus> Failed(SpliceCursor cursor, int takenFromSocket, int length, CancellationToken ct, int errno)
    {
        cursor.End(errno);
        _splicePipe!.Discard(cursor.LeftInPipe);
        int rest = length - takenFromSocket;
        if (rest > 0) Complete(_input.SkipAsync(rest, "write payload", ct));
        return new(IoStatus.IoError);
    }

    /// <summary>Receives into <paramref name="destination"/> the ordinary way (buffered bytes first, then recv).</summary>
    private void ReceiveWithoutSplicing(Memory<byte> destination, CancellationToken ct)
    {
        if (_input.BufferedCount < destination.Length) ReleaseFlush();
        Complete(_input.ReadExactAsync(destination, "write payload", ct));
        _deferFlush = true;
    }

    /// <summary>
    /// Spliced writes need a plain socket, whose "async" receives are blocking calls that complete before they return:
    /// this only collects the result (or the exception) on the reader.
    /// </summary>
    private static void Complete(ValueTask pending)
    {
        if (pending.IsCompleted) pending.GetAwaiter().GetResult();
        else pending.AsTask().GetAwaiter().GetResult();
    }

    private void DiscardSplicePipe()
    {
        _splicePipe?.Dispose();
        _splicePipe = null;
    }

    /// <summary>Where the next payload byte goes in a held plan: range by range, in payload order.</summary>
    private struct SpliceCursor(NbdSplicedWrite write)
    {
        private int _range;
        private int _intoRange;

        /// <summary>Bytes still in the pipe after a failed <see cref="SpliceOut"/>.</summary>
        public int LeftInPipe { get; private set; }

        /// <summary>Splices <paramref name="count"/> bytes from the pipe into the plan's next places; false when a file refuses.</summary>
        public bool SpliceOut(SplicePipe pipe, int count, out int errno)
        {
            errno = 0;
            while (count > 0)
            {
                int n = Math.Min(count, write.Length(_range) - _intoRange);
                if (!pipe.SpliceTo(write.File(_range), write.Offset(_range) + _intoRange, n, out int moved, out errno))
                {
                    LeftInPipe = count - moved;
                    return false;
                }
                count -= n;
                _intoRange += n;
                if (_intoRange == write.Length(_range)) { _range++; _intoRange = 0; }
            }
            return true;
        }

        public readonly void End(int errno) => write.End(_range, errno);
    }
}
