using System.Net;
using System.Text;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>The SSE stream that carries a session is the one its POSTs reach, whatever other requests came and went.</summary>
public class SseTakeoverTests
{
    [Fact]
    public async Task A_second_stream_abandoned_while_the_first_takes_over_leaves_the_first_able_to_send()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        // A first connection whose client never answers the server's close: taking the session over from it waits
        // (up to a second) for it to end.
        await using var first = await server.ConnectRawAsync();
        var session = (PushSession)server.Sessions.FindSession(first.SessionId)!;
        var sseUrl = new Uri($"{server.BaseUrl}/sse?session={first.SessionId}&secret={Uri.EscapeDataString(first.Secret)}");
        // Stream A starts taking over.
        using var http = new HttpClient();
        using var a = await http.GetAsync(sseUrl, HttpCompletionOption.ResponseHeadersRead).WaitAsync(TestTimeouts.Default);
        await Eventually.TrueAsync(() => session.HttpConnection is not null);
        var streamA = session.HttpConnection;
        // Stream B arrives meanwhile, and its client vanishes (a reset) before B could take over.
        using (var b = new System.Net.Sockets.TcpClient())
        {
            await b.ConnectAsync(server.Root.Host, server.Root.Port).WaitAsync(TestTimeouts.Default);
            var stream = b.GetStream();
            await stream.WriteAsync(Encoding.ASCII.GetBytes($"GET {sseUrl.PathAndQuery} HTTP/1.1\r\nHost: x\r\n\r\n")).AsTask().WaitAsync(TestTimeouts.Default);
            await stream.ReadAsync(new byte[1024]).AsTask().WaitAsync(TestTimeouts.Default);
            Assert.False(ReferenceEquals(session.HttpConnection, streamA));
            b.Client.LingerState = new System.Net.Sockets.LingerOption(true, 0);
        }

        await Eventually.TrueAsync(() => session.HttpConnection is { IsDead: true } || ReferenceEquals(session.HttpConnection, streamA));

        // A carries the session; a message POSTed by its client must reach the application.
        await Eventually.TrueAsync(() => session.Transport == "sse");
        using var post = await http.PostAsync(
            new Uri($"{server.BaseUrl}/send?session={first.SessionId}&secret={Uri.EscapeDataString(first.Secret)}"),
            new StringContent("{\"type\":\"msg\",\"seq\":1,\"contentType\":\"text/plain\",\"data\":\"up\"}", Encoding.UTF8, "text/plain")).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.NoContent, post.StatusCode);
        Assert.Equal("up", Assert.Single(await collector.TakeAsync(1)).GetString());
    }

    [Fact]
    public async Task An_idle_stream_carries_keep_alive_comments()
    {
        await using var server = await PushTestServer.StartAsync(options: o => o.SseKeepAliveInterval = TimeSpan.FromMilliseconds(100));
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        var sseUrl = new Uri($"{server.BaseUrl}/sse?session={sessionId}&secret={Uri.EscapeDataString(secret)}");
        using var http = new HttpClient();
        using var response = await http.GetAsync(sseUrl, HttpCompletionOption.ResponseHeadersRead).WaitAsync(TestTimeouts.Default);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var keepAlives = 0;
        while (keepAlives < 3)
        {
            var line = await reader.ReadLineAsync().WaitAsync(TestTimeouts.Default);
            Assert.NotNull(line);
            if (line == ": keep-alive")
            {
                keepAlives++;
            }
        }
    }

    [Fact]
    public async Task A_stream_that_ends_without_taking_over_gives_the_POSTs_back_to_the_live_stream()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        var session = (PushSession)server.Sessions.FindSession(sessionId)!;
        var sseUrl = new Uri($"{server.BaseUrl}/sse?session={sessionId}&secret={Uri.EscapeDataString(secret)}");
        using var http = new HttpClient();
        using var live = await http.GetAsync(sseUrl, HttpCompletionOption.ResponseHeadersRead).WaitAsync(TestTimeouts.Default);
        await Eventually.TrueAsync(() => session.Transport == "sse");
        var liveStream = session.HttpConnection;

        // A second stream attached itself for POSTs (as the endpoint does before its 'open' event), and its request
        // ended before it took over: what the endpoint does then must hand the POSTs back.
        var abandoned = new PushKit.Server.Connections.SseServerConnection(new Microsoft.AspNetCore.Http.DefaultHttpContext(), TimeSpan.FromMinutes(1), TimeProvider.System);
        session.SetHttpConnection(abandoned);
        abandoned.Abort();
        session.ReleaseHttpConnection(abandoned);
        Assert.Same(liveStream, session.HttpConnection);

        using var post = await http.PostAsync(
            new Uri($"{server.BaseUrl}/send?session={sessionId}&secret={Uri.EscapeDataString(secret)}"),
            new StringContent("{\"type\":\"msg\",\"seq\":1,\"data\":\"up\"}")).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.NoContent, post.StatusCode);
        Assert.Equal("up", Assert.Single(await collector.TakeAsync(1)).GetString());
    }
}
