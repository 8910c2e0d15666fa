using System.Text;
using Tessera.Cli.Infrastructure;
using Tessera.Controller;
using Tessera.Core;
using Tessera.Core.Containers;

namespace Tessera.Fuzz;

/// <summary>
/// Target "parsers": the text parsers that read what users and the admin API hand in. Byte 0 picks the parser, the
/// rest is the text (UTF-8, invalid sequences replaced as the gRPC layer and the shell would).
/// Oracle: Try* parsers never throw and return sane values; throwing parsers throw only their documented type.
/// </summary>
public static class ParserTarget
{
    public static readonly string[] Parsers = ["ByteSize", "ContainerUri", "CliListenAddress", "ControllerListenAddress", "CliName", "CliControllerUrl"];

    public static void Run(byte[] input)
    {
        if (input.Length == 0) return;
        string text = Encoding.UTF8.GetString(input, 1, input.Length - 1);
        string parser = Parsers[input[0] % Parsers.Length];
        try
        {
            switch (parser)
            {
                case "ByteSize":
                    if (ByteSize.TryParse(text, out long bytes))
                    {
                        if (bytes < 0) throw new FuzzOracleException($"ByteSize.TryParse('{text}') gave a negative size {bytes}");
                        // Format is for display (it rounds, "1.5 GiB"), so only that it copes with every size is checked.
                        if (string.IsNullOrEmpty(ByteSize.Format(bytes))) throw new FuzzOracleException($"ByteSize.Format({bytes}) is empty");
                    }
                    else if (bytes != 0) throw new FuzzOracleException("ByteSize.TryParse failed but set a size");
                    break;
                case "ContainerUri":
                {
                    bool valid = ContainerUri.TryValidate(text, out string error);
                    if (!valid && string.IsNullOrEmpty(error)) throw new FuzzOracleException("an invalid URI without an error message");
                    if (ContainerUri.TryParseFile(text, out string path, out _) && !Path.IsPathFullyQualified(path))
                        throw new FuzzOracleException($"file URI '{text}' gave a relative path '{path}'");
                    if (ContainerUri.TryParseNbd(text, out var target, out _))
                    {
                        if (target.UnixSocketPath == null && (target.Port is < 0 or > 65535 || string.IsNullOrEmpty(target.Host)))
                            throw new FuzzOracleException($"nbd URI '{text}' gave host '{target.Host}' port {target.Port}");
                    }
                    break;
                }
                case "CliListenAddress":
                    try { Arguments.ListenAddress("--listen", text); }
                    catch (CliException) { }
                    break;
                case "ControllerListenAddress":
                    try { new ControllerOptions { DataDirectory = "/tmp/x", ListenAddress = text }.Validate(); }
                    catch (ArgumentException) { }
                    break;
                case "CliName":
                    try { Arguments.Name("disk", text); }
                    catch (CliException) { }
                    break;
                case "CliControllerUrl":
                    try { Arguments.ControllerUrl(text); }
                    catch (CliException) { }
                    break;
            }
        }
        catch (FuzzOracleException) { throw; }
        catch (Exception e)
        {
            throw new FuzzOracleException($"{parser}('{text}') threw {e.GetType().Name}: {e.Message}", e);
        }
    }
}
