using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// A session the server application closes while its client is away (between connections, or cut off before the
/// close arrived) keeps its close for the rest of the resume window: the client that comes back hears 1000 instead of
/// finding no session and quietly starting a new one, as if the server had never closed it. (4429 is not held.)
/// </summary>
public class HeldCloseTests
{
    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_client_that_comes_back_after_the_server_closed_its_session_is_closed_not_given_a_new_session(string transport)
    {
        var time = new FakeTimeProvider();
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(
            push => push.AddCollector(collector),
            o => o.ResumeWindow = TimeSpan.FromMinutes(2),
            configureBuilder: b => b.Services.AddSingleton<TimeProvider>(time));
        await using var proxy = new ChaosProxy(server.Root);
        var client = await ConnectThroughAsync(server, proxy, transport);
        var sessionId = client.SessionId!;
        var session = server.Sessions.FindSession(sessionId)!;
        var manager = server.Services.GetRequiredService<PushSessionManager>();

        // The client is away: its connection is cut and it cannot get back yet.
        await SendAwayAsync(client, proxy, session, time);

        // Meanwhile the application closes the session (a user logged out elsewhere, an administrator's kick).
        await session.CloseAsync();
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        Assert.Null(server.Sessions.FindSession(sessionId));

        // The client ends up Closed with 1000, on its own session; it used to get 404, start a new session and report
        // Connected with IsSessionReset.
        var outcome = client.NextChangeAsync(e => e.CurrentState == PushChannelState.Closed || e.IsSessionReset);
        proxy.RefuseNew = false;

        var end = await outcome.WaitAsync(TestTimeouts.Default);
        Assert.False(end.IsSessionReset, "the client started a new session: " + end.Reason);
        Assert.Equal(PushChannelState.Closed, end.CurrentState);
        Assert.Equal(PushCloseCode.Normal, end.CloseCode);
        Assert.Equal(sessionId, client.SessionId);

        // Once the client has answered the close (a WebSocket's close handshake), the session is gone: a later attempt
        // gets 404. On SSE and long-polling no answer comes, and the close is held for the rest of the window.
        if (transport == "websocket")
        {
            await Eventually.TrueAsync(() => manager.Find(sessionId) is null);
            Assert.Empty(manager.All());
        }
        else
        {
            Assert.Same(session, manager.Find(sessionId));
        }
    }

