using System.Buffers.Binary;
using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Core;

namespace Tessera.Nbd.Tests;

/// <summary>
/// Pipelined writes handed to the connection's worker (NbdConnection.Worker.cs): they complete out of order, every
/// one is answered exactly once, the bytes land where they belong, and a FLUSH covers every write the client had
/// been told was done before it sent the FLUSH, checked against a model of volatile and durable bytes.
/// </summary>
public class WriteOverlapTests
{
    private const int BlockBytes = 4096;

    /// <summary>
    /// A disk with a volatile and a durable image. A write lands in the volatile image when it completes (a third of
    /// them complete later, on another thread, so completions reorder); a flush copies the volatile image, and
    /// the set of completed writes, to the durable side. Also counts which threads started writes.
    /// </summary>
    private sealed class DurabilityModelExport(long sizeBytes) : INbdExport
    {
        private readonly object _lock = new();
        private readonly byte[] _volatile = new byte[sizeBytes];
        private byte[] _durable = new byte[sizeBytes];
        private readonly HashSet<long> _completed = [];
        private HashSet<long> _durableOffsets = [];
        public int WritesStartedOnPool;
        public int WritesStartedElsewhere;
        public int Flushes;

        public string Name => "model";
        public string Description => "durability model";
        public long SizeBytes => sizeBytes;
        public bool ReadOnly => false;
        public NbdExportCapabilities Capabilities => NbdExportCapabilities.Flush | NbdExportCapabilities.Fua;
        public CancellationToken Closed => CancellationToken.None;

        public (byte[] Durable, HashSet<long> DurableOffsets, byte[] Volatile) Snapshot()
        {
            lock (_lock) return ((byte[])_durable.Clone(), [.. _durableOffsets], (byte[])_volatile.Clone());
        }

        public async ValueTask<IoStatus> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken)
        {
            if (Thread.CurrentThread.IsThreadPoolThread) Interlocked.Increment(ref WritesStartedOnPool);
            else Interlocked.Increment(ref WritesStartedElsewhere);
            if (offset / BlockBytes % 3 == 0) await Task.Yield();
            lock (_lock)
            {
                data.Span.CopyTo(_volatile.AsSpan((int)offset));
                _completed.Add(offset);
            }
            return IoStatus.Ok;
        }

        public ValueTask<IoStatus> FlushAsync(CancellationToken cancellationToken)
        {
            lock (_lock)
            {
                _durable = (byte[])_volatile.Clone();
                _durableOffsets = [.. _completed];
                Flushes++;
            }
            return new(IoStatus.Ok);
        }

        public ValueTask<IoStatus> ReadAsync(long offset, Memory<byte> buffer, NbdExtentList? zeroExtents, CancellationToken cancellationToken)
        {
            lock (_lock) _volatile.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span);
            return new(IoStatus.Ok);
        }

        public ValueTask<IoStatus> TrimAsync(long offset, long length, bool fua, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> WriteZeroesAsync(long offset, long length, bool fua, bool noHole, bool fastZero, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> CacheAsync(long offset, long length, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public ValueTask<IoStatus> GetExtentsAsync(long offset, long length, NbdExtentList extents, CancellationToken cancellationToken) => new(IoStatus.NotSupported);
        public void Dispose() { }
    }

    private static byte[] WriteBurst(IEnumerable<(ulong Cookie, long Offset)> writes)
    {
        var burst = new MemoryStream();
        foreach (var (cookie, offset) in writes)
        {
            burst.Write(RawNbd.Request(NbdWire.CmdWrite, 0, cookie, (ulong)offset, BlockBytes));
            burst.Write(Pattern.Make(offset, BlockBytes, 0x3C));
        }
        return burst.ToArray();
    }

    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public async Task PipelinedWritesAndAFlushMatchTheDurabilityModel(bool threadPerConnection, bool overlap)
    {
        // Proves, with writes completing out of order on the worker: each of 192 pipelined writes (more than the
        // 64 in-flight bound) is answered exactly once with success and lands at its offset; a FLUSH sent after
        // the client had seen some replies makes every one of those writes durable before it is answered; and the
        // worker really runs the writes of a burst (pool threads) only when the option is on.
        var export = new DurabilityModelExport(4 << 20);
        var server = new NbdServer(new OneExportCatalog(export), new NbdServerOptions
        {
            ThreadPerConnection = threadPerConnection,
            OverlapPipelinedWrites = overlap,
        }, NullLogger<NbdServer>.Instance);
        await server.StartAsync();
        try
        {
            await using var raw = await RawNbd.ConnectAsync(server.TcpEndPoint!.Port);
            await raw.GreetAsync();
            await raw.SendOptionAsync(NbdWire.OptGo, RawNbd.NameAndInfos("model"));
            Assert.Equal(NbdWire.RepAck, (await raw.ReadRepliesAsync(NbdWire.OptGo))[^1].Type);

            const ulong flushCookie = 1_000_000;
            var first = Enumerable.Range(0, 160).Select(i => ((ulong)i + 1, (long)i * 2 * BlockBytes)).ToArray();
            var second = Enumerable.Range(0, 32).Select(i => ((ulong)i + 5001, (long)(i * 2 + 1) * BlockBytes)).ToArray();
            var offsetOf = first.Concat(second).ToDictionary(w => w.Item1, w => w.Item2);

            var replied = new List<ulong>();
            async Task ReadRepliesUntil(Func<bool> done)
            {
                while (!done())
                {
                    var r = await raw.ReadExactAsync(NbdWire.SimpleReplyHeaderBytes);
                    Assert.Equal(NbdWire.SimpleReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(r));
                    Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(r.AsSpan(4)));
                    replied.Add(BinaryPrimitives.ReadUInt64BigEndian(r.AsSpan(8)));
                }
            }

            var sendFirst = raw.Stream.WriteAsync(WriteBurst(first)).AsTask();
            await ReadRepliesUntil(() => replied.Count >= 24);
            await sendFirst.WaitAsync(TimeSpan.FromSeconds(30));
            var seenBeforeFlush = replied.ToArray();

            var flushAndMore = new MemoryStream();
            flushAndMore.Write(RawNbd.Request(NbdWire.CmdFlush, 0, flushCookie, 0, 0));
            flushAndMore.Write(WriteBurst(second));
            await raw.Stream.WriteAsync(flushAndMore.ToArray());
            await ReadRepliesUntil(() => replied.Count == first.Length + second.Length + 1).WaitAsync(TimeSpan.FromSeconds(60));

            Assert.Equal(replied.Count, replied.Distinct().Count());
            Assert.Contains(flushCookie, replied);
            var (durable, durableOffsets, final) = export.Snapshot();
            Assert.Equal(1, export.Flushes);
            foreach (var cookie in seenBeforeFlush)
            {
                long offset = offsetOf[cookie];
                Assert.True(durableOffsets.Contains(offset), $"write {cookie} was answered before the FLUSH was sent but is not durable");
                Assert.Equal(Pattern.Make(offset, BlockBytes, 0x3C), durable.AsSpan((int)offset, BlockBytes).ToArray());
            }
            foreach (var (cookie, offset) in offsetOf)
                Assert.Equal(Pattern.Make(offset, BlockBytes, 0x3C), final.AsSpan((int)offset, BlockBytes).ToArray());

            if (threadPerConnection && overlap) Assert.True(export.WritesStartedOnPool > 0, "no write of a pipelined burst left the reader thread");
            if (threadPerConnection && !overlap) Assert.Equal(0, export.WritesStartedOnPool);
        }
        finally
        {
            await server.StopAsync();
        }
    }
}
