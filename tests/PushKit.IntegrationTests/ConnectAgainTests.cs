using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// A channel that went <see cref="PushChannelState.Disconnected"/> for good (the reconnect pipeline gave up, or a lost
/// connection with <see cref="PushClientOptions.AutoReconnect"/> off) can be connected again: a DI singleton must not
/// be dead for the rest of the process.
/// </summary>
public class ConnectAgainTests
{
    /// <summary>A WebSocket client through <paramref name="proxy"/> that does not reconnect by itself.</summary>
    private static Task<IPushChannel> ConnectWithoutAutoReconnectAsync(PushTestServer server, ChaosProxy proxy) =>
        server.ConnectClientAsync("websocket", o =>
        {
            o.Url = proxy.PushUrl;
            o.AutoReconnect = false;
        });

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task After_giving_up_ConnectAsync_starts_a_new_session_and_says_so(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        await using var proxy = new ChaosProxy(server.Root);
        var client = await server.ConnectClientAsync(transport, o =>
        {
            o.Url = proxy.PushUrl;
            o.MaxReconnectAttempts = 0;
            o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
            o.ConnectTimeout = TimeSpan.FromSeconds(3);
            o.TransportDetectionTimeout = TimeSpan.FromSeconds(2);
        });
        var firstSession = client.SessionId!;
        var firstReader = client.ReadAsync(1);
        await server.Sender.SendToSessionAsync(firstSession, PushMessage.FromString("one")).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("one", Assert.Single(await firstReader).GetString());

        // The network goes away and the one reconnect attempt fails: the channel gives up.
        proxy.RefuseNew = true;
        var gaveUp = client.NextStateAsync(PushChannelState.Disconnected);
        proxy.CutAll();
        Assert.Contains("gave up", (await gaveUp.WaitAsync(TestTimeouts.Default)).Reason, StringComparison.Ordinal);
        await Assert.ThrowsAsync<PushChannelClosedException>(() => client.SendStringAsync("lost").AsTask().WaitAsync(TestTimeouts.Default));

        // Connecting again works on the same channel, and the change to Connected says the session is a new one.
        proxy.RefuseNew = false;
        var connected = client.NextStateAsync(PushChannelState.Connected);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var reader = client.ReadAsync(1);
        var change = await connected.WaitAsync(TestTimeouts.Default);
        Assert.True(change.IsSessionReset);
        Assert.StartsWith("Not resumed:", change.Reason, StringComparison.Ordinal);
        Assert.NotEqual(firstSession, client.SessionId);
        Assert.Equal(PushChannelState.Connected, client.State);

        // Both directions work on the new session, read by a new ReadAllAsync.
        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("two")).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("two", Assert.Single(await reader).GetString());
        await client.SendStringAsync("three").AsTask().WaitAsync(TestTimeouts.Default);
        var atServer = await collector.TakeAsync(1);
        Assert.Equal("three", Assert.Single(atServer).GetString());

        // While connected, a second ConnectAsync is still refused: the channel reconnects by itself.
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("Connected", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task With_AutoReconnect_off_a_lost_connection_ends_the_reads_and_ConnectAsync_starts_again()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var client = await ConnectWithoutAutoReconnectAsync(server, proxy);
        var stream = client.ReadAllAsync();
        var reading = Task.Run(async () =>
        {
            await foreach (var _ in stream)
            {
            }
        });

        var lost = client.NextStateAsync(PushChannelState.Disconnected);
        proxy.CutAll();
        await lost.WaitAsync(TestTimeouts.Default);
        await reading.WaitAsync(TestTimeouts.Default);

        var connected = client.NextStateAsync(PushChannelState.Connected);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.True((await connected.WaitAsync(TestTimeouts.Default)).IsSessionReset);
        var received = client.ReadAsync(1);
        await server.Sender.BroadcastAsync(PushMessage.FromString("again")).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("again", Assert.Single(await received).GetString());
    }

    [Fact]
    public async Task What_was_received_before_the_channel_gave_up_is_read_then_or_after_connecting_again()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var client = await ConnectWithoutAutoReconnectAsync(server, proxy);
        var session = server.Sessions.FindSession(client.SessionId!)!;

        // Each send completes when the client has acknowledged it: it is in the client's receive queue, unread.
        for (var i = 0; i < 4; i++)
        {
            await session.SendAsync(PushMessage.FromString("m" + i)).AsTask().WaitAsync(TestTimeouts.Default);
        }

        var lost = client.NextStateAsync(PushChannelState.Disconnected);
        proxy.CutAll();
        await lost.WaitAsync(TestTimeouts.Default);

        // A reader that starts now reads some of them, and its enumeration ends when the queue is empty...
        var some = await client.ReadAsync(2);
        Assert.Equal(["m0", "m1"], some.Select(m => m.GetString()));

        // ...and after connecting again, the rest come first, then the new session's messages.
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var reader = client.ReadAsync(3);
        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("new")).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(["m2", "m3", "new"], (await reader).Select(m => m.GetString()));
    }

    [Fact]
    public async Task Two_ConnectAsync_calls_at_once_connect_once_and_the_other_is_told_why()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = server.CreateClient();
        var first = client.ConnectAsync();
        var second = await Assert.ThrowsAsync<InvalidOperationException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("in progress", second.Message, StringComparison.Ordinal);
        await first.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Fact]
    public async Task A_StateChanged_handler_that_throws_does_not_cost_the_channel_its_connection()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = server.CreateClient();
        client.StateChanged += (_, e) => throw new InvalidOperationException("the application's bug, on " + e.CurrentState);

        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Connected, client.State);
        await client.SendStringAsync("works").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("works", Assert.Single(await collector.TakeAsync(1)).GetString());
        await Assert.ThrowsAsync<InvalidOperationException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
    }
}
