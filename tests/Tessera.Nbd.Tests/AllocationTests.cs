using System.Buffers.Binary;

namespace Tessera.Nbd.Tests;

[CollectionDefinition(nameof(AllocationTests), DisableParallelization = true)]
public class AllocationCollection;

[Collection(nameof(AllocationTests))]
public class AllocationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public async Task SteadyStateRequestsAllocateAlmostNothingOnTheServer()
    {
        // Proves the request path is allocation-free in steady state: pipelined 4 KiB reads and writes cost well under one small object per request, process-wide.
        await using var s = await TestServer.StartAsync();
        await using var raw = await RawNbd.ConnectAsync(s.Port);
        await raw.GreetAsync();
        await raw.SendOptionAsync(NbdWire.OptGo, RawNbd.NameAndInfos("disk"));
        await raw.ReadRepliesAsync(NbdWire.OptGo);
        const int batch = 32, rounds = 200;
        var requests = new byte[batch * (28 + 28 + 4096)];
        int at = 0;
        for (int i = 0; i < batch; i++)
        {
            RawNbd.Request(NbdWire.CmdWrite, 0, (ulong)i, (ulong)i * 4096, 4096).CopyTo(requests, at);
            at += 28 + 4096;
            RawNbd.Request(NbdWire.CmdRead, 0, (ulong)(i + batch), (ulong)i * 4096, 4096).CopyTo(requests, at);
            at += 28;
        }
        var replies = new byte[batch * (16 + 16 + 4096)];
        async Task Round()
        {
            await raw.Stream.WriteAsync(requests);
            await raw.Stream.ReadExactlyAsync(replies);
        }
        for (int i = 0; i < 50; i++) await Round(); // warm up pools and JIT
        using var listener = new AllocListener();
        long before = GC.GetTotalAllocatedBytes(precise: true);
        for (int i = 0; i < rounds; i++) await Round();
        foreach (var kv in listener.Types.OrderByDescending(k => k.Value).Take(10)) output.WriteLine($"{kv.Key}: {kv.Value}");
        long perRequest = (GC.GetTotalAllocatedBytes(precise: true) - before) / (rounds * batch * 2);
        output.WriteLine($"{perRequest} bytes allocated per request (server + test client, process-wide)");
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(replies.AsSpan(4)));
        Assert.True(perRequest < 64, $"{perRequest} bytes per request");
    }
}

sealed class AllocListener : System.Diagnostics.Tracing.EventListener
{
    public readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> Types = new();
    protected override void OnEventSourceCreated(System.Diagnostics.Tracing.EventSource source)
    {
        if (source.Name == "Microsoft-Windows-DotNETRuntime") EnableEvents(source, System.Diagnostics.Tracing.EventLevel.Verbose, (System.Diagnostics.Tracing.EventKeywords)1);
    }
    protected override void OnEventWritten(System.Diagnostics.Tracing.EventWrittenEventArgs e)
    {
        if (e.EventName?.StartsWith("GCAllocationTick") == true && e.Payload != null)
        {
            int i = e.PayloadNames!.IndexOf("TypeName");
            if (i >= 0) Types.AddOrUpdate((string)e.Payload[i]!, 1, (_, v) => v + 1);
        }
    }
}
