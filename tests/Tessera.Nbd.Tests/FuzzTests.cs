using System.Diagnostics;
using System.Text;

namespace Tessera.Nbd.Tests;

public class FuzzTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>A plausible session: greeting answer, a few options, GO, then a mix of requests.</summary>
    private static byte[] ValidSession(Random rng)
    {
        var ms = new MemoryStream();
        ms.Write(new byte[] { 0, 0, 0, 3 });
        void Option(uint opt, byte[] data)
        {
            var h = new byte[16];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(h, NbdWire.OptionMagic);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(8), opt);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(12), (uint)data.Length);
            ms.Write(h);
            ms.Write(data);
        }
        if (rng.Next(2) == 0) Option(NbdWire.OptList, []);
        Option(NbdWire.OptStructuredReply, []);
        Option(NbdWire.OptListMetaContext, RawNbd.MetaQuery("f", "base:allocation", "x:"));
        Option(NbdWire.OptSetMetaContext, RawNbd.MetaQuery("f", "base:allocation"));
        Option(NbdWire.OptInfo, RawNbd.NameAndInfos("f", 0, 1, 2, 3));
        if (rng.Next(3) == 0) Option(NbdWire.OptExportName, Encoding.UTF8.GetBytes("f"));
        else Option(NbdWire.OptGo, RawNbd.NameAndInfos("f", 3));
        for (int i = rng.Next(1, 12); i > 0; i--)
        {
            ushort cmd = (ushort)rng.Next(0, 9);
            ushort flags = (ushort)(rng.Next(4) == 0 ? rng.Next(0, 64) : 0);
            uint length = (uint)rng.Next(0, 9000);
            ulong offset = (ulong)rng.Next(0, 1 << 20);
            ms.Write(RawNbd.Request(cmd, flags, (ulong)i, offset, length));
            if (cmd == NbdWire.CmdWrite) ms.Write(new byte[length]);
        }
        if (rng.Next(2) == 0) ms.Write(RawNbd.Request(NbdWire.CmdDisc, 0, 0, 0, 0));
        return ms.ToArray();
    }

    private static byte[] Mutate(byte[] session, Random rng)
    {
        var b = session.ToList();
        for (int m = rng.Next(1, 6); m > 0 && b.Count > 0; m--)
        {
            int at = rng.Next(b.Count);
            switch (rng.Next(5))
            {
                case 0: b[at] = (byte)rng.Next(256); break;
                case 1: b[at] ^= (byte)(1 << rng.Next(8)); break;
                case 2: b.RemoveRange(at, Math.Min(rng.Next(1, 32), b.Count - at)); break;
                case 3: b.InsertRange(at, Enumerable.Range(0, rng.Next(1, 16)).Select(_ => (byte)rng.Next(256))); break;
                case 4: b.RemoveRange(at, b.Count - at); break;
            }
        }
        return b.ToArray();
    }

    [Fact]
    public async Task RandomAndMutatedByteStreamsNeverCrashOrHangTheServer()
    {
        // Proves that for a fixed seed, a few seconds of random and mutated handshake/transmission streams never make the server throw or hang, and it still serves afterwards.
        const int seed = 20261126;
        var rng = new Random(seed);
        var export = new MemoryExport("f", 1 << 20);
        var log = new ListLogger();
        await using var server = new NbdServer(new MemoryCatalog(export), new NbdServerOptions
        {
            TcpEndPoint = null,
            HandshakeTimeout = TimeSpan.FromSeconds(2),
            ShutdownGracePeriod = TimeSpan.FromSeconds(1),
        }, log);
        var clock = Stopwatch.StartNew();
        int iterations = 0;
        while (clock.Elapsed < TimeSpan.FromSeconds(3) || iterations < 20)
        {
            iterations++;
            byte[] input = rng.Next(4) == 0
                ? Enumerable.Range(0, rng.Next(0, 300)).Select(_ => (byte)rng.Next(256)).ToArray()
                : Mutate(ValidSession(rng), rng);
            var (client, serverSide) = DuplexPipeStream.CreatePair();
            var serving = server.ServeAsync(serverSide, $"fuzz-{iterations}");
            var drain = client.CopyToAsync(Stream.Null);
            try
            {
                // Greeting first, as a real client would read it; then the fuzzed bytes in random-sized pieces.
                for (int pos = 0; pos < input.Length;)
                {
                    int n = Math.Min(input.Length - pos, rng.Next(1, 512));
                    await client.WriteAsync(input.AsMemory(pos, n));
                    pos += n;
                }
            }
            catch (Exception e) when (e is IOException or InvalidOperationException) { } // server already closed its side
            client.Dispose();
            var finished = await Task.WhenAny(serving, Task.Delay(TimeSpan.FromSeconds(20)));
            Assert.True(finished == serving, $"seed {seed} iteration {iterations}: server hung on input {Convert.ToHexString(input)}");
            await serving; // rethrows anything unhandled
            try { await drain; } catch (Exception) { }
        }
        output.WriteLine($"seed {seed}: {iterations} sessions, {log.Entries.Count(e => e.EventId == 2005)} protocol violations, {log.Entries.Count(e => e.EventId == 2007)} reached transmission");
        Assert.DoesNotContain(log.Entries, e => e.EventId == 2009);
        Assert.Equal(0, server.ActiveConnections);

        var (a, b) = DuplexPipeStream.CreatePair();
        var last = server.ServeAsync(b);
        await using var c = await NbdClient.ConnectAsync(a, "f");
        Assert.Equal(0u, await c.WriteAsync(0, Pattern.Make(0, 4096, 1)));
        await c.DisconnectAsync();
        await last;
    }
}
