using System.Buffers.Binary;
using System.Text;

namespace Tessera.Nbd.Tests;

/// <summary>Each test breaks the protocol on one connection and then proves a second client is still served.</summary>
public class HostileClientTests
{
    private const int Violation = 2005;

    private static async Task<RawNbd> InTransmissionAsync(TestServer s)
    {
        var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.GreetAsync();
        await raw.SendOptionAsync(NbdWire.OptGo, RawNbd.NameAndInfos("disk"));
        Assert.Equal(NbdWire.RepAck, (await raw.ReadRepliesAsync(NbdWire.OptGo))[^1].Type);
        return raw;
    }

    [Fact]
    public async Task BadOptionMagicDropsOnlyThatClient()
    {
        // Proves a wrong option magic ends that connection with a logged reason while others are served.
        await using var s = await TestServer.StartAsync();
        await using var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.GreetAsync();
        await raw.Stream.WriteAsync(new byte[16]);
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(Violation, "bad option magic");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task UnknownClientFlagsDropTheClient()
    {
        // Proves client flags the server does not know end the connection, as the spec requires.
        await using var s = await TestServer.StartAsync();
        await using var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.GreetAsync(0x80);
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(Violation, "unknown client flags");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task BadRequestMagicDropsOnlyThatClient()
    {
        // Proves a request with a wrong magic ends that connection with a logged reason.
        await using var s = await TestServer.StartAsync();
        await using var raw = await InTransmissionAsync(s);
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdRead, 0, 1, 0, 512, magic: 0xdeadbeef));
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(Violation, "bad request magic");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task TruncatedHeaderIsLoggedAndOthersContinue()
    {
        // Proves a connection that closes in the middle of a request header is reported as such.
        await using var s = await TestServer.StartAsync();
        var raw = await InTransmissionAsync(s);
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdRead, 0, 1, 0, 512).AsMemory(0, 11));
        await raw.DisposeAsync();
        await s.Log.WaitForAsync(Violation, "request header");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task OversizedWriteDropsTheConnectionWithoutReadingThePayload()
    {
        // Proves a write announcing more than the maximum block size ends the connection instead of buffering it.
        await using var s = await TestServer.StartAsync();
        await using var raw = await InTransmissionAsync(s);
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdWrite, 0, 1, 0, 64 * 1024 * 1024));
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(Violation, "exceeds the maximum");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task ShortWritePayloadDoesNotReachTheExport()
    {
        // Proves a write whose payload ends early is dropped (never half-applied) and logged.
        await using var s = await TestServer.StartAsync();
        var raw = await InTransmissionAsync(s);
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdWrite, 0, 1, 0, 4096));
        await raw.Stream.WriteAsync(Enumerable.Repeat((byte)0x77, 100).ToArray());
        await raw.DisposeAsync();
        await s.Log.WaitForAsync(Violation, "write payload");
        Assert.Equal(0, s.Disk.Snapshot()[0]);
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task DisconnectMidRequestLeavesOtherClientsWritesIntact()
    {
        // Proves a client vanishing with a request in flight does not disturb another client's concurrent writes.
        await using var s = await TestServer.StartAsync();
        await using var good = await s.ConnectAsync();
        var goodWrites = Enumerable.Range(0, 64).Select(i => good.WriteAsync(i * 65536L, Pattern.Make(i * 65536L, 65536, 11)).AsTask()).ToArray();
        var raw = await InTransmissionAsync(s);
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdRead, 0, 1, 0, 1 << 20));
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdWrite, 0, 2, 8 << 20, 1 << 20));
        await raw.Stream.WriteAsync(new byte[1000]);
        await raw.DisposeAsync();
        Assert.All(await Task.WhenAll(goodWrites), e => Assert.Equal(0u, e));
        var model = s.Disk.Snapshot();
        for (int i = 0; i < 64; i++) Assert.Equal(Pattern.Make(i * 65536L, 65536, 11), model.AsSpan(i * 65536, 65536).ToArray());
        await s.Log.WaitForAsync(2004, "connection 2 closed");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task TooManyOptionsEndTheHandshake()
    {
        // Proves the option count bound: the option past the limit ends the connection.
        await using var s = await TestServer.StartAsync(o => o.MaxOptionsPerHandshake = 8);
        await using var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.GreetAsync();
        for (int i = 0; i < 8; i++)
        {
            await raw.SendOptionAsync(0x4242, []);
            Assert.Equal(NbdWire.RepErrUnsup, (await raw.ReadRepliesAsync(0x4242))[^1].Type);
        }
        await raw.SendOptionAsync(0x4242, []);
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(Violation, "more than 8 options");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task OversizedOptionEndsTheHandshakeWithoutReadingIt()
    {
        // Proves an option announcing more data than the option length bound ends the connection.
        await using var s = await TestServer.StartAsync();
        await using var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.GreetAsync();
        await raw.SendOptionAsync(NbdWire.OptInfo, [], announcedLength: 100_000_000);
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(Violation, "more than the limit");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task TooLongStringsAreRefused()
    {
        // Proves names over 4096 bytes get ERR_TOO_BIG in INFO/GO/meta options, and end the connection in EXPORT_NAME.
        await using var s = await TestServer.StartAsync();
        await using var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.GreetAsync();
        string longName = new('x', 5000);
        await raw.SendOptionAsync(NbdWire.OptGo, RawNbd.NameAndInfos(longName));
        Assert.Equal(NbdWire.RepErrTooBig, (await raw.ReadRepliesAsync(NbdWire.OptGo))[^1].Type);
        await raw.SendOptionAsync(NbdWire.OptListMetaContext, RawNbd.MetaQuery("disk", longName));
        Assert.Equal(NbdWire.RepErrTooBig, (await raw.ReadRepliesAsync(NbdWire.OptListMetaContext))[^1].Type);
        await raw.SendOptionAsync(NbdWire.OptExportName, Encoding.UTF8.GetBytes(longName));
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(Violation, "export name too long");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task SilentClientTimesOutInTheHandshake()
    {
        // Proves the handshake time bound: a client that never speaks is disconnected after the configured timeout.
        await using var s = await TestServer.StartAsync(o => o.HandshakeTimeout = TimeSpan.FromMilliseconds(300));
        await using var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.ReadExactAsync(18);
        Assert.True(await raw.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(2006, "timed out");
        await s.AssertStillServesAsync();
    }

    [Fact]
    public async Task ConnectionsBeyondTheLimitAreRefusedAndLogged()
    {
        // Proves the connection bound: an extra connection is closed with a log line, and a slot freed is usable again.
        await using var s = await TestServer.StartAsync(o => o.MaxConnections = 2);
        var a = await s.ConnectAsync();
        await using var b = await s.ConnectAsync();
        await using var extra = await RawNbd.ConnectAsync(s.Port);
        Assert.True(await extra.ClosedByPeerAsync(TimeSpan.FromSeconds(20)));
        await s.Log.WaitForAsync(2002, "refused");
        await a.DisconnectAsync();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (s.Server.ActiveConnections > 1 && DateTime.UtcNow < deadline) await Task.Delay(10);
        await s.AssertStillServesAsync();
        Assert.Equal(0u, await b.ReadAsync(0, new byte[512]));
    }

    [Fact]
    public async Task ClientThatNeverReadsRepliesIsCutOffAndStopStillEnds()
    {
        // Proves a client that floods reads but never reads the replies is dropped after the send timeout, others are served, and StopAsync still ends.
        await using var s = await TestServer.StartAsync(o =>
        {
            o.SendTimeout = TimeSpan.FromMilliseconds(500);
            o.ShutdownGracePeriod = TimeSpan.FromMilliseconds(200);
        });
        await using var raw = await InTransmissionAsync(s);
        var flood = new byte[64 * 28];
        for (int i = 0; i < 64; i++) RawNbd.Request(NbdWire.CmdRead, 0, (ulong)i, 0, 1 << 20).CopyTo(flood, i * 28);
        await raw.Stream.WriteAsync(flood);
        await s.Log.WaitForAsync(2004, "connection 1 closed");
        await s.AssertStillServesAsync();
        await s.Server.StopAsync().WaitAsync(TimeSpan.FromSeconds(20));
    }

    [Fact]
    public async Task OversizedReadIsAnsweredEinvalWithoutDroppingTheConnection()
    {
        // Proves a read above the maximum block size (no payload to skip) gets EINVAL and the connection stays usable.
        await using var s = await TestServer.StartAsync();
        await using var raw = await InTransmissionAsync(s);
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdRead, 0, 3, 0, 33 * 1024 * 1024));
        var r = await raw.ReadExactAsync(16);
        Assert.Equal(NbdErrno.EINVAL, BinaryPrimitives.ReadUInt32BigEndian(r.AsSpan(4)));
        await raw.Stream.WriteAsync(RawNbd.Request(NbdWire.CmdRead, 0, 4, 0, 8));
        r = await raw.ReadExactAsync(24);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(r.AsSpan(4)));
        Assert.Equal(4UL, BinaryPrimitives.ReadUInt64BigEndian(r.AsSpan(8)));
    }
}
