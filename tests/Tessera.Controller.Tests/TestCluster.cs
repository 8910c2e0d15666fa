using Xunit;
using System.Threading.Channels;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging.Abstractions;
using Tessera.Core.Mapping;
using Tessera.Core.Protocol;

namespace Tessera.Controller.Tests;

/// <summary>A real controller on port 0 in a temporary directory, with an admin client and fake agents.</summary>
public sealed class TestCluster : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(15);

    private readonly List<FakeAgent> _agents = new();
    private GrpcChannel? _channel;

    private TestCluster(string dir, int leaseMs)
    {
        Directory = dir;
        LeaseMs = leaseMs;
    }

    public string Directory { get; }
    public int LeaseMs { get; }
    public ControllerHost Host { get; private set; } = null!;
    public Tessera.Core.Protocol.Admin.AdminClient Admin { get; private set; } = null!;

    /// <summary>Fake agents do not heartbeat unless a test makes them; the long default lease keeps a slow machine from fencing them.</summary>
    public static async Task<TestCluster> StartAsync(int leaseMs = 30_000, string? dir = null)
    {
        dir ??= Path.Combine(Path.GetTempPath(), "tessera-ctrl-" + Guid.NewGuid().ToString("N"));
        var cluster = new TestCluster(dir, leaseMs);
        await cluster.StartHostAsync();
        return cluster;
    }

    private async Task StartHostAsync()
    {
        Host = await ControllerHost.StartAsync(
            // Allocate-ahead off: most tests count exactly which segments a fault allocated; AllocateAheadTests turn it on.
            new ControllerOptions { DataDirectory = Path.Combine(Directory, "data"), ListenAddress = "127.0.0.1:0", LeaseMs = LeaseMs, HeartbeatIntervalMs = Math.Max(10, LeaseMs / 5), AllocateAheadSegments = 0 },
            NullLoggerFactory.Instance);
        _channel = GrpcChannel.ForAddress(Host.Url);
        Admin = new Tessera.Core.Protocol.Admin.AdminClient(_channel);
    }

    /// <summary>Stops the controller (agents see their streams end) and starts a new one on the same store.</summary>
    public async Task RestartAsync()
    {
        await StopHostAsync();
        await StartHostAsync();
    }

    private async Task StopHostAsync()
    {
        foreach (var a in _agents) await a.DisposeAsync();
        _agents.Clear();
        _channel?.Dispose();
        await Host.StopAsync();
    }

    public async Task<FakeAgent> ConnectAsync(string host, bool autoReply = true, ulong? incarnation = null)
    {
        var agent = new FakeAgent(GrpcChannel.ForAddress(Host.Url), host, autoReply, incarnation);
        _agents.Add(agent);
        await agent.RegisterAsync();
        return agent;
    }

    /// <summary>A file container pre-filled with a recognisable non-zero pattern, added to the pool.</summary>
    public async Task<ContainerView> AddGarbageContainerAsync(string name, long sizeBytes)
    {
        string path = Path.Combine(Directory, name + ".img");
        System.IO.Directory.CreateDirectory(Directory);
        var garbage = new byte[sizeBytes];
        Array.Fill(garbage, (byte)0xAB);
        await File.WriteAllBytesAsync(path, garbage);
        return await Admin.AddContainerAsync(new AddContainerRequest { Name = name, Uri = "file://" + path });
    }

    public async Task<DiskView> CreatePresentedDiskAsync(string name, long sizeBytes, params string[] hosts)
    {
        var disk = await Admin.CreateDiskAsync(new CreateDiskRequest { Name = name, SizeBytes = (ulong)sizeBytes });
        foreach (var h in hosts) await Admin.PresentDiskAsync(new PresentRequest { Disk = name, Host = h });
        return disk;
    }

    public async ValueTask DisposeAsync()
    {
        await StopHostAsync();
        try { System.IO.Directory.Delete(Directory, true); } catch (IOException) { }
    }
}

/// <summary>
/// A scripted agent: registers, records everything the controller sends in order, and (when asked) replies ok
/// to every command as soon as it arrives.
/// </summary>
public sealed class FakeAgent : IAsyncDisposable
{
    private readonly GrpcChannel _channel;
    private readonly AsyncDuplexStreamingCall<AgentMessage, ControllerMessage> _call;
    private readonly Channel<ControllerMessage> _received = Channel.CreateUnbounded<ControllerMessage>();
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly Task _reader;
    private long _nextFaultId;

    public FakeAgent(GrpcChannel channel, string host, bool autoReply, ulong? incarnation = null)
    {
        Incarnation = incarnation ?? (ulong)Random.Shared.NextInt64();
        _channel = channel;
        Host = host;
        AutoReply = autoReply;
        _call = new AgentChannel.AgentChannelClient(channel).Connect();
        _reader = Task.Run(ReadAsync);
    }

