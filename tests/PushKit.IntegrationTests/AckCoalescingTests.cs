using Microsoft.Extensions.Time.Testing;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// The client holds back an acknowledgement that has nothing else to travel with for up to
/// <see cref="PushClientOptions.AckDelay"/>, so that one covers what arrives meanwhile; a send of its own takes the
/// acknowledgement along at once. The client's clock is fake here: only an advance lets a held ack go.
/// </summary>
public class AckCoalescingTests
{
    /// <summary>Long enough that an ack sent at once would have arrived on loopback many times over.</summary>
    private static readonly TimeSpan s_wouldHaveArrived = TimeSpan.FromMilliseconds(300);

    /// <summary>A client on a clock that only the test moves, with <paramref name="ackDelay"/>, and its server-side session.</summary>
    private static async Task<(IPushChannel Client, PushSession Session, FakeTimeProvider Time)> ConnectAsync(
        PushTestServer server, string transport, TimeSpan ackDelay)
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
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Acks_wait_for_the_delay_and_one_covers_every_message_received_meanwhile(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var (client, session, time) = await ConnectAsync(server, transport, TimeSpan.FromSeconds(1));

        // The server's SendAsync completes when the client acknowledges. The first message starts the hold; the
        // others arrive while it lasts, and their acks must ride on the held one.
        var first = session.SendStringAsync("a").AsTask();
        Assert.Equal("a", Assert.Single(await client.ReadAsync(1)).GetString());
        var more = new[] { "b", "c" }.Select(text => session.SendStringAsync(text).AsTask()).ToArray();
        Assert.Equal(["b", "c"], (await client.ReadAsync(2)).Select(m => m.GetString()));
        var sends = more.Prepend(first).ToArray();

        // Received, handed to the application, and not yet acknowledged: the ack waits for the delay.
        await Task.WhenAny(Task.WhenAll(sends), Task.Delay(s_wouldHaveArrived));
        Assert.All(sends, send => Assert.False(send.IsCompleted));
        Assert.Equal(3, session.Engine.UnacknowledgedCount);

        time.Advance(TimeSpan.FromSeconds(1));
        await Task.WhenAll(sends).WaitAsync(TestTimeouts.Default);
        Assert.Equal(0, session.Engine.UnacknowledgedCount);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_send_from_the_client_carries_a_held_ack_at_once(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var (client, session, _) = await ConnectAsync(server, transport, TimeSpan.FromSeconds(1));

        var push = session.SendStringAsync("to the client").AsTask();
        await client.ReadAsync(1);
        await Task.WhenAny(push, Task.Delay(s_wouldHaveArrived));
        Assert.False(push.IsCompleted);

        // No clock advance: the ack goes with the client's own message.
        await client.SendStringAsync("to the server").AsTask().WaitAsync(TestTimeouts.Default);
        await push.WaitAsync(TestTimeouts.Default);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task With_AckDelay_zero_every_received_batch_is_acknowledged_at_once(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var (client, session, _) = await ConnectAsync(server, transport, TimeSpan.Zero);

        // The clock never moves: the acknowledgement cannot be waiting for it.
        var send = session.SendStringAsync("now").AsTask();
        await client.ReadAsync(1);
        await send.WaitAsync(TestTimeouts.Default);
    }
}
