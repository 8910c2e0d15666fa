using Grpc.Core;

namespace Tessera.Simulation;

/// <summary>
/// One end's reader of a <see cref="SimStream"/>: messages the driver delivered, in order, then the failure once
/// the stream broke. What was delivered has reached that end's process; a break loses only what is still in flight.
/// </summary>
/// <param name="broken">The exception a read throws once the stream broke (what that end's gRPC stack throws).</param>
/// <param name="cancelled">The exception a cancelled read throws; null for <see cref="OperationCanceledException"/>.</param>
public sealed class SimStreamReader<T>(Func<Exception> broken, Func<Exception>? cancelled = null) : IAsyncStreamReader<T> where T : class
{
    private readonly Queue<T> _delivered = new();
    private TaskCompletionSource<bool>? _waiter;
    private bool _failed;

    public T Current { get; private set; } = null!;

    internal void Push(T message)
    {
        _delivered.Enqueue(message);
        Wake();
    }

    internal void Fail()
    {
        _failed = true;
        Wake();
    }

    private void Wake()
    {
        var w = _waiter;
        _waiter = null;
        w?.TrySetResult(true);
    }

    public async Task<bool> MoveNext(CancellationToken cancellationToken)
    {
        while (true)
        {
            if (_delivered.Count > 0)
            {
                Current = _delivered.Dequeue();
                return true;
            }
            if (_failed) throw broken();
            var w = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiter = w;
            try
            {
                cancellationToken.ThrowIfCancellationRequested();
                await w.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancelled is not null)
            {
                throw cancelled();
            }
        }
    }
}
