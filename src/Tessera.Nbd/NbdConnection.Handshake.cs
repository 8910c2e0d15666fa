using System.Buffers.Binary;
using System.Text;
using Tessera.Nbd.Protocol;
using Microsoft.Extensions.Logging;

namespace Tessera.Nbd;

/// <summary>
/// The fixed-newstyle handshake. Everything here is bounded: the number of options, each option's length, each
/// string's length and (by the caller's token) the total time. Malformed option payloads get NBD_REP_ERR_INVALID
/// and the handshake goes on; only a broken framing (bad magic, oversized option, unknown client flags) ends the
/// connection, because after that the byte stream cannot be trusted.
/// </summary>
internal sealed partial class NbdConnection
{
    private bool _structured;
    private bool _noZeroes;
    private string? _metaContextExport;
    private bool _baseAllocation;

    /// <summary>Runs the handshake; returns the export to serve, or null when the client ended the handshake.</summary>
    private async ValueTask<INbdExport?> HandshakeAsync(CancellationToken ct)
    {
        var greeting = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdWire.InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(greeting.AsSpan(8), NbdWire.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(greeting.AsSpan(16), NbdWire.FlagFixedNewstyle | NbdWire.FlagNoZeroes);
        await _stream.WriteAsync(greeting, ct).ConfigureAwait(false);
        await _stream.FlushAsync(ct).ConfigureAwait(false);

        if (!await _input.FillAsync(4, "client flags", ct).ConfigureAwait(false)) return null;
        uint clientFlags = BinaryPrimitives.ReadUInt32BigEndian(_input.Buffered);
        _input.Consume(4);
        if ((clientFlags & ~(NbdWire.ClientFlagFixedNewstyle | NbdWire.ClientFlagNoZeroes)) != 0)
            throw new NbdProtocolException($"unknown client flags 0x{clientFlags:x}");
        _noZeroes = (clientFlags & NbdWire.ClientFlagNoZeroes) != 0;

        for (int count = 0; ; count++)
        {
            if (!await _input.FillAsync(16, "option header", ct).ConfigureAwait(false))
                throw new NbdProtocolException("connection closed during the handshake");
            if (count >= _options.MaxOptionsPerHandshake)
                throw new NbdProtocolException($"more than {_options.MaxOptionsPerHandshake} options in the handshake");
            var header = _input.Buffered;
            ulong magic = BinaryPrimitives.ReadUInt64BigEndian(header);
            uint option = BinaryPrimitives.ReadUInt32BigEndian(header[8..]);
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header[12..]);
            _input.Consume(16);
            if (magic != NbdWire.OptionMagic) throw new NbdProtocolException($"bad option magic 0x{magic:x}");
            if (length > (uint)_options.MaxOptionBytes)
                throw new NbdProtocolException($"option {option} is {length} bytes, more than the limit {_options.MaxOptionBytes}");
            var data = new byte[length];
            await _input.ReadExactAsync(data, "option data", ct).ConfigureAwait(false);
            if (_logger.IsEnabled(LogLevel.Debug)) NbdLog.OptionReceived(_logger, _id, OptionName(option), length);

            switch (option)
            {
                case NbdWire.OptExportName:
                {
                    if (length > (uint)_options.MaxStringBytes) throw new NbdProtocolException("export name too long");
                    string name = Encoding.UTF8.GetString(data);
                    var export = _catalog.Open(name);
                    if (export == null)
                    {
                        NbdLog.UnknownExport(_logger, _id, name);
                        throw new NbdProtocolException($"EXPORT_NAME for unknown export '{name}'"); // the spec's only answer: close
                    }
                    var reply = new byte[_noZeroes ? 10 : 134];
                    BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)export.SizeBytes);
                    BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), TransmissionFlags(export));
                    await _stream.WriteAsync(reply, ct).ConfigureAwait(false);
                    await _stream.FlushAsync(ct).ConfigureAwait(false);
                    if (_metaContextExport != name) _baseAllocation = false;
                    return export;
                }
                case NbdWire.OptAbort:
                    try { await SendOptionReplyAsync(option, NbdWire.RepAck, default, ct).ConfigureAwait(false); }
                    catch (IOException) { } // the client may already be gone, which is fine for ABORT
                    return null;
                case NbdWire.OptList:
                    if (length != 0) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); break; }
                    foreach (var d in _catalog.ListExports())
                    {
                        byte[] name = Encoding.UTF8.GetBytes(d.Name), description = Encoding.UTF8.GetBytes(d.Description ?? "");
                        var payload = new byte[4 + name.Length + description.Length];
                        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)name.Length);
                        name.CopyTo(payload, 4);
                        description.CopyTo(payload, 4 + name.Length);
                        await SendOptionReplyAsync(option, NbdWire.RepServer, payload, ct).ConfigureAwait(false);
                    }
                    await SendOptionReplyAsync(option, NbdWire.RepAck, default, ct).ConfigureAwait(false);
                    break;
                case NbdWire.OptInfo:
                case NbdWire.OptGo:
                {
                    var export = await InfoOrGoAsync(option, data, ct).ConfigureAwait(false);
                    if (export != null) return export;
                    break;
                }
                case NbdWire.OptStructuredReply:
                    if (length != 0) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); break; }
                    _structured = true;
                    await SendOptionReplyAsync(option, NbdWire.RepAck, default, ct).ConfigureAwait(false);
                    break;
                case NbdWire.OptListMetaContext:
                case NbdWire.OptSetMetaContext:
                    await MetaContextAsync(option, data, ct).ConfigureAwait(false);
                    break;
                case NbdWire.OptStartTls:
                    await SendOptionErrorAsync(option, NbdWire.RepErrPolicy, ct).ConfigureAwait(false);
                    break;
                default:
                    await SendOptionErrorAsync(option, NbdWire.RepErrUnsup, ct).ConfigureAwait(false);
                    break;
            }
        }
    }

    private async ValueTask<INbdExport?> InfoOrGoAsync(uint option, byte[] data, CancellationToken ct)
    {
        if (data.Length < 6) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return null; }
        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 6)) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return null; }
        int requestCount = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength));
        if (data.Length != 6 + (int)nameLength + 2 * requestCount) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return null; }
        if (nameLength > (uint)_options.MaxStringBytes) { await SendOptionErrorAsync(option, NbdWire.RepErrTooBig, ct).ConfigureAwait(false); return null; }
        string name = Encoding.UTF8.GetString(data, 4, (int)nameLength);
        bool wantName = false, wantDescription = false;
        for (int i = 0; i < requestCount; i++)
        {
            ushort info = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(6 + (int)nameLength + 2 * i));
            if (info == NbdWire.InfoName) wantName = true;
            else if (info == NbdWire.InfoDescription) wantDescription = true;
        }
        var export = _catalog.Open(name);
        if (export == null)
        {
            NbdLog.UnknownExport(_logger, _id, name);
            await SendOptionErrorAsync(option, NbdWire.RepErrUnknown, ct).ConfigureAwait(false);
            return null;
        }
        bool keep = false;
        try
        {
            var info = new byte[12];
            BinaryPrimitives.WriteUInt16BigEndian(info, NbdWire.InfoExport);
            BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(2), (ulong)export.SizeBytes);
            BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), TransmissionFlags(export));
            await SendOptionReplyAsync(option, NbdWire.RepInfo, info, ct).ConfigureAwait(false);

            var blockSize = new byte[14];
            BinaryPrimitives.WriteUInt16BigEndian(blockSize, NbdWire.InfoBlockSize);
            BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(2), 1);
            BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(6), (uint)_options.PreferredBlockBytes);
            BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(10), (uint)_options.MaxRequestBytes);
            await SendOptionReplyAsync(option, NbdWire.RepInfo, blockSize, ct).ConfigureAwait(false);

            if (wantName) await SendInfoStringAsync(option, NbdWire.InfoName, export.Name, ct).ConfigureAwait(false);
            if (wantDescription && !string.IsNullOrEmpty(export.Description))
                await SendInfoStringAsync(option, NbdWire.InfoDescription, export.Description, ct).ConfigureAwait(false);
            await SendOptionReplyAsync(option, NbdWire.RepAck, default, ct).ConfigureAwait(false);
            if (option != NbdWire.OptGo) return null;
            if (_metaContextExport != name) _baseAllocation = false;
            keep = true;
            return export;
        }
        finally
        {
            if (!keep) export.Dispose();
        }
    }

    private ValueTask SendInfoStringAsync(uint option, ushort infoType, string value, CancellationToken ct)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        int n = Math.Min(bytes.Length, _options.MaxStringBytes);
        var payload = new byte[2 + n];
        BinaryPrimitives.WriteUInt16BigEndian(payload, infoType);
        bytes.AsSpan(0, n).CopyTo(payload.AsSpan(2));
        return SendOptionReplyAsync(option, NbdWire.RepInfo, payload, ct);
    }

    private async ValueTask MetaContextAsync(uint option, byte[] data, CancellationToken ct)
    {
        bool set = option == NbdWire.OptSetMetaContext;
        if (set && !_structured) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return; }
        if (data.Length < 8) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return; }
        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > (uint)(data.Length - 8)) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return; }
        if (nameLength > (uint)_options.MaxStringBytes) { await SendOptionErrorAsync(option, NbdWire.RepErrTooBig, ct).ConfigureAwait(false); return; }
        string name = Encoding.UTF8.GetString(data, 4, (int)nameLength);
        int pos = 4 + (int)nameLength;
        uint queryCount = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(pos));
        pos += 4;
        if (queryCount > (uint)_options.MaxMetaContextQueries) { await SendOptionErrorAsync(option, NbdWire.RepErrTooBig, ct).ConfigureAwait(false); return; }
        // Parse everything before answering: a malformed query list gets ERR_INVALID and no partial replies.
        bool matchBase = queryCount == 0 && !set;
        for (uint i = 0; i < queryCount; i++)
        {
            if (data.Length - pos < 4) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return; }
            uint queryLength = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(pos));
            pos += 4;
            if (queryLength > (uint)(data.Length - pos)) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return; }
            if (queryLength > (uint)_options.MaxStringBytes) { await SendOptionErrorAsync(option, NbdWire.RepErrTooBig, ct).ConfigureAwait(false); return; }
            var query = data.AsSpan(pos, (int)queryLength);
            pos += (int)queryLength;
            if (query.SequenceEqual("base:allocation"u8) || (!set && query.SequenceEqual("base:"u8))) matchBase = true;
            // Other namespaces and contexts are not ours: the spec says to ignore them.
        }
        if (pos != data.Length) { await SendOptionErrorAsync(option, NbdWire.RepErrInvalid, ct).ConfigureAwait(false); return; }
        var export = _catalog.Open(name);
        if (export == null) { await SendOptionErrorAsync(option, NbdWire.RepErrUnknown, ct).ConfigureAwait(false); return; }
        export.Dispose();
        if (set)
        {
            _metaContextExport = name;
            _baseAllocation = matchBase;
        }
        if (matchBase)
        {
            var payload = new byte[4 + NbdWire.BaseAllocation.Length];
            BinaryPrimitives.WriteUInt32BigEndian(payload, set ? NbdWire.BaseAllocationId : 0);
            Encoding.ASCII.GetBytes(NbdWire.BaseAllocation, payload.AsSpan(4));
            await SendOptionReplyAsync(option, NbdWire.RepMetaContext, payload, ct).ConfigureAwait(false);
        }
        await SendOptionReplyAsync(option, NbdWire.RepAck, default, ct).ConfigureAwait(false);
    }

    private ValueTask SendOptionErrorAsync(uint option, uint error, CancellationToken ct) => SendOptionReplyAsync(option, error, default, ct);

    private async ValueTask SendOptionReplyAsync(uint option, uint type, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        var buffer = new byte[20 + payload.Length];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, NbdWire.OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(12), type);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(16), (uint)payload.Length);
        payload.Span.CopyTo(buffer.AsSpan(20));
        await _stream.WriteAsync(buffer, ct).ConfigureAwait(false);
        await _stream.FlushAsync(ct).ConfigureAwait(false);
    }

    private ushort TransmissionFlags(INbdExport export)
    {
        var caps = export.Capabilities;
        bool ro = export.ReadOnly;
        int flags = NbdWire.TxHasFlags;
        if (ro) flags |= NbdWire.TxReadOnly;
        if ((caps & NbdExportCapabilities.Flush) != 0) flags |= NbdWire.TxSendFlush;
        if ((caps & NbdExportCapabilities.Fua) != 0) flags |= NbdWire.TxSendFua;
        if (!ro && (caps & NbdExportCapabilities.Trim) != 0) flags |= NbdWire.TxSendTrim;
        if (!ro && (caps & NbdExportCapabilities.WriteZeroes) != 0)
        {
            flags |= NbdWire.TxSendWriteZeroes;
            if ((caps & NbdExportCapabilities.FastZero) != 0) flags |= NbdWire.TxSendFastZero;
        }
        if ((caps & NbdExportCapabilities.Cache) != 0) flags |= NbdWire.TxSendCache;
        if ((caps & NbdExportCapabilities.MultiConn) != 0) flags |= NbdWire.TxCanMultiConn;
        if (_structured) flags |= NbdWire.TxSendDf;
        return (ushort)flags;
    }

    private static string OptionName(uint option) => option switch
    {
        NbdWire.OptExportName => "EXPORT_NAME",
        NbdWire.OptAbort => "ABORT",
        NbdWire.OptList => "LIST",
        NbdWire.OptStartTls => "STARTTLS",
        NbdWire.OptInfo => "INFO",
        NbdWire.OptGo => "GO",
        NbdWire.OptStructuredReply => "STRUCTURED_REPLY",
        NbdWire.OptListMetaContext => "LIST_META_CONTEXT",
        NbdWire.OptSetMetaContext => "SET_META_CONTEXT",
        _ => $"unknown ({option})",
    };
}
