using Tessera.Nbd.Protocol;

namespace Tessera.Nbd;

/// <summary>
/// Reads sent straight from files (<see cref="INbdFileReadExport"/>). The export resolves the read when the request
/// starts and holds the ranges (for an agent: the disk's in-flight gate, so a blocking table command waits for the
/// send); the sender writes the reply header and has the kernel send the file ranges after it; returning the
/// context ends the read. Used only where nothing is expected to wait: a large read, a blocking socket with room
/// for the whole payload. Everything else takes the buffered path, which stays the reference behaviour.
/// </summary>
internal sealed partial class NbdConnection
{
    private bool TryBeginFileRead(RequestContext ctx)
    {
        var fileReads = _fileReads;
        if (fileReads is null || ctx.Length < (uint)_options.SendFileMinBytes) return false;
        // A send that has to wait for the client would hold the export's ranges (a disk's gate) meanwhile.
        if (((BlockingSocketStream)_stream).SendSpaceBytes() < ctx.Length) return false;
        var read = ctx.FileRead ??= fileReads.CreateFileRead();
        if (!fileReads.TryBeginFileRead((long)ctx.Offset, (int)ctx.Length, read)) return false;
        ctx.FileReadActive = true;
        return true;
    }

    private static void EndFileRead(RequestContext ctx)
    {
        if (!ctx.FileReadActive) return;
        ctx.FileReadActive = false;
        ctx.FileRead!.End();
    }

    /// <summary>Sends the pending headers and <paramref name="count"/> payload bytes from <paramref name="skip"/> on, from the files.</summary>
    private void SendFromFiles(RequestContext ctx, int skip, int count)
    {
        int head = _sendLength;
        _sendLength = 0;
        if (_broken) return;
        try
        {
            ((BlockingSocketStream)_stream).SendFile(_send, head, ctx.FileRead!, skip, count);
        }
        catch (NbdFileReadException e)
        {
            // The header promised bytes that cannot follow: the connection must end. Read the range again through
            // the export so the failure takes the usual path (an agent reports the container to the controller).
            NbdLog.FileReadFailed(_logger, _id, (long)ctx.Offset, ctx.Length, e.Message);
            MarkBroken(e);
            _ = ReadAgainAsync((long)ctx.Offset, (int)ctx.Length);
        }
        catch (Exception e)
        {
            MarkBroken(e);
        }
    }

    private async Task ReadAgainAsync(long offset, int length)
    {
        try { await _export.ReadAsync(offset, new byte[length], null, CancellationToken.None).ConfigureAwait(false); }
        catch (Exception) { } // only here to surface the failure through the export; the client is already gone
    }
}
