using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Time.Testing;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// The client holds back an acknowledgement that has nothing else to travel with for up to
/// <see cref="PushClientOptions.AckDelay"/>, so that one covers what arrives meanwhile (on long-polling the next poll
/// carries it instead); a send of its own takes the acknowledgement along at once, and a message whose sender waits
/// for its ack ("ackNow") is acknowledged at once. The client's clock is fake here: only an advance lets a held ack go.
/// </summary>
public class AckCoalescingTests
{
    /// <summary>Long enough that an ack sent at once would have arrived on loopback many times over.</summary>
    private static readonly TimeSpan s_wouldHaveArrived = TimeSpan.FromMilliseconds(300);

    /// <summary>A client on a clock that only the test moves, with <paramref name="ackDelay"/>, and its server-side session.</summary>
    private static async Task<(IPushChannel Client, PushSession Session, FakeTimeProvider Time)> ConnectAsync(
        PushTestServer server, string transport, TimeSpan? ackDelay)
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var client = await server.ConnectClientAsync(transport, o =>
        {
            o.TimeProvider = time;
            o.AckDelay = ackDelay;
        });
        return (client, (PushSession)server.Sessions.FindSession(client.SessionId!)!, time);
    }

    [Theory]
    [MemberData(nameof(Transports.HoldingAcks), MemberType = typeof(Transports))]
    public async Task Acks_wait_for_the_delay_and_one_covers_every_message_received_meanwhile(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: NoHeartbeats);
        var (client, session, time) = await ConnectAsync(server, transport, TimeSpan.FromSeconds(1));

        // Sent without waiting for the ack (as broadcasts are). The first message starts the hold; the others arrive
        // while it lasts, and their acks must ride on the held one.
        await SendUnawaitedAsync(server, client, "a");
        Assert.Equal("a", Assert.Single(await client.ReadAsync(1)).GetString());
        await SendUnawaitedAsync(server, client, "b");
        await SendUnawaitedAsync(server, client, "c");

        Assert.Equal(["b", "c"], (await client.ReadAsync(2)).Select(m => m.GetString()));

        // Received, handed to the application, and not yet acknowledged: the ack waits for the delay.
        await AssertHeldAsync(session, unacknowledged: 3);

        time.Advance(TimeSpan.FromSeconds(1));
        await Eventually.TrueAsync(() => session.Engine.UnacknowledgedCount == 0);
    }

    [Theory]
    [MemberData(nameof(Transports.HoldingAcks), MemberType = typeof(Transports))]
    public async Task A_send_that_awaits_its_ack_is_acknowledged_at_once_whatever_the_delay(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: NoHeartbeats);
        var (client, session, _) = await ConnectAsync(server, transport, TimeSpan.FromSeconds(1));

        // The server's SendAsync waits for the ack, so its message says "ackNow": the client does not hold the ack
        // back, and the clock never has to move.
        var send = session.SendStringAsync("awaited").AsTask();
        Assert.Equal("awaited", Assert.Single(await client.ReadAsync(1)).GetString());
        await send.WaitAsync(TestTimeouts.Default);

        // A held ack (of a message nobody waits for) ends at once when such a message arrives.
        await SendHeldAsync(server, client, session, "fire and forget", unacknowledged: 1);
        var second = session.SendStringAsync("awaited too").AsTask();
        await client.ReadAsync(1);
        await second.WaitAsync(TestTimeouts.Default);
        Assert.Equal(0, session.Engine.UnacknowledgedCount);
    }

    [Theory]
    [MemberData(nameof(Transports.HoldingAcks), MemberType = typeof(Transports))]
    public async Task A_sender_whose_buffer_is_half_full_gets_its_acks_at_once(string transport)
    {
        // With a buffer of 4 unacknowledged messages, a held ack would stall a sender that waits for room: from
        // half full on, the server's messages ask for their acks at once.
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            NoHeartbeats(o);
            o.MaxBufferedMessagesPerSession = 4;
        });
        var (client, session, _) = await ConnectAsync(server, transport, TimeSpan.FromSeconds(1));

        await SendHeldAsync(server, client, session, "1", unacknowledged: 1);

        // Two unacknowledged make it half full: the one sent then asks for the ack, which covers both.
        await SendUnawaitedAsync(server, client, "2");
        await client.ReadAsync(1);
        await Eventually.TrueAsync(() => session.Engine.UnacknowledgedCount == 0);
    }

    [Theory]
    [MemberData(nameof(Transports.HoldingAcks), MemberType = typeof(Transports))]
    public async Task A_send_from_the_client_carries_a_held_ack_at_once(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: NoHeartbeats);
        var (client, session, _) = await ConnectAsync(server, transport, TimeSpan.FromSeconds(1));

        await SendHeldAsync(server, client, session, "to the client", unacknowledged: 1);

        // No clock advance: the ack goes with the client's own message.
        await client.SendStringAsync("to the server").AsTask().WaitAsync(TestTimeouts.Default);
        await Eventually.TrueAsync(() => session.Engine.UnacknowledgedCount == 0);
    }

    [Theory]
    [MemberData(nameof(Transports.HoldingAcks), MemberType = typeof(Transports))]
    public async Task By_default_a_held_ack_waits_100_ms_on_WebSocket_and_SSE_alike(string transport)
    {
        // A default of a few milliseconds on WebSocket made a steady stream cost both processes a wake-up for every
        // third message (see WebSocketPushTransport.DefaultAckDelay); every transport now holds for 100 ms.
        await using var server = await PushTestServer.StartAsync(options: NoHeartbeats);
        var (client, session, time) = await ConnectAsync(server, transport, ackDelay: null);

        // Held (the hold, and its timer on the fake clock, has started by then), and still held 1 ms short of 100 ms.
        await SendHeldAsync(server, client, session, "a", unacknowledged: 1);
        time.Advance(TimeSpan.FromMilliseconds(99));
        await AssertHeldAsync(session, unacknowledged: 1);

        time.Advance(TimeSpan.FromMilliseconds(1));
        await Eventually.TrueAsync(() => session.Engine.UnacknowledgedCount == 0);
    }

    [Theory]
    [MemberData(nameof(Transports.HoldingAcks), MemberType = typeof(Transports))]
    public async Task A_held_ack_goes_at_once_when_it_covers_1024_messages(string transport)
    {
        // A fast stream is acknowledged by count as well as by time: the sender's buffer does not keep a whole AckDelay
        // of it. The clock never moves, so only the count can let these acks go: 1,023 stay held, the 1,024th ends it.
        await using var server = await PushTestServer.StartAsync(options: NoHeartbeats);
        var (client, session, _) = await ConnectAsync(server, transport, TimeSpan.FromSeconds(1));

        for (var i = 0; i < 1023; i++)
        {
            await SendUnawaitedAsync(server, client, $"m{i}");
        }

        Assert.Equal(1023, (await client.ReadAsync(1023)).Count);
        await AssertHeldAsync(session, unacknowledged: 1023);

        await SendUnawaitedAsync(server, client, "m1023");
        await client.ReadAsync(1);
        await Eventually.TrueAsync(() => session.Engine.UnacknowledgedCount == 0);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task With_AckDelay_zero_every_received_batch_is_acknowledged_at_once(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: NoHeartbeats);
        var (client, session, _) = await ConnectAsync(server, transport, TimeSpan.Zero);

        // The clock never moves: the acknowledgement cannot be waiting for it.
        var send = session.SendStringAsync("now").AsTask();
        await client.ReadAsync(1);
        await send.WaitAsync(TestTimeouts.Default);
    }

    [Fact]
    public async Task On_long_polling_a_poll_carries_the_ack_once_per_delay_and_no_POST_is_made()
    {
        var posts = 0;
        await using var server = await PushTestServer.StartAsync(options: NoHeartbeats, configureApp: app => app.Use(async (context, next) =>
        {
            if (HttpMethods.IsPost(context.Request.Method) && context.Request.Path.Value!.EndsWith("/send", StringComparison.Ordinal))
            {
                Interlocked.Increment(ref posts);
            }

            await next(context);
        }));
        var (client, session, _) = await ConnectAsync(server, "longpolling", TimeSpan.FromSeconds(1));

        // The clock never moves, nobody awaits these messages and the client sends nothing: a held ack would never go,
        // so the poll that followed the message carried it.
        await SendUnawaitedAsync(server, client, "a");
        Assert.Equal("a", Assert.Single(await client.ReadAsync(1)).GetString());
        await Eventually.TrueAsync(() => session.Engine.UnacknowledgedCount == 0);

        // Within the delay of that ack, the next polls carry none: the ack is held, as on the other transports.
        await SendHeldAsync(server, client, session, "b", unacknowledged: 1);
        Assert.Equal(0, Volatile.Read(ref posts));
    }

    /// <summary>Sends a message that nobody awaits the acknowledgement of (as broadcasts are): it carries no "ackNow".</summary>
    private static async Task SendUnawaitedAsync(PushTestServer server, IPushChannel client, string text) =>
        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString(text)).AsTask().WaitAsync(TestTimeouts.Default));

    /// <summary>
    /// Sends such a message, sees the client receive it, and checks that its ack is held back (<see cref="AssertHeldAsync"/>).
    /// </summary>
    private static async Task SendHeldAsync(PushTestServer server, IPushChannel client, PushSession session, string text, int unacknowledged)
    {
        await SendUnawaitedAsync(server, client, text);
        Assert.Equal(text, Assert.Single(await client.ReadAsync(1)).GetString());
        await AssertHeldAsync(session, unacknowledged);
    }

    /// <summary>
    /// Checks that the session's acks are held: after a time in which an ack sent at once would have arrived, it still
    /// has <paramref name="unacknowledged"/> unacknowledged messages.
    /// </summary>
    private static async Task AssertHeldAsync(PushSession session, int unacknowledged)
    {
        await Task.Delay(s_wouldHaveArrived);
        Assert.Equal(unacknowledged, session.Engine.UnacknowledgedCount);
    }

    /// <summary>No ping within a test's time: a pong would carry a held ack along and hide what is tested.</summary>
    private static void NoHeartbeats(PushKitServerOptions options)
    {
        options.HeartbeatInterval = TimeSpan.FromMinutes(10);
        options.HeartbeatTimeout = TimeSpan.FromMinutes(20);
    }
}
