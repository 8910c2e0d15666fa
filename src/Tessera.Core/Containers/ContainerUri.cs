namespace Tessera.Core.Containers;

/// <summary>Parsed and validated container URIs: <c>file:///abs/path</c> (later <c>nbd://host:port/export</c>).</summary>
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

    public static bool TryValidate(string uri, out string error)
    {
        if (uri.StartsWith("file:", StringComparison.OrdinalIgnoreCase)) return TryParseFile(uri, out _, out error);
        error = $"'{uri}' is not a supported container URI (supported: file:///absolute/path)";
        return false;
    }
}
