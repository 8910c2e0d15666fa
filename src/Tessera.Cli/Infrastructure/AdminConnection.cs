using Grpc.Core;
using Grpc.Net.Client;
using Tessera.Core.Protocol;

namespace Tessera.Cli.Infrastructure;

/// <summary>
/// One admin API connection for one CLI command. Every call carries a deadline, so a controller that
/// accepts the connection but never answers ends the command with exit 3 instead of hanging.
/// </summary>
public sealed class AdminConnection : IDisposable
{
    public static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(5);

    private readonly GrpcChannel _channel;

    public AdminConnection(string url)
    {
        Url = url;
        _channel = GrpcChannel.ForAddress(url, new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler { ConnectTimeout = ConnectTimeout },
            MaxRetryAttempts = 0,
        });
        Client = new Admin.AdminClient(_channel);
        Operations = new Operations.OperationsClient(_channel);
    }

    /// <summary>Migration jobs and the container lifecycle (operations.proto).</summary>
    public Operations.OperationsClient Operations { get; }

    public string Url { get; }

    public Admin.AdminClient Client { get; }

    /// <summary>The snapshots/clones/resize service (snapshots.proto) on the same channel.</summary>
    public Snapshots.SnapshotsClient Snapshots => new(_channel);

    /// <summary>Per-call options: deadline plus the command's cancellation.</summary>
    public CallOptions Call(CancellationToken cancellationToken) =>
        new(deadline: DateTime.UtcNow.Add(CallTimeout), cancellationToken: cancellationToken);

    /// <summary>Turns a gRPC failure into the CLI's one-line error and exit code.</summary>
    public static CliException Translate(RpcException e, string url)
    {
        var detail = OneLine(e.Status.Detail);
        return e.StatusCode switch
        {
            StatusCode.Unavailable => new CliException(ExitCodes.Unreachable,
                $"cannot reach the controller at {url}: {Cause(e) ?? detail} (is it running? see --controller or ${Arguments.ControllerEnvironmentVariable})"),
            StatusCode.DeadlineExceeded => new CliException(ExitCodes.Unreachable,
                $"the controller at {url} did not answer within {CallTimeout.TotalSeconds:0} s"),
            StatusCode.Unimplemented => new CliException(ExitCodes.Refused,
                $"the controller at {url} does not implement this command ({detail})"),
            StatusCode.Cancelled => new CliException(ExitCodes.Refused, "cancelled"),
            _ => new CliException(ExitCodes.Refused, $"{detail} ({Code(e.StatusCode)})"),
        };
    }

    private static string? Cause(RpcException e)
    {
        Exception? inner = e.Status.DebugException;
        if (inner is null) return null;
        while (inner.InnerException is not null) inner = inner.InnerException;
        return OneLine(inner.Message);
    }

    private static string Code(StatusCode code) => code switch
    {
        StatusCode.NotFound => "NOT_FOUND",
        StatusCode.AlreadyExists => "ALREADY_EXISTS",
        StatusCode.InvalidArgument => "INVALID_ARGUMENT",
        StatusCode.FailedPrecondition => "FAILED_PRECONDITION",
        StatusCode.ResourceExhausted => "RESOURCE_EXHAUSTED",
        StatusCode.PermissionDenied => "PERMISSION_DENIED",
        StatusCode.OutOfRange => "OUT_OF_RANGE",
        StatusCode.Aborted => "ABORTED",
        StatusCode.Internal => "INTERNAL",
        _ => code.ToString().ToUpperInvariant(),
    };

    public static string OneLine(string? text) =>
        string.IsNullOrWhiteSpace(text) ? "(no detail)" : string.Join(' ', text.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    public void Dispose() => _channel.Dispose();
}
