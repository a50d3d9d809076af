using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>The errors a new user meets first say what to check (getting-started §3.5).</summary>
public class ConnectErrorMessageTests
{
    [Fact]
    public async Task A_connect_to_a_port_nobody_listens_on_asks_whether_the_server_is_running()
    {
        // A port held by a socket that does not listen: connections to it are refused, and no other test can take it.
        using var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var port = ((IPEndPoint)holder.LocalEndPoint!).Port;

        await using var client = new PushChannelBuilder().WithUrl($"http://127.0.0.1:{port}/push").Build();
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains($"Negotiation with http://127.0.0.1:{port}/push/negotiate failed", error.Message, StringComparison.Ordinal);
        Assert.Contains(". Is the server running", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_negotiation_refused_with_401_says_to_give_the_client_credentials()
    {
        // What an app with RequireAuthorization answers a client without a token: a bare 401, no PushKit error body.
        await using var server = await PushTestServer.StartAsync(configureApp: app => app.Use((context, next) =>
        {
            if (context.Request.Path.StartsWithSegments("/push"))
            {
                context.Response.StatusCode = 401;
                return Task.CompletedTask;
            }

            return next(context);
        }));
        var client = server.CreateClient();
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Equal(401, error.StatusCode);
        Assert.Contains("HTTP 401 (the server requires authentication: give the client credentials, for example PushClientOptions.AccessTokenProvider", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_SSE_request_that_gets_no_answer_says_so_rather_than_that_the_stream_opened()
    {
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(transports: "[\"sse\"]"));
            app.MapGet("/push/sse", (HttpContext context) => Task.Delay(Timeout.Infinite, context.RequestAborted));
        });
        await using var client = HostileServerTests.Client(server, "sse", o => o.TransportDetectionTimeout = TimeSpan.FromSeconds(1));
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("The SSE request got no answer within 00:00:01 (the server is not responding, or a proxy is buffering the stream)", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_client_limited_to_transports_the_server_does_not_offer_is_told_what_the_server_offers()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.Transports.Clear();
            o.Transports.Add("longpolling");
        });
        var client = server.CreateClient(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(PushTransports.WebSocket);
        });
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("websocket: not offered by the server", error.Message, StringComparison.Ordinal);
        Assert.Contains("The server offers: longpolling.", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_send_while_the_first_connect_is_in_progress_says_to_wait_for_it()
    {
        var gate = new RequestGate("/push/negotiate");
        await using var server = await PushTestServer.StartAsync(configureApp: gate.Install);
        var client = server.CreateClient();
        gate.Arm();
        var connect = client.ConnectAsync();
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);

        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => client.SendStringAsync("too early").AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Contains("still connecting: wait for ConnectAsync to complete", refused.Message, StringComparison.Ordinal);

        gate.Release.TrySetResult();
        await connect.WaitAsync(TestTimeouts.Default);
        await client.SendStringAsync("in time").AsTask().WaitAsync(TestTimeouts.Default);
    }

    [Fact]
    public async Task A_connect_cancelled_by_the_caller_is_logged_as_a_cancellation_not_a_failure()
    {
        var gate = new RequestGate("/push/negotiate");
        await using var server = await PushTestServer.StartAsync(configureApp: gate.Install);
        var logs = new FakeLogCollector();
        using var loggerFactory = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Debug).AddProvider(new FakeLoggerProvider(logs)));
        await using var client = new PushChannelBuilder().WithUrl(server.BaseUrl).WithLogging(loggerFactory).Build();
        gate.Arm();
        using var cancel = new CancellationTokenSource();
        var connect = client.ConnectAsync(cancel.Token);
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);

        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => connect.WaitAsync(TestTimeouts.Default));
        gate.Release.TrySetResult();

        var records = logs.GetSnapshot();
        Assert.DoesNotContain(records, r => r.Id.Id == 102);
        var cancelled = Assert.Single(records, r => r.Id.Id == 109);
        Assert.Equal(LogLevel.Debug, cancelled.Level);
        Assert.Equal(PushChannelState.Disconnected, client.State);
    }

    [Fact]
    public async Task A_server_that_stays_away_shows_as_one_numbered_line_per_reconnect_attempt()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var logs = new FakeLogCollector();
        using var loggerFactory = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Debug).AddProvider(new FakeLoggerProvider(logs)));
        await using var client = new PushChannelBuilder()
            .WithUrl(proxy.PushUrl)
            .WithLogging(loggerFactory)
            .Configure(o =>
            {
                o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
                o.MaxReconnectDelay = TimeSpan.FromMilliseconds(100);
            })
            .Build();
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var sessionId = client.SessionId!;

        // Away twice: the attempts of each outage are numbered from 1.
        for (var outage = 0; outage < 2; outage++)
        {
            logs.Clear();
            proxy.RefuseNew = true;
            var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
            proxy.CutAll();
            await reconnecting.WaitAsync(TestTimeouts.Default);
            await Eventually.TrueAsync(() => logs.GetSnapshot().Count(r => r.Id.Id == 110) >= 3);
            var connected = client.NextStateAsync(PushChannelState.Connected);
            proxy.RefuseNew = false;
            await connected.WaitAsync(TestTimeouts.Default);

            var records = logs.GetSnapshot();
            var attempts = records.Where(r => r.Id.Id == 110).ToList();
            Assert.Equal([1, 2, 3], attempts.Take(3).Select(r => Convert.ToInt32(r.StructuredState!.Single(p => p.Key == "Attempt").Value, System.Globalization.CultureInfo.InvariantCulture)));
            Assert.All(attempts, r =>
            {
                Assert.Equal(LogLevel.Information, r.Level);
                Assert.Contains($"Session {sessionId}: reconnect attempt", r.Message, StringComparison.Ordinal);
                Assert.Contains("No transport could connect", r.Message, StringComparison.Ordinal);
            });

            // Each transport's refusal is in the attempt's line; on its own it is a Debug detail.
            Assert.Contains(records, r => r.Id.Id == 101);
            Assert.All(records.Where(r => r.Id.Id == 101), r => Assert.Equal(LogLevel.Debug, r.Level));
        }

        Assert.Equal(sessionId, client.SessionId);
    }
}
