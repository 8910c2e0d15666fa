using System.Buffers.Binary;
using System.Text;
using Microsoft.Extensions.Logging;
using Tessera.Nbd.Protocol;
using Tessera.Nbd.Tests.Infrastructure;

namespace Tessera.Fuzz;

/// <summary>A fuzz input broke the target's contract (the harness throws it so AFL++ records a crash).</summary>
public sealed class FuzzOracleException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// The NBD server fed fuzz bytes as its client, over an in-memory stream, against fresh in-memory exports.
/// One server lives for the whole process (as in production, connections come and go); the exports are recreated
/// per input so that every input starts from the same disk contents.
/// </summary>
public static class NbdServerTargets
{
    /// <summary>Every export is 1 MiB and requests are capped at 256 KiB, so a session has a small known memory bound.</summary>
    public const int ExportBytes = 1 << 20;
    public const int MaxRequestBytes = 256 << 10;

    /// <summary>
    /// What one session may allocate in all: 64 in-flight request buffers of the maximum size, the option buffers
    /// and slack. Anything sized by a length the client claims beyond the limits would blow through it.
    /// </summary>
    public const long SessionAllocationBoundBytes = 64L * MaxRequestBytes + (8 << 20);

    /// <summary>Sessions (since start) that completed a handshake and served an export: the corpus tests check the seeds get there.</summary>
    public static int ExportsServed => Log.ExportsServed;

    private static readonly FuzzCatalog Catalog = new();
    private static readonly CountingLogger Log = new();
    private static readonly Tessera.Nbd.NbdServer Server = new(Catalog, new Tessera.Nbd.NbdServerOptions
    {
        TcpEndPoint = null,
        MaxRequestBytes = MaxRequestBytes,
        HandshakeTimeout = TimeSpan.FromSeconds(10),
        ShutdownGracePeriod = TimeSpan.FromSeconds(1),
    }, Log);

    /// <summary>Target "handshake": the input is everything the client sends, from its flags on.</summary>
    public static void Handshake(byte[] input) => Serve(input);

    /// <summary>
    /// Target "transmission": the first byte picks one of <see cref="Prefixes"/> (a valid handshake of a real
    /// client kind); the rest is sent after it as the transmission phase.
    /// </summary>
    public static void Transmission(byte[] input)
    {
        if (input.Length == 0) return;
        var prefix = Prefixes[input[0] % Prefixes.Length];
        var session = new byte[prefix.Length + input.Length - 1];
        prefix.CopyTo(session, 0);
        input.AsSpan(1).CopyTo(session.AsSpan(prefix.Length));
        Serve(session);
    }

    private static void Serve(byte[] session)
    {
        Catalog.Reset();
        Log.Reset();
        var stream = new ScriptedStream(session);
        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: false);
        bool served;
        try
        {
            served = Server.ServeAsync(stream, "fuzz").GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            throw new FuzzOracleException("NbdServer.ServeAsync threw (it must end any session cleanly)", e);
        }
        long allocated = GC.GetTotalAllocatedBytes(precise: false) - allocatedBefore;
        if (!served) throw new FuzzOracleException("the server refused the connection: an earlier session was not released");
        if (Server.ActiveConnections != 0) throw new FuzzOracleException($"{Server.ActiveConnections} connections still active after the session ended");
        if (Log.ExportThrew > 0) throw new FuzzOracleException("the export threw: a request the server should have rejected reached it", Log.FirstError);
        if (Log.Errors > 0) throw new FuzzOracleException("the server logged an error", Log.FirstError);
        if (allocated > SessionAllocationBoundBytes)
            throw new FuzzOracleException($"one session allocated {allocated} bytes, more than the bound {SessionAllocationBoundBytes}");
    }

    /// <summary>Valid handshakes the transmission target starts from: qemu-like, nbd-client-like, old-style, and a bare export.</summary>
    public static readonly byte[][] Prefixes =
    [
        Build(b => b.Flags(NbdWire.ClientFlagFixedNewstyle | NbdWire.ClientFlagNoZeroes)
            .Option(NbdWire.OptStructuredReply, [])
            .Option(NbdWire.OptSetMetaContext, NbdWireBuilder.MetaQuery("f", NbdWire.BaseAllocation))
            .Option(NbdWire.OptGo, NbdWireBuilder.NameAndInfos("f", NbdWire.InfoBlockSize))),
        Build(b => b.Flags(NbdWire.ClientFlagFixedNewstyle)
            .Option(NbdWire.OptGo, NbdWireBuilder.NameAndInfos("f"))),
        Build(b => b.Flags(NbdWire.ClientFlagFixedNewstyle | NbdWire.ClientFlagNoZeroes)
            .Option(NbdWire.OptExportName, Encoding.UTF8.GetBytes("ro"))),
        Build(b => b.Flags(NbdWire.ClientFlagFixedNewstyle | NbdWire.ClientFlagNoZeroes)
            .Option(NbdWire.OptStructuredReply, [])
            .Option(NbdWire.OptGo, NbdWireBuilder.NameAndInfos("plain"))),
    ];

    private static byte[] Build(Func<NbdWireBuilder, NbdWireBuilder> f) => f(new NbdWireBuilder()).ToArray();

    /// <summary>Three exports with different capabilities, recreated for every input.</summary>
    private sealed class FuzzCatalog : Tessera.Nbd.INbdExportCatalog
    {
        private MemoryExport[] _exports = [];

        public void Reset() => _exports =
        [
            new MemoryExport("f", ExportBytes),
            new MemoryExport("ro", ExportBytes, readOnly: true),
            new MemoryExport("plain", ExportBytes, caps: Tessera.Nbd.NbdExportCapabilities.None),
        ];

        public IReadOnlyList<Tessera.Nbd.NbdExportDescriptor> ListExports() =>
            _exports.Select(e => new Tessera.Nbd.NbdExportDescriptor(e.Name, e.Description)).ToList();

        public Tessera.Nbd.INbdExport? Open(string name) => _exports.FirstOrDefault(e => e.Name == name);
    }

    private sealed class CountingLogger : ILogger<Tessera.Nbd.NbdServer>
    {
        public int ExportThrew;
        public int Errors;
        public int ExportsServed;
        public Exception? FirstError;

        public void Reset()
        {
            ExportThrew = 0;
            Errors = 0;
            FirstError = null;
        }

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (eventId.Id == 2007) Interlocked.Increment(ref ExportsServed);
            if (logLevel < LogLevel.Error) return;
            if (eventId.Id == 2009) Interlocked.Increment(ref ExportThrew);
            Interlocked.Increment(ref Errors);
            FirstError ??= exception ?? new Exception(formatter(state, exception));
        }
    }
}

