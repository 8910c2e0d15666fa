using System.Buffers.Binary;
using Tessera.Nbd;

namespace Tessera.Fuzz;

/// <summary>
/// Target "client": <see cref="NbdClient"/> talking to a hostile server whose bytes are the fuzz input.
/// Input: byte 0 = client options (bit 0 structured replies, bit 1 base:allocation); bytes 1-2 = length H (big
/// endian) of the handshake part; then H bytes the server sends during the handshake; the rest is sent as replies
/// once the client has issued <see cref="Requests"/> (all at once, so cookies 1..N are registered before any reply
/// is parsed and a run does not depend on thread timing).
/// Oracle: the client's API only fails with <see cref="NbdClientException"/>; it never reports a negative size, never
/// takes more than a few seconds, and every request ends (answered or failed) once the server's bytes run out.
/// </summary>
public static class NbdClientTarget
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    /// <summary>The requests issued after the handshake, in cookie order (1-based).</summary>
    public static readonly string[] Requests =
        ["read 0+4096", "read 65536+131072 (split when the server's maximum block is smaller)", "write 4096+512 fua", "flush", "trim 0+65536",
         "write-zeroes 0+4096 no-hole", "cache 0+4096", "block-status 0+1048576"];

    /// <summary>Requests of the last input answered with success (for the corpus tests).</summary>
    public static int LastAnswered { get; private set; }

    public static void Run(byte[] input)
    {
        LastAnswered = 0;
        if (input.Length < 3) return;
        int handshakeLength = Math.Min(BinaryPrimitives.ReadUInt16BigEndian(input.AsSpan(1)), input.Length - 3);
        var stream = new ScriptedStream(input.AsSpan(3, handshakeLength).ToArray(), input.AsSpan(3 + handshakeLength).ToArray());
        var options = new NbdClientOptions
        {
            StructuredReplies = (input[0] & 1) != 0,
            BaseAllocation = (input[0] & 2) != 0,
            HandshakeTimeout = Bound,
        };
        stream.FirstPartOnlyThreadId = Environment.CurrentManagedThreadId;
        stream.AnnounceSecondPart();
        var task = RunAsync(stream, options);
        if (!task.Wait(Bound * 2)) throw new FuzzOracleException($"the client did not finish within {Bound * 2}");
        task.GetAwaiter().GetResult();
    }

    private static async Task RunAsync(ScriptedStream stream, NbdClientOptions options)
    {
        NbdClient client;
        try
        {
            client = await NbdClient.ConnectAsync(stream, "f", options).ConfigureAwait(false);
        }
        catch (NbdClientException)
        {
            return; // refusing a broken handshake is the right answer
        }
        await using (client.ConfigureAwait(false))
        {
            if (client.SizeBytes < 0) throw new FuzzOracleException($"the client reports a negative export size {client.SizeBytes}");
            if (client.MaxBlockBytes < NbdClient.MinUsableMaxBlockBytes) throw new FuzzOracleException($"the client accepted a maximum block size of {client.MaxBlockBytes} (requests are split at it)");
            var extents = new NbdExtentList();
            var pending = new List<Task<uint>>
            {
                client.ReadAsync(0, new byte[4096]).AsTask(),
                client.ReadAsync(65536, new byte[131072]).AsTask(),
                client.WriteAsync(4096, new byte[512], fua: true).AsTask(),
                client.FlushAsync().AsTask(),
                client.TrimAsync(0, 65536).AsTask(),
                client.WriteZeroesAsync(0, 4096, noHole: true).AsTask(),
                client.CacheAsync(0, 4096).AsTask(),
                client.BlockStatusAsync(0, 1 << 20, extents).AsTask(),
            };
            stream.ReleaseSecondPart();
            foreach (var p in pending)
            {
                try
                {
                    if (await p.WaitAsync(Bound).ConfigureAwait(false) == 0) LastAnswered++;
                }
                catch (NbdClientException) { }
                catch (TimeoutException)
                {
                    throw new FuzzOracleException("a request was neither answered nor failed after the server's bytes ran out");
                }
            }
            for (int i = 0; i < extents.Count; i++)
                if (extents[i].Length < 0) throw new FuzzOracleException($"block status produced a negative extent length {extents[i].Length}");
        }
    }
}
