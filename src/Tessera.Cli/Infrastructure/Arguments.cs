using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;
using Tessera.Core;

namespace Tessera.Cli.Infrastructure;

/// <summary>
/// Local validation of everything the user types, so a mistake is a usage error (exit 2) before any
/// process is started or any controller is called.
/// </summary>
public static partial class Arguments
{
    public const string DefaultControllerUrl = "http://127.0.0.1:7400";
    public const string ControllerEnvironmentVariable = "TESSERA_CONTROLLER";

    public const long MinSegmentSizeBytes = 64L << 10;
    public const long MaxSegmentSizeBytes = 64L << 20;

    /// <summary>An option holding a size such as 512MiB or 8GiB, parsed with <see cref="ByteSize"/>.</summary>
    public static Option<long> SizeOption(string name, string description, string? defaultText = null)
    {
        var option = new Option<long>(name)
        {
            Description = description,
            HelpName = "SIZE",
            CustomParser = result =>
            {
                var text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
                if (ByteSize.TryParse(text, out var bytes)) return bytes;
                result.AddError($"{name}: '{text}' is not a size (examples: 4096, 512MiB, 8GiB, 1TiB)");
                return 0;
            },
        };
        // The default is shown as written ("8GiB"), not as a byte count, so it lives in the description; read it with SizeValue.
        if (defaultText is not null) option.Description += $" [default: {defaultText}]";
        return option;
    }

    /// <summary>The value of a size option, or its default (as given to <see cref="SizeOption"/>) when absent.</summary>
    public static long SizeValue(ParseResult parseResult, Option<long> option, string defaultText) =>
        parseResult.GetResult(option) is null ? ByteSize.Parse(defaultText) : parseResult.GetValue(option);

    /// <summary>The admin API address: --controller, else $TESSERA_CONTROLLER, else http://127.0.0.1:7400.</summary>
    public static Option<string> ControllerOption(bool required = false)
    {
        var option = new Option<string>("--controller")
        {
            Description = $"Controller URL (default: ${ControllerEnvironmentVariable} or {DefaultControllerUrl})",
            HelpName = "URL",
        };
        if (required) option.Required = true;
        else option.DefaultValueFactory = _ => DefaultController();
        return option;
    }

    public static string DefaultController() =>
        Environment.GetEnvironmentVariable(ControllerEnvironmentVariable) is { Length: > 0 } fromEnv ? fromEnv : DefaultControllerUrl;

    /// <summary>Checks a controller URL: absolute http:// or https:// with a host.</summary>
    public static string ControllerUrl(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)
            || !Uri.TryCreate(text.Trim(), UriKind.Absolute, out var uri)
            || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps)
            || string.IsNullOrEmpty(uri.Host))
        {
            throw CliException.Usage($"--controller: '{text}' is not a controller URL (expected e.g. {DefaultControllerUrl})");
        }
        return uri.GetLeftPart(UriPartial.Authority);
    }

    /// <summary>Parses host:port where host is an IP literal (IPv6 in brackets) or localhost; port 0 picks a free one.</summary>
    public static IPEndPoint ListenAddress(string optionName, string? text)
    {
        string Fail() => $"{optionName}: '{text}' is not a listen address (expected host:port, e.g. 127.0.0.1:7400)";
        if (string.IsNullOrWhiteSpace(text)) throw CliException.Usage(Fail());
        var t = text.Trim();
        var colon = t.LastIndexOf(':');
        if (colon <= 0 || colon == t.Length - 1) throw CliException.Usage(Fail());
        var host = t[..colon];
        var portText = t[(colon + 1)..];
        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port > IPEndPoint.MaxPort)
            throw CliException.Usage($"{optionName}: '{portText}' in '{text}' is not a port (0-65535)");
        if (host.StartsWith('[') && host.EndsWith(']')) host = host[1..^1];
        else if (host.Contains(':')) throw CliException.Usage(Fail() + "; write IPv6 addresses in brackets, e.g. [::1]:7400");
        IPAddress? address = host.Equals("localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback
            : host == "*" ? IPAddress.Any
            : IPAddress.TryParse(host, out var parsed) ? parsed : null;
        if (address is null) throw CliException.Usage($"{optionName}: '{host}' in '{text}' is not an IP address (use an address such as 127.0.0.1, 0.0.0.0 or [::1])");
        return new IPEndPoint(address, port);
    }

    /// <summary>host:port text for an endpoint, IPv6 in brackets.</summary>
    public static string Format(IPEndPoint endPoint) =>
        endPoint.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{endPoint.Address}]:{endPoint.Port}" : $"{endPoint.Address}:{endPoint.Port}";

    /// <summary>Names of disks, containers and hosts: they appear in NBD export names, URIs and file names.</summary>
    public static string Name(string kind, string? text)
    {
        if (text is null || !NamePattern().IsMatch(text))
            throw CliException.Usage($"'{text}' is not a valid {kind} name (1-64 characters: letters, digits, '.', '_', '-'; starting with a letter or digit)");
        return text;
    }

    public static long PositiveSize(string optionName, long bytes) =>
        bytes > 0 ? bytes : throw CliException.Usage($"{optionName}: the size must be greater than zero");

    public static uint SegmentSize(long bytes)
    {
        if (bytes < MinSegmentSizeBytes || bytes > MaxSegmentSizeBytes || (bytes & (bytes - 1)) != 0)
            throw CliException.Usage($"--segment-size: must be a power of two between 64 KiB and 64 MiB, not {ByteSize.Format(bytes)}");
        return (uint)bytes;
    }

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    private static partial Regex NamePattern();
}
