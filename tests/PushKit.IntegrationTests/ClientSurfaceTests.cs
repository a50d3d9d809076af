using System.Collections.Concurrent;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Polly;
using Polly.Retry;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Protocol;

namespace PushKit.IntegrationTests;

/// <summary>
/// The .NET client as an adopting developer uses it: options validation, connect failures, cancellation and close
/// during connect, transport forcing, headers and tokens on every request, and send/read argument handling.
/// </summary>
public class ClientSurfaceTests
{
    private static void Only(PushClientOptions o, string transport)
    {
        o.Transports.Clear();
        o.Transports.Add(Transports.ByName(transport));
    }

    // ---------------------------------------------------------------- options validation

    [Fact]
    public void Build_rejects_a_missing_relative_or_non_http_url_naming_the_option()
    {
        var missing = Assert.Throws<ArgumentException>(() => new PushChannelBuilder().Build());
        Assert.Contains("PushClientOptions.Url is required", missing.Message, StringComparison.Ordinal);

        var relative = Assert.Throws<ArgumentException>(() => new PushChannelBuilder().Configure(o => o.Url = new Uri("/push", UriKind.Relative)).Build());
        Assert.Contains("PushClientOptions.Url must be an absolute http, https, ws or wss URL", relative.Message, StringComparison.Ordinal);

        var ftp = Assert.Throws<ArgumentException>(() => new PushChannelBuilder().Configure(o => o.Url = new Uri("ftp://example.com/push")).Build());
        Assert.Contains("PushClientOptions.Url", ftp.Message, StringComparison.Ordinal);

        Assert.Throws<ArgumentNullException>(() => new PushChannelBuilder().WithUrl((string)null!));
        Assert.Throws<ArgumentNullException>(() => new PushChannelBuilder().WithUrl((Uri)null!));
        Assert.Throws<ArgumentException>(() => new PushChannelBuilder().WithUrl("/push"));
        Assert.Throws<ArgumentException>(() => new PushChannelBuilder().WithUrl("ftp://example.com/push"));
        Assert.Throws<ArgumentException>(() => new PushChannelBuilder().WithUrl(new Uri("/push", UriKind.Relative)));
    }

