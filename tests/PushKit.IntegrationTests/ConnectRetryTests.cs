using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// A connect that negotiates a session and then cannot open any transport keeps that session for its next attempt: a
/// client that keeps failing (a proxy that blocks WebSockets, a DI host retrying at start-up) holds one session on the
/// server, not one per attempt.
/// </summary>
public class ConnectRetryTests
{
    [Fact]
    public async Task A_client_that_keeps_failing_to_open_a_transport_holds_one_session_on_the_server()
    {
        var blocked = new StrongBox<bool>(true);
        await using var server = await PushTestServer.StartAsync(configureApp: app => BlockWebSockets(app, blocked));
        var manager = server.Services.GetRequiredService<PushSessionManager>();
        var client = server.CreateClient(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName("websocket"));
        });

        for (var attempt = 0; attempt < 3; attempt++)
        {
            await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        }

        var kept = Assert.Single(manager.All());

        Volatile.Write(ref blocked.Value, false);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(kept.SessionId, client.SessionId);
        Assert.Single(manager.All());
    }

    [Fact]
    public async Task When_the_kept_session_has_expired_the_next_attempt_negotiates_a_new_one_at_once()
    {
        var time = new FakeTimeProvider();
        var blocked = new StrongBox<bool>(true);
        await using var server = await PushTestServer.StartAsync(
            options: o => o.ResumeWindow = TimeSpan.FromMinutes(2),
            configureBuilder: b => b.Services.AddSingleton<TimeProvider>(time),
            configureApp: app => BlockWebSockets(app, blocked));
        var manager = server.Services.GetRequiredService<PushSessionManager>();
        var client = server.CreateClient(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName("websocket"));
        });
        await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        var kept = Assert.Single(manager.All()).SessionId;

        time.Advance(TimeSpan.FromMinutes(3));
        manager.ExpireIdleSessions();
        Assert.Empty(manager.All());

        Volatile.Write(ref blocked.Value, false);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.NotEqual(kept, client.SessionId);
        Assert.Equal(client.SessionId, Assert.Single(manager.All()).SessionId);
    }

    private static void BlockWebSockets(WebApplication app, StrongBox<bool> blocked) =>
        app.Use(async (context, next) =>
        {
            if (Volatile.Read(ref blocked.Value) && context.Request.Path.Value!.EndsWith("/ws", StringComparison.Ordinal))
            {
                context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                return;
            }

            await next(context);
        });
}
