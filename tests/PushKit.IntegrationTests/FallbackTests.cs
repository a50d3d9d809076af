using System.Net.ServerSentEvents;
using System.Text;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// Negotiation and fallback through a real reverse proxy (YARP), and one session carried by different transports.
/// </summary>
public class FallbackTests
{
    private static async Task AssertMessagesFlowAsync(PushTestServer server, Collector collector, IPushChannel client)
    {
        await client.SendStringAsync("up").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Contains(collector.All, m => m.Session.SessionId == client.SessionId && m.Message.GetString() == "up");
        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("down")));
        Assert.Equal("down", (await client.ReadAsync(1)).Single().GetString());
    }

    private static async Task<(IPushChannel Client, PushChannelStateChangedEventArgs Connected)> ConnectObservedAsync(Uri url, Action<PushClientOptions>? configure = null)
    {
        var client = new PushChannelBuilder().WithUrl(url).Configure(o => configure?.Invoke(o)).Build();
        var connected = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Connected)
            {
                connected.TrySetResult(e);
            }
        };
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        return (client, await connected.Task.WaitAsync(TestTimeouts.Default));
    }

    [Fact]
    public async Task Through_a_transparent_proxy_the_client_uses_WebSocket()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        await using var proxy = await TestProxy.StartAsync(server.Root, ProxyMode.Transparent);
        var (client, connected) = await ConnectObservedAsync(proxy.PushUrl);
        await using (client)
        {
            Assert.Equal("websocket", client.Transport);
            Assert.Equal("Connected over websocket.", connected.Reason);
            await AssertMessagesFlowAsync(server, collector, client);
        }
    }

    [Fact]
    public async Task When_the_proxy_refuses_WebSocket_upgrades_the_client_lands_on_SSE()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        await using var proxy = await TestProxy.StartAsync(server.Root, ProxyMode.RefuseWebSockets);
        var (client, connected) = await ConnectObservedAsync(proxy.PushUrl);
        await using (client)
        {
            Assert.Equal("sse", client.Transport);
            Assert.Contains("skipped websocket", connected.Reason, StringComparison.Ordinal);
            Assert.Contains("403", connected.Reason, StringComparison.Ordinal);
            Assert.Equal("sse", server.Sessions.FindSession(client.SessionId!)!.Transport);
            await AssertMessagesFlowAsync(server, collector, client);
        }
    }

    [Fact]
    public async Task When_the_proxy_also_buffers_streamed_responses_the_client_lands_on_long_polling()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector), o => o.LongPollingTimeout = TimeSpan.FromSeconds(2));
        await using var proxy = await TestProxy.StartAsync(server.Root, ProxyMode.RefuseWebSocketsAndBuffer);
        var (client, connected) = await ConnectObservedAsync(proxy.PushUrl, o => o.TransportDetectionTimeout = TimeSpan.FromSeconds(2));
        await using (client)
        {
            Assert.Equal("longpolling", client.Transport);
            Assert.Contains("skipped websocket", connected.Reason, StringComparison.Ordinal);
            // The proxy holds back the headers too, so the client cannot tell it from a server that does not answer.
            Assert.Contains("sse: The SSE request got no answer within 00:00:02 (the server is not responding, or a proxy is buffering the stream)", connected.Reason, StringComparison.Ordinal);
            await AssertMessagesFlowAsync(server, collector, client);

            // Several round trips, each through a poll the proxy buffers as a whole.
            for (var i = 0; i < 5; i++)
            {
                await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString($"p{i}"));
            }

            Assert.Equal(["p0", "p1", "p2", "p3", "p4"], (await client.ReadAsync(5)).Select(m => m.GetString()));
        }
    }

    [Fact]
    public async Task When_WebSocket_is_blocked_after_start_the_session_continues_over_SSE_with_nothing_lost()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        await using var proxy = await TestProxy.StartAsync(server.Root, ProxyMode.Transparent);
        await using var network = new ChaosProxy(proxy.Root);
        var (client, _) = await ConnectObservedAsync(network.PushUrl, o => o.ReconnectDelay = TimeSpan.FromMilliseconds(50));
        await using (client)
        {
            var sessionId = client.SessionId!;
            Assert.Equal("websocket", client.Transport);
            await client.SendStringAsync("over websocket").AsTask().WaitAsync(TestTimeouts.Default);

            // From now on the proxy refuses upgrades, and the live WebSocket is cut.
            var resumed = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
            client.StateChanged += (_, e) =>
            {
                if (e.CurrentState == PushChannelState.Connected)
                {
                    resumed.TrySetResult(e);
                }
            };
            proxy.Mode = ProxyMode.RefuseWebSockets;
            network.CutAll();
            var during = client.SendStringAsync("while switching").AsTask();
            await server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString("down while switching"));

            var change = await resumed.Task.WaitAsync(TestTimeouts.Default);
            Assert.False(change.IsSessionReset);
            Assert.Equal("sse", client.Transport);
            Assert.Equal(sessionId, client.SessionId);
            await during.WaitAsync(TestTimeouts.Default);
            Assert.Equal("down while switching", (await client.ReadAsync(1)).Single().GetString());
            Assert.Equal(["over websocket", "while switching"], collector.All.Select(m => m.Message.GetString()));
        }
    }

    [Fact]
    public async Task The_client_skips_transports_the_server_does_not_offer()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector), o =>
        {
            o.Transports.Clear();
            o.Transports.Add("longpolling");
        });
        var (client, connected) = await ConnectObservedAsync(server.BaseUrl);
        await using (client)
        {
            Assert.Equal("longpolling", client.Transport);
            Assert.Contains("websocket: not offered by the server", connected.Reason, StringComparison.Ordinal);
            Assert.Contains("sse: not offered by the server", connected.Reason, StringComparison.Ordinal);
            await AssertMessagesFlowAsync(server, collector, client);
        }
    }

    [Fact]
    public async Task The_client_order_of_preference_is_respected()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var (client, _) = await ConnectObservedAsync(server.BaseUrl, o =>
        {
            o.Transports.Clear();
            o.Transports.Add(PushTransports.LongPolling);
            o.Transports.Add(PushTransports.WebSocket);
        });
        await using (client)
        {
            Assert.Equal("longpolling", client.Transport);
            await AssertMessagesFlowAsync(server, collector, client);
        }
    }

    [Fact]
    public async Task When_no_transport_works_the_error_names_each_attempt()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.Transports.Clear();
            o.Transports.Add("websocket");
        });
        await using var proxy = await TestProxy.StartAsync(server.Root, ProxyMode.RefuseWebSockets);
        await using var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Build();
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("websocket:", error.Message, StringComparison.Ordinal);
        Assert.Contains("sse: not offered", error.Message, StringComparison.Ordinal);
        Assert.Contains("longpolling: not offered", error.Message, StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Disconnected, client.State);
    }

    [Fact]
    public async Task One_session_continues_on_another_transport_with_unacknowledged_messages_replayed()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));

        // WebSocket first: the client sends one message, receives two but acknowledges neither, then vanishes.
        var raw = await server.ConnectRawAsync();
        var session = server.Sessions.FindSession(raw.SessionId)!;
        await raw.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"up 1\"}");
        await raw.ReceiveContainingAsync("\"type\":\"ack\",\"seq\":1");
        await server.Sender.SendToSessionAsync(raw.SessionId, PushMessage.FromString("down 1"));
        await server.Sender.SendToSessionAsync(raw.SessionId, PushMessage.FromString("down 2"));
        await raw.ReceiveContainingAsync("down 2");
        raw.Socket.Abort();
        await session.WaitForStateAsync(PushChannelState.Disconnected);

        // The same session over SSE: both unacknowledged messages come again, in order, with their sequence as id.
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri($"{server.BaseUrl}/sse?session={raw.SessionId}"));
        request.Headers.Add("PushKit-Secret", raw.Secret);
        using var response = await server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).WaitAsync(TestTimeouts.Default);
        response.EnsureSuccessStatusCode();
        using var cts = new CancellationTokenSource(TestTimeouts.Default);
        var events = SseParser.Create(await response.Content.ReadAsStreamAsync()).EnumerateAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.True(await events.MoveNextAsync());
        Assert.Equal("open", events.Current.EventType);
        Assert.True(await events.MoveNextAsync());
        Assert.Equal(("1", true), (events.Current.EventId, events.Current.Data.Contains("down 1", StringComparison.Ordinal)));
        Assert.True(await events.MoveNextAsync());
        Assert.Equal(("2", true), (events.Current.EventId, events.Current.Data.Contains("down 2", StringComparison.Ordinal)));

        // Upstream continues the same sequence over POST: message 2, and the ack for both replayed messages.
        using var post = await server.Http.PostAsync(
            new Uri($"{server.BaseUrl}/send?session={raw.SessionId}&secret={Uri.EscapeDataString(raw.Secret)}"),
            new StringContent("{\"type\":\"ack\",\"seq\":2}\n{\"type\":\"msg\",\"seq\":2,\"data\":\"up 2\"}", Encoding.UTF8, "application/x-ndjson"));
        Assert.Equal(System.Net.HttpStatusCode.NoContent, post.StatusCode);
        while (await events.MoveNextAsync() && !events.Current.Data.Contains("\"ack\"", StringComparison.Ordinal))
        {
        }

        Assert.Equal("{\"type\":\"ack\",\"seq\":2}", events.Current.Data);
        Assert.Equal(["up 1", "up 2"], collector.All.Where(m => m.Session.SessionId == raw.SessionId).Select(m => m.Message.GetString()));
        Assert.Equal("sse", session.Transport);
        await events.DisposeAsync();
        await raw.DisposeAsync();
    }

    [Fact]
    public async Task An_SSE_reconnect_with_Last_Event_ID_acknowledges_what_the_client_processed()
    {
        await using var server = await PushTestServer.StartAsync();
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        var session = server.Sessions.FindSession(sessionId)!;
        for (var i = 1; i <= 3; i++)
        {
            await server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString($"m{i}"));
        }

        // First stream: all three arrive; the browser-style client "processed" up to 2 when the stream dropped.
        await using (var first = await OpenSseAsync(server, sessionId, secret, lastEventId: null))
        {
            Assert.Equal(["1", "2", "3"], await first.ReadIdsAsync(3));
        }

        await session.WaitForStateAsync(PushChannelState.Disconnected);
        await using var second = await OpenSseAsync(server, sessionId, secret, lastEventId: "2");
        Assert.Equal(["3"], await second.ReadIdsAsync(1));
    }

    private static async Task<SseReader> OpenSseAsync(PushTestServer server, string sessionId, string secret, string? lastEventId)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri($"{server.BaseUrl}/sse?session={sessionId}&secret={Uri.EscapeDataString(secret)}"));
        if (lastEventId is not null)
        {
            request.Headers.Add("Last-Event-ID", lastEventId);
        }

        var response = await server.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).WaitAsync(TestTimeouts.Default);
        response.EnsureSuccessStatusCode();
        return new SseReader(response, await response.Content.ReadAsStreamAsync());
    }

    private sealed class SseReader(HttpResponseMessage response, Stream stream) : IAsyncDisposable
    {
        private readonly CancellationTokenSource _cts = new(TestTimeouts.Default);
        private IAsyncEnumerator<SseItem<string>>? _events;

        public async Task<List<string>> ReadIdsAsync(int count)
        {
            _events ??= SseParser.Create(stream).EnumerateAsync(_cts.Token).GetAsyncEnumerator(_cts.Token);
            var ids = new List<string>();
            while (ids.Count < count && await _events.MoveNextAsync())
            {
                if (_events.Current.EventType == SseParser.EventTypeDefault && _events.Current.EventId is { Length: > 0 } id)
                {
                    ids.Add(id);
                }
            }

            return ids;
        }

        public async ValueTask DisposeAsync()
        {
            await _cts.CancelAsync();
            if (_events is not null)
            {
                try
                {
                    await _events.DisposeAsync();
                }
                catch (OperationCanceledException)
                {
                }
            }

            response.Dispose();
            _cts.Dispose();
        }
    }

}
