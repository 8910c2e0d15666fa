namespace Tessera.Core.Containers;

/// <summary>Parsed and validated container URIs: <c>file:///abs/path</c>, <c>nbd://host[:port]/export</c>, <c>nbd+unix:///export?socket=/path</c>.</summary>
public static class ContainerUri
{
    /// <summary>Returns the local path of a file:// URI, or an error message.</summary>
    public static bool TryParseFile(string uri, out string path, out string error)
    {
        path = "";
        error = "";
        if (!Uri.TryCreate(uri, UriKind.Absolute, out var parsed) || parsed.Scheme != Uri.UriSchemeFile)
        {
            error = $"'{uri}' is not a container URI (expected file:///absolute/path)";
            return false;
        }
        if (!string.IsNullOrEmpty(parsed.Host))
        {
            error = $"'{uri}': file URIs name a local path, write file:///path (three slashes)";
            return false;
        }
        path = parsed.LocalPath;
        if (!Path.IsPathFullyQualified(path))
        {
            error = $"'{uri}': the path must be absolute";
            return false;
        }
        return true;
    }

    public const int DefaultNbdPort = 10809;

    /// <summary>Parses an NBD URI: TCP (<c>nbd://host[:port]/export</c>) or unix socket (<c>nbd+unix:///export?socket=/path</c>).</summary>
    public static bool TryParseNbd(string uri, out NbdTarget target, out string error)
    {
        target = default;
        error = "";
        if (!Uri.TryCreate(uri, UriKind.Absolute, out var parsed) || (parsed.Scheme != "nbd" && parsed.Scheme != "nbd+unix"))
        {
            error = $"'{uri}' is not an NBD URI (expected nbd://host:port/export or nbd+unix:///export?socket=/path)";
            return false;
        }
        string export = Uri.UnescapeDataString(parsed.AbsolutePath.TrimStart('/'));
        if (export.Length > 4096)
        {
            error = $"'{uri}': export name longer than 4096 bytes";
            return false;
        }
        if (parsed.Scheme == "nbd+unix")
        {
            string? socket = null;
            foreach (var part in parsed.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
                if (part.StartsWith("socket=", StringComparison.Ordinal)) socket = Uri.UnescapeDataString(part["socket=".Length..]);
            if (string.IsNullOrEmpty(socket) || !Path.IsPathFullyQualified(socket))
            {
                error = $"'{uri}': nbd+unix URIs need ?socket=/absolute/path";
                return false;
            }
            target = new NbdTarget(null, 0, socket, export);
            return true;
        }
        if (string.IsNullOrEmpty(parsed.Host))
        {
            error = $"'{uri}': missing host (nbd://host:port/export)";
            return false;
        }
        target = new NbdTarget(parsed.Host.Trim('[', ']'), parsed.IsDefaultPort || parsed.Port < 0 ? DefaultNbdPort : parsed.Port, null, export);
        return true;
    }

    public static bool TryValidate(string uri, out string error)
    {
        if (uri.StartsWith("file:", StringComparison.OrdinalIgnoreCase)) return TryParseFile(uri, out _, out error);
        if (uri.StartsWith("nbd:", StringComparison.OrdinalIgnoreCase) || uri.StartsWith("nbd+unix:", StringComparison.OrdinalIgnoreCase))
            return TryParseNbd(uri, out _, out error);
        int colon = uri.IndexOf(':');
        if (colon > 0 && ContainerRegistry.IsSchemeRegistered(uri[..colon]))
        {
            error = "";
            return true; // a scheme a host registered (the simulation's and tests' containers) validates itself when opened
        }
        error = $"'{uri}' is not a supported container URI (supported: file:///absolute/path, nbd://host:port/export, nbd+unix:///export?socket=/path)";
        return false;
    }
}

/// <summary>Where an NBD container lives: a TCP host and port, or a unix socket path; plus the export name.</summary>
public readonly record struct NbdTarget(string? Host, int Port, string? UnixSocketPath, string Export)
{
    public override string ToString() => UnixSocketPath is null ? $"{Host}:{Port}/{Export}" : $"{UnixSocketPath}/{Export}";
}