/// <summary>Builds NBD client-to-server and server-to-client byte streams for prefixes and seeds.</summary>
public sealed class NbdWireBuilder
{
    private readonly MemoryStream _bytes = new();

    public byte[] ToArray() => _bytes.ToArray();

    public NbdWireBuilder Raw(ReadOnlySpan<byte> data)
    {
        _bytes.Write(data);
        return this;
    }

    public NbdWireBuilder U16(ushort v) { Span<byte> b = stackalloc byte[2]; BinaryPrimitives.WriteUInt16BigEndian(b, v); return Raw(b); }
    public NbdWireBuilder U32(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, v); return Raw(b); }
    public NbdWireBuilder U64(ulong v) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64BigEndian(b, v); return Raw(b); }

    public NbdWireBuilder Flags(uint clientFlags) => U32(clientFlags);

    public NbdWireBuilder Option(uint option, byte[] data) => U64(NbdWire.OptionMagic).U32(option).U32((uint)data.Length).Raw(data);

    public NbdWireBuilder Request(ushort command, ushort flags, ulong cookie, ulong offset, uint length, byte[]? payload = null)
    {
        U32(NbdWire.RequestMagic).U16(flags).U16(command).U64(cookie).U64(offset).U32(length);
        return payload == null ? this : Raw(payload);
    }

    // Server side, for the client target.
    public NbdWireBuilder Greeting(ushort serverFlags = NbdWire.FlagFixedNewstyle | NbdWire.FlagNoZeroes) =>
        U64(NbdWire.InitMagic).U64(NbdWire.OptionMagic).U16(serverFlags);

    public NbdWireBuilder OptionReply(uint option, uint type, byte[] data) =>
        U64(NbdWire.OptionReplyMagic).U32(option).U32(type).U32((uint)data.Length).Raw(data);

    public NbdWireBuilder SimpleReply(uint errno, ulong cookie, byte[]? data = null)
    {
        U32(NbdWire.SimpleReplyMagic).U32(errno).U64(cookie);
        return data == null ? this : Raw(data);
    }

    public NbdWireBuilder Chunk(ushort flags, ushort type, ulong cookie, byte[] payload) =>
        U32(NbdWire.StructuredReplyMagic).U16(flags).U16(type).U64(cookie).U32((uint)payload.Length).Raw(payload);

    public static byte[] NameAndInfos(string name, params ushort[] infos)
    {
        var b = new NbdWireBuilder();
        var n = Encoding.UTF8.GetBytes(name);
        b.U32((uint)n.Length).Raw(n).U16((ushort)infos.Length);
        foreach (var i in infos) b.U16(i);
        return b.ToArray();
    }

    public static byte[] MetaQuery(string export, params string[] queries)
    {
        var b = new NbdWireBuilder();
        var n = Encoding.UTF8.GetBytes(export);
        b.U32((uint)n.Length).Raw(n).U32((uint)queries.Length);
        foreach (var q in queries)
        {
            var qb = Encoding.UTF8.GetBytes(q);
            b.U32((uint)qb.Length).Raw(qb);
        }
        return b.ToArray();
    }
}
