using System.Text.Json;

namespace Tessera.Nbd.Tests;

/// <summary>Real third-party NBD clients against the server serving the in-memory reference export.</summary>
public class InteropTests
{
    private static string Uri(TestServer s, string export = "disk") => $"nbd://127.0.0.1:{s.Port}/{export}";

    private static string TempFile() => Path.Combine(Path.GetTempPath(), $"tessera-nbd-{Guid.NewGuid():N}.img");

    [Fact]
    public async Task QemuIoWritesReadsZeroesDiscardsAndFlushes()
    {
        // Proves qemu-io's pattern writes land in the model, read back verified, and write -z, discard and aio_write+aio_flush work.
        await using var s = await TestServer.StartAsync();
        var o = await Tool.RunOkAsync("qemu-io", "-f", "raw", Uri(s),
            "-c", "write -P 0xab 0 64k", "-c", "read -P 0xab 0 64k",
            "-c", "write -P 0x11 64k 64k", "-c", "write -z 64k 64k", "-c", "read -P 0 64k 64k",
            "-c", "write -P 0x22 128k 64k", "-c", "discard 128k 64k", "-c", "read -P 0 128k 64k",
            "-c", "aio_write -P 0xcd 1M 4k", "-c", "aio_flush", "-c", "read -P 0xcd 1M 4k");
        Assert.DoesNotContain("fail", o, StringComparison.OrdinalIgnoreCase);
        var model = s.Disk.Snapshot();
        Assert.All(model.AsSpan(0, 65536).ToArray(), b => Assert.Equal(0xab, b));
        Assert.All(model.AsSpan(65536, 2 * 65536).ToArray(), b => Assert.Equal(0, b));
        Assert.All(model.AsSpan(1 << 20, 4096).ToArray(), b => Assert.Equal(0xcd, b));
        Assert.True(s.Disk.IsHole(128 * 1024));
        Assert.True(s.Disk.Flushes >= 1);
    }

    [Fact]
    public async Task QemuIoOverTheUnixSocket()
    {
        // Proves a real client works over the unix socket listener too.
        string path = Path.Combine(Path.GetTempPath(), $"tessera-nbd-{Guid.NewGuid():N}.sock");
        await using var s = await TestServer.StartAsync(o => o.UnixSocketPath = path);
        var o = await Tool.RunOkAsync("qemu-io", "-f", "raw", $"nbd+unix:///disk?socket={path}",
            "-c", "write -P 0x3c 4k 8k", "-c", "read -P 0x3c 4k 8k");
        Assert.DoesNotContain("fail", o, StringComparison.OrdinalIgnoreCase);
        Assert.All(s.Disk.Snapshot().AsSpan(4096, 8192).ToArray(), b => Assert.Equal(0x3c, b));
    }

    [Fact]
    public async Task QemuIoPatternVerificationCatchesWrongData()
    {
        // Proves the qemu-io checks above can fail: reading a pattern that was not written is reported.
        await using var s = await TestServer.StartAsync();
        var (_, o, e) = await Tool.RunAsync("qemu-io", ["-f", "raw", Uri(s), "-c", "write -P 0x01 0 4k", "-c", "read -P 0x02 0 4k"]);
        Assert.Contains("Pattern verification failed", o + e);
    }

    [Fact]
    public async Task QemuImgInfoConvertCompareAndMap()
    {
        // Proves qemu-img sees the right size, converts a sparse image onto the export byte for byte, compares equal, and maps data and holes where they are.
        await using var s = await TestServer.StartAsync();
        var info = await Tool.RunOkAsync("qemu-img", "info", "-f", "raw", "--output=json", Uri(s));
        Assert.Equal(TestServer.DiskBytes, JsonDocument.Parse(info).RootElement.GetProperty("virtual-size").GetInt64());

        string file = TempFile();
        try
        {
            var image = new byte[TestServer.DiskBytes];
            Pattern.Make(0, 1 << 20, 7).CopyTo(image, 0);
            Pattern.Make(8 << 20, 3 << 20, 7).CopyTo(image, 8 << 20);
            await File.WriteAllBytesAsync(file, image);
            await Tool.RunOkAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", file, Uri(s));
            Assert.Equal(image, s.Disk.Snapshot());
            await Tool.RunOkAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", file, Uri(s));
            image[5 << 20] = 1;
            await File.WriteAllBytesAsync(file, image);
            var (diff, _, _) = await Tool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", file, Uri(s)]);
            Assert.Equal(1, diff);
        }
        finally { File.Delete(file); }

        var map = JsonDocument.Parse(await Tool.RunOkAsync("qemu-img", "map", "-f", "raw", "--output=json", Uri(s))).RootElement;
        bool DataAt(long offset) => map.EnumerateArray().First(e => e.GetProperty("start").GetInt64() <= offset
            && offset < e.GetProperty("start").GetInt64() + e.GetProperty("length").GetInt64()).GetProperty("data").GetBoolean();
        Assert.True(DataAt(0));
        Assert.False(DataAt(4 << 20));
        Assert.True(DataAt(9 << 20));
        Assert.False(DataAt(15 << 20));
    }