    [Fact]
    public void Build_lists_every_invalid_option_at_once_each_by_name()
    {
        var error = Assert.Throws<ArgumentException>(() => new PushChannelBuilder()
            .WithUrl("http://127.0.0.1:1/push")
            .Configure(o =>
            {
                o.Transports.Clear();
                o.AckTimeout = TimeSpan.Zero;
                o.ConnectTimeout = TimeSpan.FromSeconds(-1);
                o.TransportDetectionTimeout = TimeSpan.Zero;
                o.ReconnectDelay = TimeSpan.FromSeconds(10);
                o.MaxReconnectDelay = TimeSpan.FromSeconds(1);
                o.MaxReconnectAttempts = -1;
                o.MaxBufferedMessages = 0;
                o.MaxMessageBytes = 1023;
                o.AckDelay = TimeSpan.FromSeconds(2);
                o.ReceiveQueueCapacity = 0;
            })
            .Build());

        foreach (var name in new[]
                 {
                     "PushClientOptions.Transports", "PushClientOptions.AckTimeout", "PushClientOptions.ConnectTimeout",
                     "PushClientOptions.TransportDetectionTimeout", "PushClientOptions.ReconnectDelay", "PushClientOptions.MaxReconnectAttempts",
                     "PushClientOptions.MaxBufferedMessages", "PushClientOptions.MaxMessageBytes", "PushClientOptions.AckDelay",
                     "PushClientOptions.ReceiveQueueCapacity",
                 })
        {
            Assert.Contains(name, error.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Boundary_values_that_the_docs_allow_are_accepted()
    {
        // AckDelay (how long the client holds its own acks) and AckTimeout (how long a send waits for the server's)
        // are independent: a 1 s AckDelay with a 100 ms AckTimeout is valid.
        using var channel = (IDisposable)new PushChannelBuilder()
            .WithUrl("ws://127.0.0.1:1/push/")
            .Configure(o =>
            {
                o.AckDelay = TimeSpan.FromSeconds(1);
                o.AckTimeout = TimeSpan.FromMilliseconds(100);
                o.MaxMessageBytes = 1024;
                o.ReceiveQueueCapacity = 1;
                o.MaxReconnectAttempts = 0;
                o.ReconnectDelay = o.MaxReconnectDelay = TimeSpan.FromSeconds(1);
            })
            .Build();
    }

    [Fact]
    public void A_null_entry_in_Transports_is_rejected_by_Build_naming_the_option()
    {
        // Doc (getting-started §3.1): "Build() validates the options and throws ArgumentException that lists every problem."
        var error = Assert.Throws<ArgumentException>(() => new PushChannelBuilder()
            .WithUrl("http://127.0.0.1:1/push")
            .Configure(o => o.Transports.Add(null!))
            .Build());
        Assert.Contains("PushClientOptions.Transports", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_header_that_cannot_be_sent_is_rejected_by_Build_naming_the_option()
    {
        // A header name with a space is not a valid HTTP token: HttpRequestHeaders.TryAddWithoutValidation silently
        // drops it (negotiate, SSE, polls, sends), while ClientWebSocketOptions.SetRequestHeader throws. Either way
        // the application's header never reaches the server; Build is the documented moment to say so.
        foreach (var (name, value) in new[] { ("X Tenant", "acme"), ("X-Tenant", "acme\r\nX-Injected: 1"), ("X-Tenant", "café"), ("Content-Type", "text/plain"), ("X-Tenant", null!) })
        {
            var error = Assert.Throws<ArgumentException>(() => new PushChannelBuilder()
                .WithUrl("http://127.0.0.1:1/push")
                .Configure(o => o.Headers[name] = value)
                .Build());
            Assert.Contains($"PushClientOptions.Headers['{name}']", error.Message, StringComparison.Ordinal);
        }

        using var accepted = (IDisposable)new PushChannelBuilder()
            .WithUrl("http://127.0.0.1:1/push")
            .Configure(o => o.Headers["X-Api-Key"] = "key with spaces\tand a tab")
            .Build();
    }

    [Fact]
    public void DI_options_without_a_url_fail_with_OptionsValidationException_when_first_read_without_a_host()
    {
        var services = new ServiceCollection();
        services.AddPushKitClient(o => o.ReceiveQueueCapacity = 0);
        using var provider = services.BuildServiceProvider();
        var error = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IPushChannel>());
        Assert.Contains(error.Failures, f => f.Contains("PushClientOptions.Url", StringComparison.Ordinal));
        Assert.Contains(error.Failures, f => f.Contains("PushClientOptions.ReceiveQueueCapacity", StringComparison.Ordinal));
    }

    // ---------------------------------------------------------------- URLs

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_url_with_a_trailing_slash_or_a_ws_scheme_connects_and_exchanges_messages(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(configurePush: p => p.AddCollector(collector));
        foreach (var url in new[] { server.BaseUrl + "/", $"ws://{server.Root.Authority}/push" })
        {
            await using var client = new PushChannelBuilder().WithUrl(url).Configure(o => Only(o, transport)).Build();
            await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
            Assert.Equal(transport, client.Transport);
            await client.SendStringAsync("via " + url).AsTask().WaitAsync(TestTimeouts.Default);
            Assert.Equal("via " + url, (await collector.TakeAsync(1))[0].GetString());
        }
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_url_with_a_query_string_keeps_it_on_every_request(string transport)
    {
        // An app that routes or authorizes on a query parameter of the base URL (a tenant, an API key): the client
        // keeps it on negotiate, and on every request of the transports too.
        var seen = new ConcurrentQueue<string>();
        await using var server = await PushTestServer.StartAsync(configureApp: app => app.Use((context, next) =>
        {
            if (context.Request.Path.StartsWithSegments("/push"))
            {
                seen.Enqueue($"{context.Request.Path}{context.Request.QueryString}");
                if (context.Request.Query["tenant"] != "acme")
                {
                    context.Response.StatusCode = 400;
                    return context.Response.WriteAsync("tenant required");
                }
            }

            return next(context);
        }));

        await using var client = new PushChannelBuilder().WithUrl(server.BaseUrl + "?tenant=acme").Configure(o => Only(o, transport)).Build();
        var connect = await Record.ExceptionAsync(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.True(connect is null, $"Connect failed: {connect?.Message}\nRequests seen: {string.Join(" | ", seen)}");
        await client.SendStringAsync("hi").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.All(seen, request => Assert.Contains("tenant=acme", request, StringComparison.Ordinal));
    }

    // ---------------------------------------------------------------- connect failures

    [Fact]
    public async Task A_negotiate_answered_with_500_and_a_non_json_body_fails_with_the_status_and_leaves_the_channel_usable()
    {
        var fail = 1;
        await using var server = await PushTestServer.StartAsync(configureApp: app => app.Use((context, next) =>
        {
            if (context.Request.Path.StartsWithSegments("/push/negotiate") && Interlocked.Exchange(ref fail, 0) == 1)
            {
                context.Response.StatusCode = 500;
                context.Response.ContentType = "text/html";
                return context.Response.WriteAsync("<html><body>Internal Server Error</body></html>");
            }

            return next(context);
        }));
        var client = server.CreateClient();
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Equal(500, error.StatusCode);
        Assert.Null(error.ErrorCode);
        Assert.Contains("HTTP 500", error.Message, StringComparison.Ordinal);
        Assert.Contains("/push/negotiate", error.Message, StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Disconnected, client.State);

        // The channel stays usable: the next ConnectAsync succeeds.
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Fact]
    public async Task A_negotiate_answered_200_with_json_lacking_a_session_says_it_is_not_a_PushKit_response()
    {
        await using var server = await FakePushServer.StartAsync(app =>
            FakePushServer.MapNegotiate(app, () => "{\"hello\":\"world\"}"));
        await using var client = new PushChannelBuilder().WithUrl(server.BaseUrl).Build();
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Equal(200, error.StatusCode);
        Assert.Contains("not a PushKit negotiate response", error.Message, StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Disconnected, client.State);
    }

    [Fact]
    public async Task A_negotiate_that_never_answers_fails_after_ConnectTimeout_with_PushConnectException_naming_the_option()
    {
        await using var server = await FakePushServer.StartAsync(app =>
            app.MapPost("/push/negotiate", (HttpContext context) => Task.Delay(Timeout.Infinite, context.RequestAborted)));
        await using var client = new PushChannelBuilder().WithUrl(server.BaseUrl).Configure(o => o.ConnectTimeout = TimeSpan.FromSeconds(1)).Build();
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("PushClientOptions.ConnectTimeout", error.Message, StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Disconnected, client.State);
    }

    [Fact]
    public async Task A_connect_with_an_already_cancelled_token_throws_OperationCanceledException_and_creates_no_session()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = server.CreateClient();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.ConnectAsync(new CancellationToken(true)).WaitAsync(TestTimeouts.Default));
        Assert.Equal(PushChannelState.Disconnected, client.State);
        Assert.Equal(0, server.Sessions.Count);

        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_connect_cancelled_while_the_transport_opens_throws_OperationCanceledException_and_the_next_connect_works(string transport)
    {
        var path = transport switch { "websocket" => "/push/ws", "sse" => "/push/sse", _ => "/push/poll" };
        var gate = new RequestGate(path);
        await using var server = await PushTestServer.StartAsync(configureApp: gate.Install);
        var client = server.CreateClient(o => Only(o, transport));
        gate.Arm();
        using var cts = new CancellationTokenSource();
        var connect = client.ConnectAsync(cts.Token);
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => connect.WaitAsync(TestTimeouts.Default));
        Assert.Equal(PushChannelState.Disconnected, client.State);
        gate.Release.TrySetResult();

        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(transport, client.Transport);
        await client.SendStringAsync("after the cancelled connect").AsTask().WaitAsync(TestTimeouts.Default);
    }

    [Theory]
    [InlineData("sse")]
    [InlineData("longpolling")]
    public async Task Dispose_while_an_http_transport_is_opening_fails_the_connect_with_PushChannelClosedException_at_once(string transport)
    {
        var path = transport == "sse" ? "/push/sse" : "/push/poll";
        var gate = new RequestGate(path);
        await using var server = await PushTestServer.StartAsync(configureApp: gate.Install);

        // A detection timeout far beyond the test's wait: the connect must end because of the dispose, not the timer.
        var client = server.CreateClient(o =>
        {
            Only(o, transport);
            o.TransportDetectionTimeout = TimeSpan.FromMinutes(5);
            o.ConnectTimeout = TimeSpan.FromMinutes(5);
        });
        gate.Arm();
        var connect = client.ConnectAsync();
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);
        await client.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        var error = await Assert.ThrowsAsync<PushChannelClosedException>(() => connect.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(PushCloseCode.Normal, error.CloseCode);
        Assert.Equal(PushChannelState.Closed, client.State);
        await Assert.ThrowsAsync<PushChannelClosedException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        gate.Release.TrySetResult();
    }

    [Fact]
    public async Task ConnectAsync_on_a_connected_channel_throws_InvalidOperationException_and_leaves_it_connected()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync();
        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("Connected", error.Message, StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Connected, client.State);
        await client.SendStringAsync("still fine").AsTask().WaitAsync(TestTimeouts.Default);
    }

    // ---------------------------------------------------------------- transports offered / forced

    [Theory]
    [InlineData("websocket", "sse")]
    [InlineData("sse", "longpolling")]
    [InlineData("longpolling", "websocket")]
    public async Task Forcing_a_transport_the_server_does_not_offer_fails_with_PushConnectException_naming_both_lists(string clientOnly, string serverOnly)
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.Transports.Clear();
            o.Transports.Add(serverOnly);
        });
        var client = server.CreateClient(o => Only(o, clientOnly));
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains($"{clientOnly}: not offered by the server", error.Message, StringComparison.Ordinal);
        Assert.Contains($"The server offers: {serverOnly}", error.Message, StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Disconnected, client.State);
        Assert.Null(client.Transport);
    }

