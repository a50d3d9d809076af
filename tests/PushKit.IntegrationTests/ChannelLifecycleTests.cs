using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// The client channel when the application closes or disposes it while a connect is in flight, or changes its state
/// from a StateChanged handler: the connect ends, nothing is left connected, later sends fail at once, and every
/// subscriber sees the changes in order.
/// </summary>
public class ChannelLifecycleTests
{
    // Far longer than the waits below: a send that waits for its acknowledgement would time out the test.
    private static readonly TimeSpan s_longAckTimeout = TimeSpan.FromSeconds(60);

    private static void WebSocketOnly(PushClientOptions o)
    {
        o.Transports.Clear();
        o.Transports.Add(PushTransports.WebSocket);
        o.AckTimeout = s_longAckTimeout;
    }

    [Fact]
    public async Task Close_during_the_first_connect_fails_the_connect_and_later_sends_at_once()
    {
        var gate = new RequestGate("/push/ws");
        await using var server = await PushTestServer.StartAsync(configureApp: gate.Install);
        var client = server.CreateClient(WebSocketOnly);
        var log = new StateLog(client);
        gate.Arm();
        var connect = client.ConnectAsync();
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);

        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        gate.Release.TrySetResult();

        await Assert.ThrowsAsync<PushChannelClosedException>(() => connect.WaitAsync(TestTimeouts.Default));
        Assert.Equal(PushChannelState.Closed, client.State);
        await Assert.ThrowsAsync<PushChannelClosedException>(() => client.SendStringAsync("after close").AsTask().WaitAsync(TestTimeouts.Default));
        log.AssertConsistent();