    [Fact]
    public async Task A_close_lost_on_the_way_is_held_for_the_returning_client()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector), o => o.ResumeWindow = TimeSpan.FromMinutes(2));
        await using var proxy = new ChaosProxy(server.Root);
        var client = await ConnectThroughAsync(server, proxy, "websocket");
        var sessionId = client.SessionId!;
        var session = (PushSession)server.Sessions.FindSession(sessionId)!;

        // The close frame never reaches the client: the connection is cut (3 s later) without the client's answer.
        proxy.BlackHole = true;
        await session.CloseAsync();
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        await Eventually.TrueAsync(() => session.CurrentRun is null);

        var outcome = client.NextChangeAsync(e => e.CurrentState == PushChannelState.Closed || e.IsSessionReset);
        proxy.BlackHole = false;
        proxy.CutAll();

        var end = await outcome.WaitAsync(TestTimeouts.Default);
        Assert.False(end.IsSessionReset, "the client started a new session: " + end.Reason);
        Assert.Equal(PushCloseCode.Normal, end.CloseCode);
    }

    [Fact]
    public async Task A_held_close_is_forgotten_when_the_resume_window_has_passed()
    {
        var time = new FakeTimeProvider();
        await using var server = await PushTestServer.StartAsync(
            options: o => o.ResumeWindow = TimeSpan.FromMinutes(2),
            configureBuilder: b => b.Services.AddSingleton<TimeProvider>(time));
        var manager = server.Services.GetRequiredService<PushSessionManager>();
        var (sessionId, _, _) = await server.NegotiateRawAsync();
        var session = manager.Find(sessionId)!;

        await session.CloseAsync();

        // Held, but hidden from the application: it has ended.
        Assert.Same(session, manager.Find(sessionId));
        Assert.Null(server.Sessions.FindSession(sessionId));
        Assert.Empty(server.Sessions.GetSessions());
        Assert.Equal(0, await server.Sender.BroadcastAsync(PushMessage.FromString("to nobody")).AsTask().WaitAsync(TestTimeouts.Default));

        time.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(0, manager.ExpireIdleSessions());
        Assert.Same(session, manager.Find(sessionId));

        time.Advance(TimeSpan.FromMinutes(1) + TimeSpan.FromSeconds(1));
        manager.ExpireIdleSessions();
        Assert.Null(manager.Find(sessionId));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_client_whose_session_ended_as_a_slow_consumer_while_it_was_away_starts_a_new_session(string transport)
    {
        // 4429 is not held: the client must start a new session either way, and on SSE and long-polling (where no
        // answer to a close comes) a held 4429 would meet every resume attempt, 5 s apart, for the whole window.
        var time = new FakeTimeProvider();
        await using var server = await PushTestServer.StartAsync(
            options: o =>
            {
                o.MaxBufferedMessagesPerSession = 2;
                o.BufferFullPolicy = PushBufferFullPolicy.Disconnect;
            },
            configureBuilder: b => b.Services.AddSingleton<TimeProvider>(time));
        await using var proxy = new ChaosProxy(server.Root);
        var client = await ConnectThroughAsync(server, proxy, transport);
        var sessionId = client.SessionId!;
        var session = server.Sessions.FindSession(sessionId)!;
        var manager = server.Services.GetRequiredService<PushSessionManager>();

        await SendAwayAsync(client, proxy, session, time);

        // Away, the session's buffer fills up and it ends as a slow consumer: nothing is kept of it.
        for (var i = 0; i < 3; i++)
        {
            await server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString("m" + i)).AsTask().WaitAsync(TestTimeouts.Default);
        }

        Assert.Equal(PushChannelState.Closed, session.State);
        Assert.Null(manager.Find(sessionId));

        var reset = client.NextStateAsync(PushChannelState.Connected);
        proxy.RefuseNew = false;

        var connected = await reset.WaitAsync(TestTimeouts.Default);
        Assert.True(connected.IsSessionReset);
        Assert.NotEqual(sessionId, client.SessionId);
    }

    [Fact]
    public async Task A_client_that_closed_its_own_session_leaves_nothing_held()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var manager = server.Services.GetRequiredService<PushSessionManager>();
        var client = await server.ConnectClientAsync("websocket");
        var sessionId = client.SessionId!;

        await client.CloseAsync().WaitAsync(TestTimeouts.Default);

        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        await Eventually.TrueAsync(() => manager.Find(sessionId) is null);
    }

    /// <summary>Connects a client over one transport through <paramref name="proxy"/>, reconnecting quickly.</summary>
    private static Task<IPushChannel> ConnectThroughAsync(PushTestServer server, ChaosProxy proxy, string transport) =>
        server.ConnectClientAsync(transport, o =>
        {
            o.Url = proxy.PushUrl;
            o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
            o.MaxReconnectDelay = TimeSpan.FromMilliseconds(200);
            o.ConnectTimeout = TimeSpan.FromSeconds(3);
        });

    /// <summary>
    /// The client is away: its connection is cut, it cannot get back until the proxy lets it, and the server has
    /// noticed (at once for a reset socket; on long-polling when polls stop coming, which the fake clock hurries).
    /// </summary>
    private static async Task SendAwayAsync(IPushChannel client, ChaosProxy proxy, IPushSession session, FakeTimeProvider time)
    {
        proxy.RefuseNew = true;
        var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
        proxy.CutAll();
        await reconnecting.WaitAsync(TestTimeouts.Default);
        if (session.State != PushChannelState.Disconnected)
        {
            time.Run(TimeSpan.FromSeconds(40));
        }

        await Eventually.TrueAsync(() => session.State == PushChannelState.Disconnected);
    }
}