    [Fact]
    public async Task A_transport_the_server_lists_but_does_not_serve_is_skipped_for_the_next_one_with_the_reason()
    {
        // An app middleware in front of the WebSocket endpoint answers 503: the server lists websocket but cannot serve it.
        await using var server = await PushTestServer.StartAsync(configureApp: app => app.Use((context, next) =>
        {
            if (context.Request.Path.StartsWithSegments("/push/ws"))
            {
                context.Response.StatusCode = 503;
                return Task.CompletedTask;
            }

            return next(context);
        }));
        var changed = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = server.CreateClient();
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Connected)
            {
                changed.TrySetResult(e);
            }
        };
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal("sse", client.Transport);
        var connected = await changed.Task.WaitAsync(TestTimeouts.Default);
        Assert.StartsWith("Connected over sse; skipped websocket:", connected.Reason, StringComparison.Ordinal);
        Assert.Contains("503", connected.Reason, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- headers and tokens

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Headers_and_a_fresh_token_reach_every_request_of_every_transport_including_reconnects(string transport)
    {
        var requests = new ConcurrentQueue<(string Path, string? Tenant, string? Authorization)>();
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(
            configurePush: p => p.AddCollector(collector),
            configureApp: app => app.Use((context, next) =>
            {
                if (context.Request.Path.StartsWithSegments("/push"))
                {
                    requests.Enqueue((context.Request.Path.Value!, context.Request.Headers["X-Tenant"].ToString(), context.Request.Headers.Authorization.ToString()));
                }

                return next(context);
            }));
        await using var proxy = new ChaosProxy(server.Root);
        var tokens = 0;
        await using var client = new PushChannelBuilder()
            .WithUrl(proxy.PushUrl)
            .Configure(o =>
            {
                Only(o, transport);
                o.Headers["X-Tenant"] = "acme";
                o.AccessTokenProvider = _ => ValueTask.FromResult<string?>("tok-" + Interlocked.Increment(ref tokens));
                o.ReconnectDelay = TimeSpan.FromMilliseconds(50);
                o.MaxReconnectDelay = TimeSpan.FromMilliseconds(200);
            })
            .Build();
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await client.SendStringAsync("before").AsTask().WaitAsync(TestTimeouts.Default);
        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("down 1"));
        Assert.Equal("down 1", (await client.ReadAsync(1))[0].GetString());
        var beforeCut = requests.Count;
        if (transport == "longpolling")
        {
            // Cut while a poll is held: a cut between two polls is not a loss the client can see (its next poll goes
            // on a new TCP connection to the same long-polling connection), and no reconnect would follow.
            var polls = (PushKit.Server.Connections.LongPollingServerConnection)server.Services
                .GetRequiredService<PushKit.Server.Sessions.PushSessionManager>().Find(client.SessionId!)!.HttpConnection!;
            await Eventually.TrueAsync(() => polls.HoldsPoll);
        }

        var resumed = client.NextChangeAsync(e => e.CurrentState == PushChannelState.Connected);
        proxy.CutAll();
        var change = await resumed.WaitAsync(TestTimeouts.Default);
        Assert.StartsWith("Resumed:", change.Reason, StringComparison.Ordinal);
        await client.SendStringAsync("after").AsTask().WaitAsync(TestTimeouts.Default);
        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("down 2"));
        Assert.Equal("down 2", (await client.ReadAsync(1))[0].GetString());
        Assert.Equal(["before", "after"], (await collector.TakeAsync(2)).Select(m => m.GetString()));

        var all = requests.ToArray();
        Assert.True(all.Length > beforeCut, "no request after the reconnect");
        var missing = all.Where(r => r.Tenant != "acme" || !r.Authorization!.StartsWith("Bearer tok-", StringComparison.Ordinal)).ToArray();
        Assert.True(missing.Length == 0, "Requests without the header or token: " + string.Join(", ", missing.Select(r => $"{r.Path} tenant='{r.Tenant}' auth='{r.Authorization}'")));

        // A fresh token per request: the provider is called for each (docs: "It is called ... for every request").
        var values = all.Select(r => r.Authorization).ToArray();
        Assert.Equal(values.Length, values.Distinct().Count());
        Assert.Contains(all, r => r.Path.EndsWith("/negotiate", StringComparison.Ordinal));
        if (transport != "websocket")
        {
            Assert.Contains(all, r => r.Path.EndsWith("/send", StringComparison.Ordinal));
        }
    }

    // ---------------------------------------------------------------- send / read arguments

    [Fact]
    public async Task SendAsync_with_null_throws_ArgumentNullException_and_the_channel_carries_on()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(configurePush: p => p.AddCollector(collector));
        var client = await server.ConnectClientAsync();
        await Assert.ThrowsAsync<ArgumentNullException>(() => client.SendAsync(null!).AsTask());
        await client.SendStringAsync("next").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("next", (await collector.TakeAsync(1))[0].GetString());
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task An_empty_payload_round_trips_both_ways(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(configurePush: p => p.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        await client.SendAsync(new PushMessage(ReadOnlyMemory<byte>.Empty)).AsTask().WaitAsync(TestTimeouts.Default);
        await client.SendAsync(new PushMessage(ReadOnlyMemory<byte>.Empty, PushMessage.TextContentType)).AsTask().WaitAsync(TestTimeouts.Default);
        var received = await collector.TakeAsync(2);
        Assert.All(received, m => Assert.Equal(0, m.Payload.Length));
        Assert.Equal([PushMessage.DefaultContentType, PushMessage.TextContentType], received.Select(m => m.ContentType));

        await server.Sender.SendToSessionAsync(client.SessionId!, new PushMessage(ReadOnlyMemory<byte>.Empty));
        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString(""));
        var down = await client.ReadAsync(2);
        Assert.All(down, m => Assert.Equal(0, m.Payload.Length));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_send_over_the_servers_MaxMessageBytes_fails_alone_and_sends_in_flight_around_it_are_delivered_in_order(string transport)
    {
        const int limit = 16 * 1024;
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(configurePush: p => p.AddCollector(collector), options: o => o.MaxMessageBytes = limit);
        var client = await server.ConnectClientAsync(transport);

        var before = Enumerable.Range(0, 5).Select(i => client.SendStringAsync("before " + i).AsTask()).ToArray();
        var error = await Assert.ThrowsAsync<PushMessageTooLargeException>(() => client.SendAsync(new PushMessage(new byte[limit])).AsTask());
        Assert.Equal(limit, error.LimitBytes);
        Assert.True(error.FrameBytes > limit);
        var after = Enumerable.Range(0, 5).Select(i => client.SendStringAsync("after " + i).AsTask()).ToArray();
        await Task.WhenAll(before.Concat(after)).WaitAsync(TestTimeouts.Default);

        var got = (await collector.TakeAsync(10)).Select(m => m.GetString());
        Assert.Equal(Enumerable.Range(0, 5).Select(i => "before " + i).Concat(Enumerable.Range(0, 5).Select(i => "after " + i)), got);
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task The_largest_message_the_client_lets_through_is_accepted_by_the_server_even_next_to_other_sends(string transport)
    {
        const int limit = 16 * 1024;
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(configurePush: p => p.AddCollector(collector), options: o => o.MaxMessageBytes = limit);
        var client = await server.ConnectClientAsync(transport, o => o.AckDelay = TimeSpan.FromMilliseconds(500));

        // A text payload sized so that the client's own bound for its frame is exactly the server's limit.
        static PushMessage Sized(int length, string id) => new(System.Text.Encoding.UTF8.GetBytes(new string('a', length)), PushMessage.TextContentType) { Id = id };
        var overhead = FrameCodec.MaxMessageFrameLength(Sized(0, "big-1"));
        var big1 = Sized(limit - overhead, "big-1");
        Assert.Equal(limit, FrameCodec.MaxMessageFrameLength(big1));
        await Assert.ThrowsAsync<PushMessageTooLargeException>(() => client.SendAsync(Sized(limit - overhead + 1, "too-big")).AsTask());

        // A message from the server first, so that an ack is due when the big sends go up (it may ride with them).
        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("down"));
        Assert.Single(await client.ReadAsync(1));
        var sends = new[]
        {
            client.SendStringAsync("small").AsTask(),
            client.SendAsync(big1).AsTask(),
            client.SendAsync(Sized(limit - overhead, "big-2")).AsTask(),
        };
        await Task.WhenAll(sends).WaitAsync(TestTimeouts.Default);
        var got = await collector.TakeAsync(3);
        Assert.Equal("small", got[0].GetString());
        Assert.Equal(["big-1", "big-2"], got.Skip(1).Select(m => m.Id));
        Assert.All(got.Skip(1), m => Assert.Equal(limit - overhead, m.Payload.Length));
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_client_MaxMessageBytes_of_int_MaxValue_still_receives(string transport)
    {
        // Validation allows any MaxMessageBytes >= 1024 (getting-started §3.2: "Minimum 1024"), so int.MaxValue
        // ("no limit of my own") is a valid configuration; the server's own limit then applies.
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync(transport, o => o.MaxMessageBytes = int.MaxValue);
        var changes = new ConcurrentQueue<string>();
        client.StateChanged += (_, e) => changes.Enqueue($"{e.CurrentState} ({e.CloseCode}): {e.Reason}");
        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("hello"));
        var read = await Record.ExceptionAsync(async () =>
        {
            var got = await client.ReadAsync(1, TimeSpan.FromSeconds(10));
            Assert.Equal("hello", Assert.Single(got).GetString());
        });
        Assert.True(read is null, $"Nothing read within 10 s ({read?.GetType().Name}); state changes: {string.Join(" | ", changes.Take(4))}");
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_receive_queue_of_capacity_one_delivers_a_burst_in_order_to_a_slow_reader(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync(transport, o => o.ReceiveQueueCapacity = 1);
        for (var i = 0; i < 200; i++)
        {
            await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("m" + i));
        }

        var got = await client.ReadAsync(200);
        Assert.Equal(Enumerable.Range(0, 200).Select(i => "m" + i), got.Select(m => m.GetString()));
    }

    [Fact]
    public async Task SendAsync_and_ReadAllAsync_before_ConnectAsync_say_what_to_do()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = server.CreateClient();
        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => client.SendStringAsync("x").AsTask());
        Assert.Contains("ConnectAsync", error.Message, StringComparison.Ordinal);

        // ReadAllAsync before connecting waits for the messages of the connection to come; a cancelled token ends it.
        using var cts = new CancellationTokenSource();
        var reading = Task.Run(async () =>
        {
            await foreach (var _ in client.ReadAllAsync(cts.Token))
            {
                return "message";
            }

            return "ended";
        });
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("first"));
        Assert.Equal("message", await reading.WaitAsync(TestTimeouts.Default));
    }

    [Fact]
    public async Task ReadAllAsync_cancelled_while_waiting_throws_and_loses_nothing_for_the_next_reader()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync();
        using (var cts = new CancellationTokenSource())
        {
            var reading = Task.Run(async () =>
            {
                await foreach (var _ in client.ReadAllAsync(cts.Token))
                {
                    return "unexpected message";
                }

                return "ended";
            });
            await cts.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => reading.WaitAsync(TestTimeouts.Default));
        }

        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("kept"));
        Assert.Equal("kept", (await client.ReadAsync(1))[0].GetString());
    }

    // ---------------------------------------------------------------- nothing left running

    [Fact]
    public async Task After_DisposeAsync_during_reconnecting_no_reconnect_attempt_starts_again()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var attempts = 0;
        var pipeline = new ResiliencePipelineBuilder()
            .AddRetry(new RetryStrategyOptions
            {
                ShouldHandle = new PredicateBuilder().Handle<Exception>(ex => ex is not OperationCanceledException),
                MaxRetryAttempts = int.MaxValue,
                Delay = TimeSpan.FromMilliseconds(20),
                BackoffType = DelayBackoffType.Constant,
                OnRetry = _ =>
                {
                    Interlocked.Increment(ref attempts);
                    return default;
                },
            })
            .Build();
        var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o => o.ReconnectPipeline = pipeline).Build();
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);

        var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
        proxy.RefuseNew = true;
        proxy.CutAll();
        await reconnecting.WaitAsync(TestTimeouts.Default);
        await Eventually.TrueAsync(() => Volatile.Read(ref attempts) >= 3);

        await client.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(PushChannelState.Closed, client.State);
        var atDispose = Volatile.Read(ref attempts);

        // An absence can only be checked over a bounded time: 25 retry periods.
        await Task.Delay(500);
        Assert.InRange(Volatile.Read(ref attempts), atDispose, atDispose + 1);
    }
}