        // The WebSocket the server accepted after the close is let go of.
        await gate.Completed.Task.WaitAsync(TestTimeouts.Default);
    }

    [Fact]
    public async Task Calls_on_a_closed_channel_say_what_closed_it_the_application_or_the_server()
    {
        await using var server = await PushTestServer.StartAsync();

        // Closed by the application: 1000 (Normal), for a connect as for a send.
        var disposed = new PushChannelBuilder().WithUrl(server.BaseUrl).Configure(WebSocketOnly).Build();
        await disposed.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await disposed.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, (await Assert.ThrowsAsync<PushChannelClosedException>(() => disposed.ConnectAsync().WaitAsync(TestTimeouts.Default))).CloseCode);
        Assert.Equal(PushCloseCode.Normal, (await Assert.ThrowsAsync<PushChannelClosedException>(() => disposed.SendStringAsync("late").AsTask().WaitAsync(TestTimeouts.Default))).CloseCode);

        // Taken over by another connection of the session: 4409 (Superseded), not a generic 1000. (The session's secret
        // is read from the negotiate response on its way to the client.)
        var negotiated = new NegotiateCapture();
        var client = new PushChannelBuilder().WithUrl(server.BaseUrl).Configure(o =>
        {
            WebSocketOnly(o);
            o.HttpMessageHandlerFactory = () => negotiated;
        }).Build();
        await using (client)
        {
            await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
            var closed = client.NextStateAsync(PushChannelState.Closed);
            var secret = System.Text.Json.JsonDocument.Parse(negotiated.Body!).RootElement.GetProperty("resumeSecret").GetString()!;
            await using var takeover = await RawSocket.ConnectAsync(server.WebSocketUrl(client.SessionId!, secret), client.SessionId!, secret);
            Assert.Equal(PushCloseCode.Superseded, (await closed.WaitAsync(TestTimeouts.Default)).CloseCode);
            Assert.Equal(PushCloseCode.Superseded, (await Assert.ThrowsAsync<PushChannelClosedException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default))).CloseCode);
        }
    }

    [Fact]
    public async Task Dispose_during_the_first_connect_fails_the_connect_and_leaves_no_connection_open()
    {
        var gate = new RequestGate("/push/ws");
        await using var server = await PushTestServer.StartAsync(configureApp: gate.Install);
        var client = new PushChannelBuilder().WithUrl(server.BaseUrl).Configure(WebSocketOnly).Build();
        var log = new StateLog(client);
        gate.Arm();
        var connect = client.ConnectAsync();
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);

        await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
        gate.Release.TrySetResult();

        await Assert.ThrowsAsync<PushChannelClosedException>(() => connect.WaitAsync(TestTimeouts.Default));
        await gate.Completed.Task.WaitAsync(TestTimeouts.Default);
        await Eventually.TrueAsync(() => !server.Sessions.GetSessions().Any(s => s.State == PushChannelState.Connected));
        log.AssertConsistent();
    }

    [Fact]
    public async Task A_host_disposed_while_its_clients_connect_ends_both_connects_and_leaves_no_connection_open()
    {
        var gate = new RequestGate("/push/ws");
        var keyedGate = new RequestGate("/push/ws");
        await using var server = await PushTestServer.StartAsync(configureApp: app =>
        {
            gate.Install(app);
            keyedGate.Install(app);
        });
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddPushKitClient(o => o.Url = server.BaseUrl);
        builder.Services.AddKeyedPushKitClient("k", o => o.Url = server.BaseUrl);
        var host = builder.Build();
        var plain = host.Services.GetRequiredService<IPushChannel>();
        var keyed = host.Services.GetRequiredKeyedService<IPushChannel>("k");
        await host.StartAsync().WaitAsync(TestTimeouts.Default);

        gate.Arm();
        var plainConnect = plain.ConnectAsync();
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);
        keyedGate.Arm();
        var keyedConnect = keyed.ConnectAsync();
        await keyedGate.Arrived.Task.WaitAsync(TestTimeouts.Default);

        await host.StopAsync().WaitAsync(TestTimeouts.Default);
        await ((IAsyncDisposable)host).DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);

        // Ended by the dispose, not by the server: both fail while their handshakes are still held.
        await Assert.ThrowsAsync<PushChannelClosedException>(() => plainConnect.WaitAsync(TestTimeouts.Default));
        await Assert.ThrowsAsync<PushChannelClosedException>(() => keyedConnect.WaitAsync(TestTimeouts.Default));
        gate.Release.TrySetResult();
        keyedGate.Release.TrySetResult();
        await Task.WhenAll(gate.Completed.Task, keyedGate.Completed.Task).WaitAsync(TestTimeouts.Default);
        await Eventually.TrueAsync(() => !server.Sessions.GetSessions().Any(s => s.State == PushChannelState.Connected));
    }

    [Fact]
    public async Task Close_while_reconnecting_to_a_restarted_server_starts_nothing_there_and_later_sends_fail_at_once()
    {
        var server = await PushTestServer.StartAsync();
        var port = server.Root.Port;
        var client = new PushChannelBuilder().WithUrl(server.BaseUrl).Configure(WebSocketOnly).Build();
        await using var _ = client;
        var log = new StateLog(client);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);

        // The server goes away (1001 with a retry hint) and comes back on the same port without the session.
        var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
        await server.DisposeAsync();
        await reconnecting.WaitAsync(TestTimeouts.Default);
        var gate = new RequestGate("/push/negotiate");
        gate.Arm();
        var collector = new Collector();
        await using var restarted = await PushTestServer.StartAsync(
            push => push.AddCollector(collector),
            configureBuilder: b => b.WebHost.UseUrls($"http://127.0.0.1:{port}"),
            configureApp: gate.Install);

        // The reconnect finds the session gone and negotiates a new one: the close lands while that is held.
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);
        var closing = client.CloseAsync();
        gate.Release.TrySetResult();
        await closing.WaitAsync(TestTimeouts.Default);

        await Assert.ThrowsAsync<PushChannelClosedException>(() => client.SendStringAsync("after close").AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal(PushChannelState.Closed, client.State);
        Assert.False(collector.Started.Task.IsCompleted, "a session started on the restarted server after the close");
        Assert.DoesNotContain(restarted.Sessions.GetSessions(), s => s.State == PushChannelState.Connected);
        log.AssertConsistent();
    }

    [Fact]
    public async Task A_handler_that_closes_the_channel_on_Connected_leaves_every_subscriber_an_ordered_history()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = server.CreateClient(WebSocketOnly);
        Task? close = null;
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Connected)
            {
                close = client.CloseAsync();
            }
        };
        var log = new StateLog(client);

        try
        {
            await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        }
        catch (PushChannelClosedException)
        {
            // Closed before ConnectAsync returned: either outcome is fine, the history is what is checked.
        }

        await close!.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Closed, client.State);
        log.AssertConsistent();
        Assert.EndsWith("Connected->Closed", log.Describe(), StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_close_from_the_Connected_handler_of_the_first_connect_ends_the_session_on_the_server(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = server.CreateClient(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName(transport));
        });
        Task? close = null;
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Connected)
            {
                close = client.CloseAsync();
            }
        };

        try
        {
            await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        }
        catch (PushChannelClosedException)
        {
        }

        await close!.WaitAsync(TestTimeouts.Default);

        // The server hears the close (1000) rather than losing the connection and keeping the session to expire.
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
    }

    [Fact]
    public async Task A_close_while_resuming_a_session_the_server_still_holds_ends_that_session_on_the_server()
    {
        var collector = new Collector();
        var gate = new RequestGate("/push/ws");
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector), configureApp: gate.Install);
        var client = server.CreateClient(WebSocketOnly);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var session = (PushKit.Server.Sessions.PushSession)server.Sessions.FindSession(client.SessionId!)!;

        // The server drops the connection with "come back"; the client's resume is held in its handshake.
        var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
        gate.Arm();
        session.Engine.CloseConnection(PushCloseCode.Overloaded, "come back later");
        await reconnecting.WaitAsync(TestTimeouts.Default);
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);

        var closing = client.CloseAsync();
        gate.Release.TrySetResult();
        await closing.WaitAsync(TestTimeouts.Default);

        // The resumed connection carries the close: the session ends now, not when its resume window runs out.
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_send_from_the_Closed_handler_is_refused_and_never_reaches_the_server(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport, o => o.AckTimeout = s_longAckTimeout);
        Task? afterClose = null;
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Closed)
            {
                afterClose = client.SendStringAsync("sent from the Closed handler").AsTask();
            }
        };

        await client.SendStringAsync("before").AsTask().WaitAsync(TestTimeouts.Default);
        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        await Assert.ThrowsAsync<PushChannelClosedException>(() => afterClose!.WaitAsync(TestTimeouts.Default));

        // The session ends with the close, after everything the client sent before it.
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        Assert.Equal(["before"], collector.All.Select(m => m.Message.GetString()));
    }

    [Fact]
    public void A_service_provider_disposed_synchronously_disposes_a_resolved_channel()
    {
        var services = new ServiceCollection();
        services.AddPushKitClient(o => o.Url = new Uri("http://127.0.0.1:9/push"));
        var provider = services.BuildServiceProvider();
        var channel = provider.GetRequiredService<IPushChannel>();

        provider.Dispose();
        Assert.Equal(PushChannelState.Closed, channel.State);
    }

    /// <summary>Passes requests on, keeping the body of the negotiate response (buffered, so the client still reads it).</summary>
    private sealed class NegotiateCapture() : DelegatingHandler(new SocketsHttpHandler())
    {
        public string? Body { get; private set; }

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var response = await base.SendAsync(request, cancellationToken);
            if (request.RequestUri!.AbsolutePath.EndsWith("/negotiate", StringComparison.Ordinal))
            {
                await response.Content.LoadIntoBufferAsync(cancellationToken);
                Body = await response.Content.ReadAsStringAsync(cancellationToken);
            }

            return response;
        }
    }
}
