namespace Tessera.Cli.Infrastructure;

/// <summary>
/// The process exit codes of <c>tessera</c>. They are part of the CLI's contract with scripts
/// (documented in docs/operations.md); never renumber them.
/// </summary>
public static class ExitCodes
{
    public const int Ok = 0;

    /// <summary>The controller refused or failed the operation (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, ...).</summary>
    public const int Refused = 1;

    /// <summary>The command line is wrong: unknown verb, missing or malformed option (bad size, URI, address, name).</summary>
    public const int Usage = 2;

    /// <summary>The controller could not be reached (connection refused, no answer before the deadline).</summary>
    public const int Unreachable = 3;

    /// <summary>A serving role (up, controller, agent) could not start or failed while serving.</summary>
    public const int ServeFailed = 4;
}

/// <summary>A failure that ends the command with one line on stderr and a known exit code.</summary>
public sealed class CliException(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;

    public static CliException Usage(string message) => new(ExitCodes.Usage, message);
}
