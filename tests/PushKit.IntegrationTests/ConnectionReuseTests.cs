using System.Collections.Concurrent;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// A WebSocket client costs the server one TCP connection: the handshake reuses the connection the negotiate request
/// opened (and so carries its cookies), rather than leaving that one idle on the server.
/// </summary>
public class ConnectionReuseTests
{
    private sealed record Seen(string Path, string ConnectionId, string Cookie);

    private static Task<PushTestServer> StartRecordingAsync(ConcurrentQueue<Seen> seen) =>
        PushTestServer.StartAsync(configureApp: app => app.Use(async (context, next) =>
        {
            seen.Enqueue(new Seen(context.Request.Path, context.Connection.Id, context.Request.Headers.Cookie.ToString()));
            if (context.Request.Path.StartsWithSegments("/push/negotiate", StringComparison.Ordinal))
            {
                // As a load balancer's affinity cookie would be.
                context.Response.Cookies.Append("node", "a");
            }

            await next(context);
        }));

    [Fact]
    public async Task The_WebSocket_handshake_reuses_the_negotiate_connection_and_carries_its_cookies()
    {
        var seen = new ConcurrentQueue<Seen>();
        await using var server = await StartRecordingAsync(seen);
        var channel = await server.ConnectClientAsync("websocket");
        Assert.Equal("websocket", channel.Transport);

        var negotiate = Assert.Single(seen, s => s.Path.EndsWith("/negotiate", StringComparison.Ordinal));
        var handshake = Assert.Single(seen, s => s.Path.EndsWith("/ws", StringComparison.Ordinal));
        Assert.Equal(negotiate.ConnectionId, handshake.ConnectionId);
        Assert.Contains("node=a", handshake.Cookie, StringComparison.Ordinal);
    }

    [Fact]
    public async Task With_ConfigureWebSocket_set_the_WebSocket_opens_a_connection_of_its_own()
    {
        var seen = new ConcurrentQueue<Seen>();
        await using var server = await StartRecordingAsync(seen);
        var configured = false;
        var channel = await server.ConnectClientAsync("websocket", o => o.ConfigureWebSocket = ws =>
        {
            configured = true;
            ws.KeepAliveInterval = TimeSpan.FromSeconds(20);
        });
        Assert.Equal("websocket", channel.Transport);
        Assert.True(configured);

        var negotiate = Assert.Single(seen, s => s.Path.EndsWith("/negotiate", StringComparison.Ordinal));
        var handshake = Assert.Single(seen, s => s.Path.EndsWith("/ws", StringComparison.Ordinal));
        Assert.NotEqual(negotiate.ConnectionId, handshake.ConnectionId);
    }
}

/// <summary>An anonymous session keeps no principal until the application asks for one.</summary>
public class AnonymousSessionTests
{
    [Fact]
    public async Task An_anonymous_session_has_an_unauthenticated_user_of_its_own()
    {
        await using var server = await PushTestServer.StartAsync();
        var first = await server.ConnectClientAsync("websocket");
        var second = await server.ConnectClientAsync("websocket");

        var a = server.Sessions.FindSession(first.SessionId!)!;
        var b = server.Sessions.FindSession(second.SessionId!)!;
        Assert.NotNull(a.User);
        Assert.False(a.User.Identity?.IsAuthenticated ?? false);
        Assert.Null(a.UserId);
        Assert.NotSame(a.User, b.User);
        Assert.Same(a.User, a.User);
    }
}
