using Tessera.Core;
using Tessera.Core.Containers;
using Tessera.Nbd.Protocol;

namespace Tessera.Nbd;

/// <summary>
/// A storage container that is an export of any NBD server (qemu-nbd, nbdkit, nbd-server, another Tessera, or
/// <c>tessera store</c>), reached with our own <see cref="NbdClient"/>.
///
/// One connection carries many concurrent requests (the client matches replies by cookie). When it breaks, the
/// operations in flight fail with <see cref="IoStatus.IoError"/> and the next operation reconnects — at most
/// once per <see cref="ReconnectBackoff"/>, so a dead server costs each I/O one fast failure, not a connect
/// timeout. The client splits requests larger than the server's maximum block size.
/// </summary>
public sealed class NbdContainer : IStorageContainer
{
    public static readonly TimeSpan ReconnectBackoff = TimeSpan.FromMilliseconds(500);
    private const int ENOSPC = 28;

    private readonly NbdTarget _target;
    private readonly SemaphoreSlim _connectLock = new(1, 1);
    private volatile NbdClient? _client;
    private long _lastConnectAttemptTicks;
    private int _disposed;

    private NbdContainer(string uri, NbdTarget target, NbdClient client)
    {
        Uri = uri;
        _target = target;
        _client = client;
        SizeBytes = client.SizeBytes;
        if (client.ReadOnly) throw new IOException($"NBD export {target} is read-only; a container must be writable");
    }

    public string Uri { get; }

    public long SizeBytes { get; }

    /// <summary>Makes <see cref="ContainerRegistry"/> open nbd:// and nbd+unix:// URIs with this class.</summary>
    public static void Register()
    {
        ContainerRegistry.RegisterScheme("nbd", Open);
        ContainerRegistry.RegisterScheme("nbd+unix", Open);
    }

    /// <summary>Connects once to learn the export's size; throws <see cref="IOException"/> when it cannot.</summary>
    public static NbdContainer Open(string uri)
    {
        if (!ContainerUri.TryParseNbd(uri, out var target, out var error)) throw new ArgumentException(error, nameof(uri));
        try
        {
            var client = ConnectAsync(target, CancellationToken.None).GetAwaiter().GetResult();
            return new NbdContainer(uri, target, client);
        }
        catch (Exception e) when (e is NbdClientException or System.Net.Sockets.SocketException or TimeoutException or OperationCanceledException)
        {
            throw new IOException($"cannot reach NBD container {target}: {e.Message}", e);
        }
    }

    private static Task<NbdClient> ConnectAsync(NbdTarget target, CancellationToken ct)
    {
        var options = new NbdClientOptions { StructuredReplies = true, HandshakeTimeout = TimeSpan.FromSeconds(5) };
        return target.UnixSocketPath is { } path
            ? NbdClient.ConnectUnixAsync(path, target.Export, options, ct)
            : NbdClient.ConnectTcpAsync(target.Host!, target.Port, target.Export, options, ct);
    }

    // NbdClient splits requests above the server's maximum block size itself.
    public async ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var client = await ClientAsync(cancellationToken);
        if (client is null) return IoStatus.IoError;
        try
        {
            uint errno = await client.ReadAsync(offset, buffer, ct: cancellationToken);
            return errno == 0 ? IoStatus.Ok : ToStatus(errno);
        }
        catch (NbdClientException) { return Broken(client); }
    }

    public async ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        var client = await ClientAsync(cancellationToken);
        if (client is null) return IoStatus.IoError;
        try
        {
            uint errno = await client.WriteAsync(offset, data, ct: cancellationToken);
            return errno == 0 ? IoStatus.Ok : ToStatus(errno);
        }
        catch (NbdClientException) { return Broken(client); }
    }

    public async ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken = default)
    {
        var client = await ClientAsync(cancellationToken);
        if (client is null) return IoStatus.IoError;
        if (!client.Has(NbdWire.TxSendFlush)) return IoStatus.Ok; // the server says it has no volatile cache
        try
        {
            uint errno = await client.FlushAsync(cancellationToken);
            return errno == 0 ? IoStatus.Ok : ToStatus(errno);
        }
        catch (NbdClientException) { return Broken(client); }
    }

    public async ValueTask<IoStatus> ZeroAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        var client = await ClientAsync(cancellationToken);
        if (client is null) return IoStatus.IoError;
        try
        {
            if (client.Has(NbdWire.TxSendWriteZeroes))
            {
                const long chunk = 1L << 30;
                for (long done = 0; done < length; done += chunk)
                {
                    uint errno = await client.WriteZeroesAsync(offset + done, (uint)Math.Min(chunk, length - done), ct: cancellationToken);
                    if (errno != 0) return ToStatus(errno);
                }
                return IoStatus.Ok;
            }
        }
        catch (NbdClientException) { return Broken(client); }
        var zeros = new byte[Math.Min(length, 1 << 20)];
        for (long done = 0; done < length; done += zeros.Length)
        {
            var status = await WriteAsync(offset + done, zeros.AsMemory(0, (int)Math.Min(zeros.Length, length - done)), cancellationToken);
            if (status != IoStatus.Ok) return status;
        }
        return IoStatus.Ok;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        var client = Interlocked.Exchange(ref _client, null);
        client?.DisposeAsync().AsTask().Wait(TimeSpan.FromSeconds(5));
    }

    private static IoStatus ToStatus(uint errno) => errno == ENOSPC ? IoStatus.NoSpace : IoStatus.IoError;

    private IoStatus Broken(NbdClient client)
    {
        if (Interlocked.CompareExchange(ref _client, null, client) == client) _ = client.DisposeAsync().AsTask();
        return IoStatus.IoError;
    }

    private ValueTask<NbdClient?> ClientAsync(CancellationToken cancellationToken)
    {
        var client = _client;
        return client != null ? new(client) : ReconnectAsync(cancellationToken);
    }

    private async ValueTask<NbdClient?> ReconnectAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _disposed) != 0) return null;
        await _connectLock.WaitAsync(cancellationToken);
        try
        {
            if (_client is { } existing) return existing;
            long now = Environment.TickCount64;
            if (now - Volatile.Read(ref _lastConnectAttemptTicks) < ReconnectBackoff.TotalMilliseconds) return null;
            Volatile.Write(ref _lastConnectAttemptTicks, now);
            try
            {
                var client = await ConnectAsync(_target, cancellationToken);
                if (client.SizeBytes != SizeBytes)
                {
                    await client.DisposeAsync();
                    return null; // a different export behind the same address: never write to it
                }
                _client = client;
                return client;
            }
            catch (Exception e) when (e is NbdClientException or System.Net.Sockets.SocketException or TimeoutException or IOException)
            {
                return null;
            }
        }
        finally
        {
            _connectLock.Release();
        }
    }
}
