using System.Net;

namespace Tessera.Nbd;

/// <summary>Every limit of the NBD server. Validated by <see cref="Validate"/> when the server starts.</summary>
public sealed class NbdServerOptions
{
    /// <summary>TCP endpoint to listen on; port 0 picks a free port (see <see cref="NbdServer.TcpEndPoint"/>). Null = no TCP.</summary>
    public IPEndPoint? TcpEndPoint { get; set; } = new(IPAddress.Loopback, 0);

    /// <summary>Unix socket path to listen on as well; null = none. An existing socket file is replaced.</summary>
    public string? UnixSocketPath { get; set; }

    public int MaxConnections { get; set; } = 256;

    public int MaxInFlightPerConnection { get; set; } = 64;

    /// <summary>Largest READ/WRITE payload, advertised as the maximum block size.</summary>
    public int MaxRequestBytes { get; set; } = 32 * 1024 * 1024;

    public int PreferredBlockBytes { get; set; } = 4096;

    public int MaxOptionsPerHandshake { get; set; } = 64;

    /// <summary>Longest option payload accepted; a longer one ends the connection (its data is not read).</summary>
    public int MaxOptionBytes { get; set; } = 64 * 1024;

    /// <summary>Longest export name, description or meta context query (the spec's 4096).</summary>
    public int MaxStringBytes { get; set; } = 4096;

    public int MaxMetaContextQueries { get; set; } = 64;

    /// <summary>Most extent descriptors in one BLOCK_STATUS reply (fewer cover less of the range, which the spec allows).</summary>
    public int MaxExtentsPerReply { get; set; } = 1024;