/// <summary>Process-wide checks: nothing a failed or abandoned connect leaves behind surfaces as an unobserved exception.</summary>
[Collection(GlobalEventsCollection.Name)]
public class ClientSurfaceUnobservedTests
{
    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Failed_cancelled_and_disposed_connects_leave_no_unobserved_task_exception(string transport)
    {
        using var unobserved = new UnobservedExceptions();
        var path = transport switch { "websocket" => "/push/ws", "sse" => "/push/sse", _ => "/push/poll" };
        var gate = new RequestGate(path);
        await using (var server = await PushTestServer.StartAsync(configureApp: gate.Install))
        {
            await using var proxy = new ChaosProxy(server.Root);

            // 1. Disposed while the transport opens.
            gate.Arm();
            var disposed = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o => { o.Transports.Clear(); o.Transports.Add(Transports.ByName(transport)); }).Build();
            var connect = disposed.ConnectAsync();
            await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);
            await disposed.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
            await Assert.ThrowsAsync<PushChannelClosedException>(() => connect.WaitAsync(TestTimeouts.Default));
            gate.Release.TrySetResult();

            // 2. Connected, traffic both ways, then cut and disposed while reconnecting to nothing.
            var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o =>
            {
                o.Transports.Clear();
                o.Transports.Add(Transports.ByName(transport));
                o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
                o.MaxReconnectDelay = TimeSpan.FromMilliseconds(50);
            }).Build();
            await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
            var pending = client.SendStringAsync("x").AsTask();
            await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("y"));
            var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
            proxy.RefuseNew = true;
            proxy.CutAll();
            await reconnecting.WaitAsync(TestTimeouts.Default);
            await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
            await Record.ExceptionAsync(() => pending.WaitAsync(TestTimeouts.Default));
        }

        // 3. A connect that fails outright (nobody listening).
        using (var holder = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp))
        {
            holder.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
            await using var nobody = new PushChannelBuilder().WithUrl($"http://127.0.0.1:{((System.Net.IPEndPoint)holder.LocalEndPoint!).Port}/push").Build();
            await Assert.ThrowsAsync<PushConnectException>(() => nobody.ConnectAsync().WaitAsync(TestTimeouts.Default));
        }

        var seen = await unobserved.CollectAsync(_ => true);
        Assert.True(seen.Count == 0, "Unobserved: " + string.Join(" || ", seen.Select(e => e.ToString())));
    }
}
