using System.Buffers;
using Tessera.Core;

namespace Tessera.Nbd;

/// <summary>
/// One in-flight request. A connection keeps a small pool of these (at most its in-flight bound), so the steady path
/// allocates nothing: the payload buffer, the extent lists, and the continuation delegate are reused.
/// </summary>
internal sealed class RequestContext : IThreadPoolWorkItem
{
    /// <summary>Buffers at most this large stay with the context between requests; larger ones go back to the pool.</summary>
    private const int KeepBufferMaxBytes = 1024 * 1024;

    public ulong Cookie;
    public ushort Command;
    public ushort Flags;
    public ulong Offset;
    public uint Length;
    public uint Errno;
    /// <summary>True when the reply must be structured (READ/BLOCK_STATUS after STRUCTURED_REPLY).</summary>
    public bool Structured;
    /// <summary>True when the export's zero extents of a read become hole chunks.</summary>
    public bool SendHoles;

    /// <summary>A WRITE whose payload is still in the socket, for the reader to splice (NbdConnection.SplicedWrites.cs).</summary>
    public bool PayloadInSocket;
    /// <summary>The read is resolved only when its reply is sent (NbdConnection.MappedReads.cs).</summary>
    public bool ReadDeferred;
    /// <summary>The mapped ranges of a deferred read, held while <see cref="MappedReadActive"/>; the plan object is reused.</summary>
    public NbdMappedRead? MappedRead;
    public bool MappedReadActive;

    public byte[] Buffer = [];
    public readonly NbdExtentList Extents = new();

    public ValueTask<IoStatus> Pending;
    public readonly Action OnCompleted;

    private readonly NbdConnection _owner;

    public RequestContext(NbdConnection owner)
    {
        _owner = owner;
        OnCompleted = () => owner.OnOperationCompleted(this);
    }

    /// <summary>Runs the request on a pool thread (large transfers, so the reader keeps receiving meanwhile).</summary>
    public void Execute() => _owner.Dispatch(this);

    public Memory<byte> Payload => Buffer.AsMemory(0, (int)Length);

    public void EnsureBuffer(int bytes)
    {
        if (Buffer.Length >= bytes) return;
        ReturnBuffer();
        Buffer = ArrayPool<byte>.Shared.Rent(bytes);
    }

    public void Reset()
    {
        if (Buffer.Length > KeepBufferMaxBytes) ReturnBuffer();
        Extents.Clear();
        Pending = default;
        Errno = 0;
        SendHoles = false;
        Structured = false;
        ReadDeferred = false;
        PayloadInSocket = false;
    }

    public void ReturnBuffer()
    {
        if (Buffer.Length > 0) ArrayPool<byte>.Shared.Return(Buffer);
        Buffer = [];
    }
}