    public string Host { get; }
    public ulong Incarnation { get; }
    public bool AutoReply { get; set; }
    public Registered Registered { get; private set; } = null!;
    /// <summary>Completes with the status the stream ended with.</summary>
    public TaskCompletionSource<Status> Ended { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private async Task ReadAsync()
    {
        try
        {
            while (await _call.ResponseStream.MoveNext(CancellationToken.None))
            {
                var m = _call.ResponseStream.Current;
                if (AutoReply && m.Command is { } c) await ReplyAsync(c);
                await _received.Writer.WriteAsync(m);
            }
            Ended.TrySetResult(Status.DefaultSuccess);
        }
        catch (RpcException e)
        {
            Ended.TrySetResult(e.Status);
        }
        catch (Exception e)
        {
            Ended.TrySetResult(new Status(StatusCode.Unknown, e.Message));
        }
        _received.Writer.TryComplete();
    }

    public async Task RegisterAsync()
    {
        await SendAsync(new AgentMessage { Register = new Register { Host = Host, Incarnation = Incarnation, NbdAddress = "127.0.0.1:10809" } });
        var m = await NextAsync();
        Assert.Equal(ControllerMessage.BodyOneofCase.Registered, m.BodyCase);
        Registered = m.Registered;
    }

    public async Task SendAsync(AgentMessage message)
    {
        await _sendLock.WaitAsync();
        try { await _call.RequestStream.WriteAsync(message); }
        finally { _sendLock.Release(); }
    }

    public Task ReplyAsync(Command command, bool ok = true) =>
        SendAsync(new AgentMessage { Reply = new CommandReply { CommandId = command.CommandId, Ok = ok } });

    public async Task<ulong> FaultAsync(ulong diskId, ulong segment, bool write, ulong seenEntry = 1, bool ahead = false)
    {
        ulong id = (ulong)Interlocked.Increment(ref _nextFaultId);
        await SendAsync(new AgentMessage { Fault = new MapFault { FaultId = id, DiskId = diskId, Segment = segment, Write = write, SeenEntry = seenEntry, Ahead = ahead } });
        return id;
    }

    /// <summary>
    /// Faults a first write to <paramref name="segment"/> (an ahead-request when <paramref name="ahead"/>); returns the
    /// answer and the segments pushed Invalid before it (every push before the answer must be Invalid).
    /// </summary>
    public async Task<(FaultResponse Answer, HashSet<long> Pushed)> WriteFaultCollectingPushesAsync(ulong diskId, long segment, ulong seenEntry = 1, bool ahead = false)
    {
        ulong id = await FaultAsync(diskId, (ulong)segment, write: true, seenEntry, ahead);
        var pushed = new HashSet<long>();
        while (true)
        {
            var m = await NextAsync();
            if (m.FaultResponse is { } r && r.FaultId == id) return (r, pushed);
            if (m.Command?.SetEntries is { } set)
            {
                Assert.All(set.Entries, e => Assert.Equal(MapEntry.Invalid.Raw, e));
                for (ulong s = set.FirstSegment; s < set.FirstSegment + set.Count; s++) pushed.Add((long)s);
            }
        }
    }

    /// <summary>
    /// Sends a heartbeat every quarter lease until <paramref name="work"/> ends: a test that waits out a lease (a
    /// controller's first lease after a restart) must keep this session's own lease alive meanwhile, or the controller
    /// rightly ends the session first, on a loaded machine at the same moment.
    /// </summary>
    public async Task<T> KeepAliveWhile<T>(Task<T> work)
    {
        var period = TimeSpan.FromMilliseconds(Math.Max(10, Registered.LeaseMs / 4));
        while (!work.IsCompleted)
        {
            await SendAsync(new AgentMessage { Heartbeat = new Heartbeat { Sequence = (ulong)Interlocked.Increment(ref _nextHeartbeat) } });
            await Task.WhenAny(work, Task.Delay(period));
        }
        return await work;
    }

    private long _nextHeartbeat = 1 << 20;

    /// <summary>Faults and waits for the response to that fault (other messages are skipped).</summary>
    public async Task<FaultResponse> FaultAndWaitAsync(ulong diskId, ulong segment, bool write)
    {
        ulong id = await FaultAsync(diskId, segment, write);
        var m = await NextAsync(x => x.FaultResponse?.FaultId == id);
        return m.FaultResponse;
    }

    /// <summary>The next message (matching <paramref name="match"/>, skipping others), or a timeout failure.</summary>
    public async Task<ControllerMessage> NextAsync(Func<ControllerMessage, bool>? match = null, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TestCluster.Timeout);
        try
        {
            while (true)
            {
                var m = await _received.Reader.ReadAsync(cts.Token);
                if (match is null || match(m)) return m;
            }
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"agent {Host}: no expected message within {timeout ?? TestCluster.Timeout}");
        }
    }

    public bool TryPeek(out ControllerMessage? message) => _received.Reader.TryPeek(out message);

    public async ValueTask DisposeAsync()
    {
        try { await _call.RequestStream.CompleteAsync(); } catch (Exception) { }
        _call.Dispose();
        try { await _reader.WaitAsync(TimeSpan.FromSeconds(5)); } catch (Exception) { }
        _channel.Dispose();
    }
}