    [Fact]
    public async Task NbdinfoListsMapsAndReportsCapabilities()
    {
        // Proves nbdinfo --list sees every export, --map reports data and holes from block status, and --can reflects the flags.
        await using var s = await TestServer.StartAsync();
        var list = await Tool.RunOkAsync("nbdinfo", "--list", $"nbd://127.0.0.1:{s.Port}");
        foreach (var name in new[] { "disk", "ro", "nofast" }) Assert.Contains($"export=\"{name}\"", list);

        await using (var c = await s.ConnectAsync()) Assert.Equal(0u, await c.WriteAsync(2 << 20, new byte[65536]));
        var map = await Tool.RunOkAsync("nbdinfo", "--map", Uri(s));
        var lines = map.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split((char[])[' ', '\t'], StringSplitOptions.RemoveEmptyEntries)).ToList();
        Assert.Contains(lines, l => l[0] == "0" && l[1] == (2 << 20).ToString() && l[2] == "3");
        Assert.Contains(lines, l => l[0] == (2 << 20).ToString() && l[1] == "65536" && l[2] == "0");

        Assert.Equal(0, (await Tool.RunAsync("nbdinfo", ["--can", "flush", Uri(s)])).Exit);
        Assert.Equal(0, (await Tool.RunAsync("nbdinfo", ["--can", "fast-zero", Uri(s)])).Exit);
        Assert.Equal(0, (await Tool.RunAsync("nbdinfo", ["--can", "multi-conn", Uri(s)])).Exit);
        Assert.Equal(2, (await Tool.RunAsync("nbdinfo", ["--can", "write", Uri(s, "ro")])).Exit);
        Assert.Equal(2, (await Tool.RunAsync("nbdinfo", ["--can", "trim", Uri(s, "ro")])).Exit);
    }

    [Fact]
    public async Task NbdcopyCopiesIntoAndOutOfTheExport()
    {
        // Proves nbdcopy moves a self-describing image into the export and back out unchanged.
        await using var s = await TestServer.StartAsync();
        string src = TempFile(), dst = TempFile();
        try
        {
            var image = new byte[TestServer.DiskBytes];
            Pattern.Make(4096, 5 << 20, 3).CopyTo(image, 4096);
            await File.WriteAllBytesAsync(src, image);
            await Tool.RunOkAsync("nbdcopy", src, Uri(s));
            Assert.Equal(image, s.Disk.Snapshot());
            await Tool.RunOkAsync("nbdcopy", Uri(s), dst);
            Assert.Equal(image, await File.ReadAllBytesAsync(dst));
        }
        finally { File.Delete(src); File.Delete(dst); }
    }

    [Fact]
    public async Task FioVerifiesRandomWritesThroughItsNbdEngine()
    {
        // Proves fio's crc32c-verified random writes at queue depth 16 read back intact through libnbd.
        await using var s = await TestServer.StartAsync();
        var o = await Tool.RunOkAsync("fio", "--name=verify", "--ioengine=nbd", $"--uri={Uri(s)}", "--rw=randwrite", "--bs=4k",
            "--iodepth=16", "--size=4m", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--output-format=terse");
        Assert.True(s.Disk.Snapshot().AsSpan(0, 4 << 20).IndexOfAnyExcept((byte)0) >= 0);
        Assert.DoesNotContain("verify:", o);
    }

    private static async Task RunPythonAsync(TestServer s, string script)
    {
        string prologue = $"import nbd, errno, socket, struct\nPORT = {s.Port}\nURI = 'nbd://127.0.0.1:{s.Port}/'\n";
        var (exit, o, e) = await Tool.RunAsync("/usr/bin/python3", ["-c", prologue + script]);
        Assert.True(exit == 0 && o.Contains("DONE"), $"python exited {exit}:\n{o}\n{e}");
    }

    [Fact]
    public async Task LibnbdExportNameListAndUnknownOptions()
    {
        // Proves libnbd reads via plain EXPORT_NAME (no fixed newstyle), lists exports in option mode, survives STARTTLS refusal, and a raw unknown option gets ERR_UNSUP.
        await using var s = await TestServer.StartAsync();
        await using (var c = await s.ConnectAsync()) Assert.Equal(0u, await c.WriteAsync(0, Enumerable.Repeat((byte)0x5e, 512).ToArray()));
        await RunPythonAsync(s, """
h = nbd.NBD()
h.set_handshake_flags(0)
h.connect_uri(URI + 'disk')
assert h.get_protocol() == 'newstyle', h.get_protocol()
assert h.pread(512, 0) == b'\x5e' * 512
h.shutdown()

h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(URI)
names = []
h.opt_list(lambda n, d: names.append(n) or 0)
assert sorted(names) == ['disk', 'nofast', 'ro'], names
h.opt_abort()

h = nbd.NBD()
h.set_tls(nbd.TLS_ALLOW)
h.connect_uri(URI + 'disk')
assert not h.get_tls_negotiated()
assert h.get_size() == 16 * 1024 * 1024
h.shutdown()

s = socket.create_connection(('127.0.0.1', PORT))
def recv(n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b)); assert c; b += c
    return b
recv(18)
s.sendall(struct.pack('>I', 3))
s.sendall(struct.pack('>QII', 0x49484156454F5054, 0xbeef, 3) + b'abc')
magic, opt, typ, ln = struct.unpack('>QIII', recv(20))
assert (opt, typ) == (0xbeef, 0x80000001), (opt, typ)
s.sendall(struct.pack('>QII', 0x49484156454F5054, 3, 0))
magic, opt, typ, ln = struct.unpack('>QIII', recv(20))
assert (opt, typ) == (3, 2), (opt, typ)
print('DONE')
""");
    }

    [Fact]
    public async Task LibnbdMetaContextsReqOneDfAndFastZero()
    {
        // Proves libnbd lists and negotiates base:allocation, gets one extent with REQ_ONE, one chunk with DF, and ENOTSUP for FAST_ZERO where zeroing is slow.
        await using var s = await TestServer.StartAsync();
        await RunPythonAsync(s, """
h = nbd.NBD()
h.set_opt_mode(True)
h.add_meta_context('base:allocation')
h.connect_uri(URI + 'disk')
ctxs = []
h.opt_list_meta_context(lambda name: ctxs.append(name) or 0)
assert ctxs == ['base:allocation'], ctxs
h.opt_go()
assert h.can_meta_context('base:allocation')
h.pwrite(b'\x01' * 65536, 65536)
seen = []
def extent(ctx, offset, entries, err):
    seen.append((ctx, offset, list(entries)))
    return 0
h.block_status(200000, 1000, extent, nbd.CMD_FLAG_REQ_ONE)
assert len(seen) == 1 and len(seen[0][2]) == 2, seen
assert seen[0][2] == [65536 - 1000, 3], seen
seen.clear()
h.block_status(4 * 65536, 0, extent)
assert seen[0][2][:4] == [65536, 3, 65536, 0], seen

chunks = []
def chunk(buf, offset, status, err):
    chunks.append((offset, len(buf), status))
    return 0
buf = h.pread_structured(3 * 65536, 0, chunk)
assert any(c[2] == nbd.READ_HOLE for c in chunks), chunks
assert buf[65536:131072] == b'\x01' * 65536 and buf[:65536] == bytes(65536)
chunks.clear()
buf = h.pread_structured(3 * 65536, 0, chunk, nbd.CMD_FLAG_DF)
assert chunks == [(0, 3 * 65536, nbd.READ_DATA)], chunks
assert buf[65536:131072] == b'\x01' * 65536 and buf[:65536] == bytes(65536)
h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO)
h.shutdown()

h = nbd.NBD()
h.connect_uri(URI + 'nofast')
assert h.can_fast_zero()
try:
    h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO)
    raise SystemExit('FAST_ZERO should have failed')
except nbd.Error as e:
    assert e.errnum == errno.ENOTSUP, e
h.zero(65536, 0)
print('DONE')
""");
    }

    [Fact]
    public async Task LibnbdInvalidRequestsWithStrictModeOff()
    {
        // Proves requests libnbd would normally refuse locally reach the server and get the right errors: EINVAL out of range or unknown flags, EPERM on read-only.
        await using var s = await TestServer.StartAsync();
        await RunPythonAsync(s, """
def expect(err, fn):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == err, (e, err)
        return
    raise SystemExit('expected errno %d' % err)

h = nbd.NBD()
h.connect_uri(URI + 'disk')
h.set_strict_mode(0)
size = h.get_size()
expect(errno.EINVAL, lambda: h.pread(4096, size - 100))
expect(errno.EINVAL, lambda: h.pwrite(b'x' * 10, size))
expect(errno.EINVAL, lambda: h.trim(4096, size))
expect(errno.EINVAL, lambda: h.pread(512, 0, nbd.CMD_FLAG_REQ_ONE))
assert h.pread(512, 0) == bytes(512)
h.shutdown()

h = nbd.NBD()
h.connect_uri(URI + 'ro')
h.set_strict_mode(0)
assert h.is_read_only()
expect(errno.EPERM, lambda: h.pwrite(b'x' * 10, 0))
expect(errno.EPERM, lambda: h.zero(4096, 0))
print('DONE')
""");
    }
}
