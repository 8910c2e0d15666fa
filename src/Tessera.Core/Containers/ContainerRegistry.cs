namespace Tessera.Core.Containers;

/// <summary>
/// Opens each container once per process and hands the same instance to everyone who asks (the controller and
/// the agent share it when they run in one process, as in <c>tessera up</c>). Containers stay open until the
/// registry is disposed: a handle is cheap and reopening on every use would cost a syscall per I/O path change.
/// </summary>
public sealed class ContainerRegistry : IDisposable
{
    /// <summary>The process-wide registry.</summary>
    public static ContainerRegistry Shared { get; } = new();

    private readonly Dictionary<string, IStorageContainer> _open = new(StringComparer.Ordinal);
    private readonly Func<string, IStorageContainer> _opener;

    public ContainerRegistry(Func<string, IStorageContainer>? opener = null) => _opener = opener ?? OpenReal;

    /// <summary>Returns the open container for <paramref name="uri"/>, opening it on first use. Throws when it cannot be opened.</summary>
    public IStorageContainer Open(string uri)
    {
        lock (_open)
        {
            if (_open.TryGetValue(uri, out var c)) return c;
            c = _opener(uri);
            _open[uri] = c;
            return c;
        }
    }

    /// <summary>Closes and forgets one container (after it was removed from the pool).</summary>
    public void Close(string uri)
    {
        lock (_open)
        {
            if (_open.Remove(uri, out var c)) c.Dispose();
        }
    }

    public void Dispose()
    {
        lock (_open)
        {
            foreach (var c in _open.Values) c.Dispose();
            _open.Clear();
        }
    }

    private static readonly Dictionary<string, Func<string, IStorageContainer>> SchemeOpeners = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// Teaches every registry to open another URI scheme (the NBD project registers <c>nbd://</c>; the core
    /// cannot reference it). Hosts call the registering method at start.
    /// </summary>
    public static void RegisterScheme(string scheme, Func<string, IStorageContainer> opener)
    {
        lock (SchemeOpeners) SchemeOpeners[scheme] = opener;
    }

    public static bool IsSchemeRegistered(string scheme)
    {
        lock (SchemeOpeners) return SchemeOpeners.ContainsKey(scheme);
    }

    private static IStorageContainer OpenReal(string uri)
    {
        if (!ContainerUri.TryValidate(uri, out var error)) throw new ArgumentException(error, nameof(uri));
        var scheme = uri[..uri.IndexOf(':')];
        if (scheme.Equals("file", StringComparison.OrdinalIgnoreCase)) return FileContainer.Open(uri);
        Func<string, IStorageContainer>? opener;
        lock (SchemeOpeners) SchemeOpeners.TryGetValue(scheme, out opener);
        return opener is null ? throw new ArgumentException($"no opener registered for {scheme}:// containers", nameof(uri)) : opener(uri);
    }
}
