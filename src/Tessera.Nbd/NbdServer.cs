using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Tessera.Nbd;

/// <summary>
/// An NBD server: listens on TCP and/or a unix socket and serves the exports of an <see cref="INbdExportCatalog"/>.
/// The protocol lives in <see cref="NbdConnection"/>, which only sees a <see cref="Stream"/>; this class owns
/// sockets, the connection limit and shutdown. <see cref="ServeAsync"/> serves any other transport.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly INbdExportCatalog _catalog;
    private readonly NbdServerOptions _options;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<long, (Task Done, NbdConnection Connection)> _connections = new();
    private readonly CancellationTokenSource _stopping = new();
    private readonly List<Socket> _listeners = [];
    private readonly List<Task> _acceptLoops = [];
    private long _nextId;
    private int _active;
    private int _state; // 0 new, 1 started, 2 stopped

    public NbdServer(INbdExportCatalog catalog, NbdServerOptions? options = null, ILogger<NbdServer>? logger = null)
    {
        _catalog = catalog ?? throw new ArgumentNullException(nameof(catalog));
        _options = options ?? new NbdServerOptions();
        _options.Validate();
        _logger = (ILogger?)logger ?? NullLogger.Instance;
    }

    /// <summary>The bound TCP endpoint (with the real port when 0 was asked), once started.</summary>
    public IPEndPoint? TcpEndPoint { get; private set; }

    public string? UnixSocketPath => _options.UnixSocketPath;

    /// <summary>Connections currently being served.</summary>
    public int ActiveConnections => Volatile.Read(ref _active);

    public Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.CompareExchange(ref _state, 1, 0) != 0) throw new InvalidOperationException("NbdServer can be started once.");
        try
        {
            if (_options.TcpEndPoint is { } ep)
            {
                var s = new Socket(ep.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                s.Bind(ep);
                s.Listen(512);
                TcpEndPoint = (IPEndPoint)s.LocalEndPoint!;
                _listeners.Add(s);
                NbdLog.Listening(_logger, TcpEndPoint.ToString());
            }
            if (_options.UnixSocketPath is { } path)
            {
                if (File.Exists(path)) File.Delete(path);
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                s.Bind(new UnixDomainSocketEndPoint(path));
                s.Listen(512);
                _listeners.Add(s);
                NbdLog.Listening(_logger, "unix:" + path);
            }
        }
        catch
        {
            foreach (var s in _listeners) s.Dispose();
            throw;
        }
        foreach (var s in _listeners) _acceptLoops.Add(AcceptLoopAsync(s));
        return Task.CompletedTask;
    }

    /// <summary>Stops listening and ends every connection: in-flight requests finish within the grace period or get ESHUTDOWN.</summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _state, 2) == 2) return;
        _stopping.Cancel();
        foreach (var s in _listeners) s.Dispose();
        try { await Task.WhenAll(_acceptLoops).WaitAsync(cancellationToken).ConfigureAwait(false); } catch (Exception) when (!cancellationToken.IsCancellationRequested) { }
        // Connections finish their in-flight requests within the grace period; one whose client stopped reading
        // (its replies stuck in a full socket) is then cut off so that stopping always ends.
        var all = Task.WhenAll(_connections.Values.Select(c => c.Done));
        try
        {
            await all.WaitAsync(_options.ShutdownGracePeriod + TimeSpan.FromSeconds(2), _options.TimeProvider, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            foreach (var c in _connections.Values) c.Connection.Abort();
            await Task.WhenAll(_connections.Values.Select(c => c.Done)).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        if (_options.UnixSocketPath is { } path) try { File.Delete(path); } catch (IOException) { }
        NbdLog.Stopped(_logger);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _stopping.Dispose();
    }

    /// <summary>
    /// Serves one already-connected transport (for example an in-memory duplex stream) until the connection ends.
    /// Counts against <see cref="NbdServerOptions.MaxConnections"/>; returns false if refused (the stream is closed).
    /// </summary>
    public async Task<bool> ServeAsync(Stream transport, string remote = "stream")
    {
        if (!TryAdmit(remote))
        {
            await transport.DisposeAsync().ConfigureAwait(false);
            return false;
        }
        await RunConnectionAsync(transport, remote, blocking: false).ConfigureAwait(false);
        return true;
    }

    private bool TryAdmit(string remote)
    {
        while (true)
        {
            int n = Volatile.Read(ref _active);
            if (n >= _options.MaxConnections || _stopping.IsCancellationRequested)
            {
                NbdLog.ConnectionRefused(_logger, remote, n);
                return false;
            }
            if (Interlocked.CompareExchange(ref _active, n + 1, n) == n) return true;
        }
    }

    private async Task RunConnectionAsync(Stream transport, string remote, bool blocking)
    {
        long id = Interlocked.Increment(ref _nextId);
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var connection = new NbdConnection(transport, _catalog, _options, _logger, id, blocking);
        _connections[id] = (tcs.Task, connection);
        try
        {
            NbdLog.ConnectionOpened(_logger, id, remote);
            await connection.RunAsync(_stopping.Token).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _active);
            _connections.TryRemove(id, out _);
            tcs.TrySetResult();
        }
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException || _stopping.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException e)
            {
                NbdLog.AcceptFailed(_logger, e); // e.g. EMFILE; keep serving the connections we have
                continue;
            }
            string remote = client.RemoteEndPoint?.ToString() ?? "unix";
            if (!TryAdmit(remote))
            {
                client.Dispose();
                continue;
            }
            if (client.AddressFamily != AddressFamily.Unix) client.NoDelay = true;
            if (_options.ThreadPerConnection)
            {
                var stream = new BlockingSocketStream(client, _options.SendTimeout);
                new Thread(() => RunConnectionAsync(stream, remote, blocking: true).GetAwaiter().GetResult())
                {
                    IsBackground = true,
                    Name = "nbd-connection",
                }.Start();
            }
            else
            {
                _ = Task.Run(() => RunConnectionAsync(new NetworkStream(client, ownsSocket: true), remote, blocking: false));
            }
        }
    }
}
