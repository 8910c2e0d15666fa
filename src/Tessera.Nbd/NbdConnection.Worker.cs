using Tessera.Nbd.Protocol;

namespace Tessera.Nbd;

/// <summary>
/// Overlap for pipelined writes. The reader runs a lone request inline (cheapest at queue depth 1), but when a
/// WRITE arrives with more requests already received behind it, a synchronous export would make the reader
/// receive, copy and write each one in turn. Such writes go to one per-connection worker instead, which drains a
/// queue of them on a pool thread while the reader keeps receiving: the page-cache copy of one write overlaps
/// receiving the next. One worker, not one pool item per write: a buffered write to one file holds the file's
/// lock anyway, so more writers would only contend, and one wake-up per burst is cheaper than one per request.
///
/// Replies: the worker leaves small replies in the send buffer while more work is queued (<see cref="_workerDefer"/>,
/// like the reader's <see cref="_deferFlush"/>) and sends them when its queue empties or every
/// <see cref="WorkerReplyBatch"/> requests, so a client waiting for completions is not starved by a long burst.
///
/// FLUSH stays on the reader. A write still queued here has not been replied to, so the spec does not ask the
/// flush to cover it; every write replied to before the flush arrived has returned from the export first.
/// </summary>
internal sealed partial class NbdConnection
{
    /// <summary>Most replies the worker holds back before sending them, while more work is queued.</summary>
    internal const int WorkerReplyBatch = 8;

    /// <summary>
    /// Larger writes stay on the reader: for 1 MiB writes at queue depth 8 the worker measured no faster on 2 cores
    /// (0.88-0.99x the inline build in four interleaved A/B runs, docs/benchmarks.md), so they keep the path
    /// without a thread hop.
    /// </summary>
    internal const int OverlapWriteMaxBytes = 64 * 1024;

    private Queue<RequestContext>? _work;
    private bool _workerRunning;
    private volatile bool _workerDefer;
    private WorkerItem? _workerItem;

    private sealed class WorkerItem(NbdConnection owner) : IThreadPoolWorkItem
    {
        public void Execute() => owner.RunWorker();
    }

    /// <summary>
    /// True when the reader should hand this validated request to the worker: a WRITE of at most
    /// <see cref="OverlapWriteMaxBytes"/> when more of the client's requests are already here, or while the worker
    /// is still busy (so it keeps batching).
    /// </summary>
    private bool ShouldOverlap(RequestContext ctx)
    {
        if (!_options.OverlapPipelinedWrites || ctx.Command != NbdWire.CmdWrite || ctx.Length > OverlapWriteMaxBytes) return false;
        if (_input.BufferedCount >= NbdWire.RequestHeaderBytes) return true;
        var work = _work;
        if (work is null) return false;
        lock (work) return _workerRunning;
    }

    private void EnqueueWork(RequestContext ctx)
    {
        var work = _work ??= new Queue<RequestContext>(_options.MaxInFlightPerConnection);
        _workerItem ??= new WorkerItem(this);
        lock (work)
        {
            work.Enqueue(ctx);
            if (_workerRunning) return;
            _workerRunning = true;
            _workerDefer = true;
        }
        EnterInFlight(); // the worker counts as in flight until it has released its replies
        ThreadPool.UnsafeQueueUserWorkItem(_workerItem, preferLocal: false);
    }

    private void RunWorker()
    {
        var work = _work!;
        int sinceRelease = 0;
        while (true)
        {
            RequestContext? ctx;
            lock (work)
            {
                if (!work.TryDequeue(out ctx))
                {
                    _workerRunning = false;
                    break;
                }
            }
            Dispatch(ctx);
            if (++sinceRelease == WorkerReplyBatch)
            {
                sinceRelease = 0;
                ReleaseWorkerReplies(stayDeferred: true);
            }
        }
        ReleaseWorkerReplies(stayDeferred: false);
        LeaveInFlight();
    }

    /// <summary>Sends the replies the worker left in the send buffer (unless the reader is still batching its own).</summary>
    private void ReleaseWorkerReplies(bool stayDeferred)
    {
        lock (_replies)
        {
            _workerDefer = false;
            if (_sending || _sendLength == 0 || _deferFlush)
            {
                _workerDefer = stayDeferred;
                return;
            }
            _sending = true;
        }
        EnterInFlight();
        var sent = SendLoopAsync();
        if (stayDeferred)
        {
            // On a blocking transport the send loop has already finished; on an async one it may still run and
            // will simply send what follows too.
            lock (_replies) _workerDefer = true;
        }
        _ = sent;
    }
}
