using Microsoft.Extensions.Logging;

namespace Tessera.Nbd;

/// <summary>Server log messages; event ids are stable (2000-2099) so operators can filter on them.</summary>
internal static partial class NbdLog
{
    [LoggerMessage(EventId = 2000, Level = LogLevel.Information, Message = "NBD server listening on {EndPoint}")]
    public static partial void Listening(ILogger logger, string endPoint);

    [LoggerMessage(EventId = 2001, Level = LogLevel.Information, Message = "NBD server stopped")]
    public static partial void Stopped(ILogger logger);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Warning, Message = "NBD connection from {Remote} refused: {Active} connections is the limit")]
    public static partial void ConnectionRefused(ILogger logger, string remote, int active);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} from {Remote} opened")]
    public static partial void ConnectionOpened(ILogger logger, long connectionId, string remote);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} closed: {Reason}")]
    public static partial void ConnectionClosed(ILogger logger, long connectionId, string reason);

    [LoggerMessage(EventId = 2005, Level = LogLevel.Warning, Message = "NBD connection {ConnectionId} dropped, protocol violation: {Reason}")]
    public static partial void ProtocolViolation(ILogger logger, long connectionId, string reason);

    [LoggerMessage(EventId = 2006, Level = LogLevel.Warning, Message = "NBD connection {ConnectionId} handshake timed out")]
    public static partial void HandshakeTimedOut(ILogger logger, long connectionId);

    [LoggerMessage(EventId = 2007, Level = LogLevel.Information, Message = "NBD connection {ConnectionId} serving export '{Export}' ({SizeBytes} bytes, flags 0x{Flags:x}, structured replies {Structured}, base:allocation {BaseAllocation})")]
    public static partial void ExportOpened(ILogger logger, long connectionId, string export, long sizeBytes, int flags, bool structured, bool baseAllocation);

    [LoggerMessage(EventId = 2013, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} option {Option} ({Length} bytes)")]
    public static partial void OptionReceived(ILogger logger, long connectionId, string option, uint length);

    [LoggerMessage(EventId = 2008, Level = LogLevel.Information, Message = "NBD connection {ConnectionId} asked for unknown export '{Export}'")]
    public static partial void UnknownExport(ILogger logger, long connectionId, string export);

    [LoggerMessage(EventId = 2009, Level = LogLevel.Error, Message = "NBD connection {ConnectionId}: export threw during command {Command}")]
    public static partial void ExportThrew(ILogger logger, long connectionId, int command, Exception exception);

    [LoggerMessage(EventId = 2010, Level = LogLevel.Debug, Message = "NBD connection {ConnectionId} transport error")]
    public static partial void TransportError(ILogger logger, long connectionId, Exception exception);

    [LoggerMessage(EventId = 2011, Level = LogLevel.Information, Message = "NBD connection {ConnectionId}: export closed, ending connection with ESHUTDOWN")]
    public static partial void ExportClosed(ILogger logger, long connectionId);

    [LoggerMessage(EventId = 2012, Level = LogLevel.Error, Message = "NBD accept loop failed")]
    public static partial void AcceptFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 2014, Level = LogLevel.Error, Message = "NBD connection {ConnectionId}: sending the read at {Offset} (+{Length}) from its file mapping failed: {Reason}; ending the connection")]
    public static partial void MappedReadFailed(ILogger logger, long connectionId, long offset, uint length, string reason);
}