    public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long <see cref="NbdServer.StopAsync"/> lets in-flight requests finish before closing connections.</summary>
    public TimeSpan ShutdownGracePeriod { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Size of each connection's receive buffer; requests are parsed from it without copying.</summary>
    public int ReceiveBufferBytes { get; set; } = 64 * 1024;

    /// <summary>Size of each connection's send buffer into which small replies are coalesced.</summary>
    public int SendBufferBytes { get; set; } = 64 * 1024;

    /// <summary>Payloads at most this long are copied into the send buffer; longer ones are sent from their own buffer.</summary>
    public int CopyPayloadMaxBytes { get; set; } = 16 * 1024;

    /// <summary>
    /// Serve each socket connection from its own thread with blocking receives (like nbdkit), instead of async
    /// sockets. Saves the thread-pool hop per receive, which dominates small-request latency; costs one thread per
    /// connection. Exports should still complete asynchronously when they wait for anything.
    /// </summary>
    public bool ThreadPerConnection { get; set; } = true;

    /// <summary>How long one blocking send may wait for a client that does not read its replies before the connection is dropped.</summary>
    public TimeSpan SendTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// READ/WRITE requests at least this large start on a pool thread instead of the reader, so an export that
    /// copies synchronously overlaps with receiving the next request. Default: always inline, which measured
    /// cheaper per I/O on 2 cores (bench/run.py); lower it for synchronous exports on many-core hosts.
    /// </summary>
    public int InlineMaxBytes { get; set; } = int.MaxValue;

    /// <summary>
    /// READs at least this large are sent straight from the export's file mappings when the export offers them
    /// (<see cref="INbdMappedReadExport"/>) and the transport is a plain socket: one copy into the socket instead of a
    /// pread into a buffer and a send from it. <see cref="int.MaxValue"/> turns it off.
    /// </summary>
    public int MappedReadMinBytes { get; set; } = 32 * 1024;

    /// <summary>
    /// WRITEs at least this large (and at most half of <see cref="SplicePipeBytes"/>) are spliced from the socket into
    /// the export's files when the export offers it (<see cref="INbdSplicedWriteExport"/>) and the transport is a plain
    /// socket: one copy into the page cache instead of a receive into a buffer and a pwrite from it.
    /// <see cref="int.MaxValue"/> turns it off.
    /// </summary>
    public int SplicedWriteMinBytes { get; set; } = 128 * 1024;

    /// <summary>
    /// Size asked for each connection's splice pipe, created at its first spliced write. The default is the most an
    /// unprivileged process may ask for (/proc/sys/fs/pipe-max-size); where the kernel refuses, the pipe is halved.
    /// </summary>
    public int SplicePipeBytes { get; set; } = 1024 * 1024;

    /// <summary>
    /// Hand a WRITE to the connection's worker when more requests are already received behind it, so writes of a
    /// pipelined burst overlap with receiving the rest (queue depth 1 stays inline). See NbdConnection.Worker.cs.
    /// </summary>
    public bool OverlapPipelinedWrites { get; set; } = true;

    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;

    public void Validate()
    {
        static void Check(bool ok, string message)
        {
            if (!ok) throw new ArgumentException("NbdServerOptions: " + message);
        }
        Check(MaxConnections >= 1, $"{nameof(MaxConnections)} must be at least 1 (is {MaxConnections}).");
        Check(MaxInFlightPerConnection is >= 1 and <= 4096, $"{nameof(MaxInFlightPerConnection)} must be 1..4096 (is {MaxInFlightPerConnection}).");
        Check(MaxRequestBytes is >= 4096 and <= 256 * 1024 * 1024, $"{nameof(MaxRequestBytes)} must be 4 KiB..256 MiB (is {MaxRequestBytes}).");
        Check(PreferredBlockBytes >= 1 && PreferredBlockBytes <= MaxRequestBytes && (PreferredBlockBytes & (PreferredBlockBytes - 1)) == 0,
            $"{nameof(PreferredBlockBytes)} must be a power of two no larger than {nameof(MaxRequestBytes)} (is {PreferredBlockBytes}).");
        Check(MaxOptionsPerHandshake >= 1, $"{nameof(MaxOptionsPerHandshake)} must be at least 1.");
        Check(MaxStringBytes is >= 64 and <= 65536, $"{nameof(MaxStringBytes)} must be 64..65536 (is {MaxStringBytes}).");
        Check(MaxOptionBytes >= MaxStringBytes + 16, $"{nameof(MaxOptionBytes)} must exceed {nameof(MaxStringBytes)} + 16.");
        Check(MaxMetaContextQueries >= 1, $"{nameof(MaxMetaContextQueries)} must be at least 1.");
        Check(MaxExtentsPerReply is >= 1 and <= 1 << 20, $"{nameof(MaxExtentsPerReply)} must be 1..1048576.");
        Check(HandshakeTimeout > TimeSpan.Zero, $"{nameof(HandshakeTimeout)} must be positive.");
        Check(ShutdownGracePeriod >= TimeSpan.Zero, $"{nameof(ShutdownGracePeriod)} must not be negative.");
        Check(ReceiveBufferBytes >= 4096, $"{nameof(ReceiveBufferBytes)} must be at least 4096.");
        Check(SendBufferBytes >= 4096, $"{nameof(SendBufferBytes)} must be at least 4096.");
        Check(SendBufferBytes >= 24 + 8 * MaxExtentsPerReply, $"{nameof(SendBufferBytes)} must hold a block status reply of {nameof(MaxExtentsPerReply)} extents.");
        Check(CopyPayloadMaxBytes >= 0 && CopyPayloadMaxBytes <= SendBufferBytes / 2, $"{nameof(CopyPayloadMaxBytes)} must be 0..{nameof(SendBufferBytes)}/2.");
        Check(MappedReadMinBytes >= 4096, $"{nameof(MappedReadMinBytes)} must be at least 4 KiB (int.MaxValue turns mapped reads off).");
        Check(SplicedWriteMinBytes >= 4096, $"{nameof(SplicedWriteMinBytes)} must be at least 4 KiB (int.MaxValue turns spliced writes off).");
        Check(SplicePipeBytes is >= 64 * 1024 and <= 64 * 1024 * 1024, $"{nameof(SplicePipeBytes)} must be 64 KiB..64 MiB.");
        Check(SendTimeout > TimeSpan.Zero, $"{nameof(SendTimeout)} must be positive.");
        Check(InlineMaxBytes >= 0, $"{nameof(InlineMaxBytes)} must not be negative.");
        ArgumentNullException.ThrowIfNull(TimeProvider);
    }
}
