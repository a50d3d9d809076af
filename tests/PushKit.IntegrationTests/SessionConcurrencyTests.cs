using System.Net;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Time.Testing;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// A session's connections racing each other and the application's handlers: the newest connection carries the
/// session, and an application's StateChanged handler that throws stops neither the session's end nor the host.
/// </summary>
public class SessionConcurrencyTests
{
    // How long a newer connection is given to attach, where it could, before the older one's start handler returns.
    // Nothing signals a connection that waits for its turn, so this is a bounded wait for a state that (correctly)
    // never comes; the test passes whatever it is, and it only needs to be long enough to catch the old behaviour.
    private static readonly TimeSpan s_attachChance = TimeSpan.FromMilliseconds(300);

    [Fact]
    public async Task An_older_websocket_still_in_OnSessionStarted_does_not_take_the_session_from_a_newer_one()
    {
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var collector = new Collector { HoldStart = hold };
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var (id, secret, _) = await server.NegotiateRawAsync();
        await using var older = await RawSocket.ConnectAsync(server.WebSocketUrl(id, secret), id, secret);
        await collector.Started.Task.WaitAsync(TestTimeouts.Default);
        var session = server.Sessions.FindSession(id)!;

        // The client comes again (its first connection looked dead to it) while the start handler still runs.
        await using var newer = await RawSocket.ConnectAsync(server.WebSocketUrl(id, secret), id, secret);
        await GiveAChanceToAttachAsync(session);
        hold.SetResult();

        // The newer connection carries the session: the older one is the one told it was superseded.
        Assert.Equal(4409, (await older.ReceiveCloseAsync().WaitAsync(TestTimeouts.Default)).Status);
        await newer.SendAsync("{\"type\":\"ping\"}");
        Assert.Contains("pong", await newer.ReceiveContainingAsync("pong"), StringComparison.Ordinal);
        await Eventually.TrueAsync(() => session.State == PushChannelState.Connected);
    }

    [Fact]
    public async Task An_older_long_polling_connection_still_in_OnSessionStarted_does_not_take_the_session_from_a_newer_one()
    {
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var collector = new Collector { HoldStart = hold };
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var (id, secret, _) = await server.NegotiateRawAsync();
        var poll = new Uri($"{server.BaseUrl}/poll?session={id}&secret={Uri.EscapeDataString(secret)}");
        var open = new Uri(poll + "&open=1");
        using (var first = await server.Http.GetAsync(open).WaitAsync(TestTimeouts.Default))
        {
            Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        }

        await collector.Started.Task.WaitAsync(TestTimeouts.Default);
        var session = server.Sessions.FindSession(id)!;

        // The client opens again (open=1, as after a lost connection) while the start handler still runs.
        using (var second = await server.Http.GetAsync(open).WaitAsync(TestTimeouts.Default))
        {
            Assert.Equal(HttpStatusCode.OK, second.StatusCode);
        }

        await GiveAChanceToAttachAsync(session);
        hold.SetResult();

        // The client's next poll goes to its new connection, which must not be told it was superseded (4409 is final).
        using (var send = await server.Http.PostAsync(new Uri($"{server.BaseUrl}/send?session={id}&secret={Uri.EscapeDataString(secret)}"), new StringContent("{\"type\":\"ping\"}")).WaitAsync(TestTimeouts.Default))
        {
            Assert.Equal(HttpStatusCode.NoContent, send.StatusCode);
        }

        using var answer = await server.Http.GetAsync(poll).WaitAsync(TestTimeouts.Default);
        var body = await answer.Content.ReadAsStringAsync();
        Assert.DoesNotContain("4409", body, StringComparison.Ordinal);
        Assert.Contains("pong", body, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_connection_replaced_before_it_took_over_does_not_supersede_the_one_that_replaced_it()
    {
        // Two opening polls at once: the second aborts the first before either has the session, and may reach the
        // session first. The first, already dead, must then not take the session from the live one.
        await using var server = await PushTestServer.StartAsync();
        var (id, secret, _) = await server.NegotiateRawAsync();
        await using var live = await RawSocket.ConnectAsync(server.WebSocketUrl(id, secret), id, secret);
        var session = (PushSession)server.Sessions.FindSession(id)!;
        await Eventually.TrueAsync(() => session.State == PushChannelState.Connected);

        var replaced = new PushKit.Server.Connections.LongPollingServerConnection(session.Engine.PeerMaxMessageBytes, TimeSpan.FromSeconds(1), TimeProvider.System);
        replaced.Abort();
        var end = await session.RunConnectionAsync(replaced, CancellationToken.None).WaitAsync(TestTimeouts.Default);

        Assert.Equal(PushKit.Delivery.ConnectionEndKind.Lost, end.Kind);
        await live.SendAsync("{\"type\":\"ping\"}");
        Assert.Contains("pong", await live.ReceiveContainingAsync("pong"), StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Connected, session.State);
        Assert.Equal("websocket", session.Transport);
    }

    [Fact]
    public async Task A_StateChanged_handler_that_throws_when_a_session_expires_stops_neither_the_expiry_nor_the_host()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var server = await PushTestServer.StartAsync(
            options: o => o.ResumeWindow = TimeSpan.FromSeconds(10),
            configureBuilder: b => b.Services.AddSingleton<TimeProvider>(time));
        var manager = server.Services.GetRequiredService<PushSessionManager>();
        var lifetime = server.Services.GetRequiredService<IHostApplicationLifetime>();
        var throwing = manager.Create(null, out _);
        throwing.StateChanged += (_, _) => throw new InvalidOperationException("The application's bug.");

        await Eventually.TrueAsync(() => Expired(throwing));
        Assert.Null(manager.Find(throwing.SessionId));
        Assert.True(throwing.Engine.IsClosed);

        // The sweep goes on: a later session expires too, and the host still runs.
        var other = manager.Create(null, out _);
        await Eventually.TrueAsync(() => Expired(other));
        Assert.False(lifetime.ApplicationStopping.IsCancellationRequested, "the host stopped");

        bool Expired(PushSession session)
        {
            time.Advance(TimeSpan.FromSeconds(1));
            return session.State == PushChannelState.Closed;
        }
    }

    private static async Task GiveAChanceToAttachAsync(IPushSession session)
    {
        using var chance = new CancellationTokenSource(s_attachChance);
        try
        {
            while (session.State != PushChannelState.Connected)
            {
                await Task.Delay(10, chance.Token);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }
}
