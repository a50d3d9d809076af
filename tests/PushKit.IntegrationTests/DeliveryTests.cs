using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>
/// Messages both ways over real Kestrel, proven on every transport (WebSocket, SSE, long-polling): order, exactly
/// once, acks, size, fan-out, lifetime.
/// </summary>
public class DeliveryTests
{
    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Ten_thousand_client_messages_reach_the_handler_in_order_exactly_once(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);

        // Sends are sequenced in call order, so they may all be in flight at once.
        var sends = Enumerable.Range(1, 10_000).Select(i => client.SendStringAsync(i.ToString(System.Globalization.CultureInfo.InvariantCulture)).AsTask()).ToArray();
        await Task.WhenAll(sends).WaitAsync(TestTimeouts.Default);

        var received = await collector.TakeAsync(10_000);
        Assert.Equal(Enumerable.Range(1, 10_000).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)), received.Select(m => m.GetString()));
        Assert.Equal(10_000, collector.Count);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Ten_thousand_server_messages_reach_the_client_in_order_exactly_once(string transport)
    {
        // Room for the marker below while the last acks are still on their way (the default bound is 10,000, and the
        // HTTP transports acknowledge up to 100 ms late): a full buffer would end the session as a slow consumer.
        await using var server = await PushTestServer.StartAsync(options: o => o.MaxBufferedMessagesPerSession = 20_000);
        var client = await server.ConnectClientAsync(transport);
        for (var i = 1; i <= 10_000; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString($"n{i}")));
        }

        var received = await client.ReadAsync(10_000);
        Assert.Equal(Enumerable.Range(1, 10_000).Select(i => $"n{i}"), received.Select(m => m.GetString()));

        // Nothing more arrives: every message exactly once. A marker sent last must be the very next message.
        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("end")));
        Assert.Equal("end", (await client.ReadAsync(1)).Single().GetString());
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_client_send_completes_only_after_the_server_handled_it(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        for (var i = 0; i < 20; i++)
        {
            await client.SendStringAsync($"m{i}").AsTask().WaitAsync(TestTimeouts.Default);
            Assert.Equal(i + 1, collector.Count);
        }
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_server_side_send_completes_when_the_client_acknowledged_it(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync(transport);
        var session = server.Sessions.FindSession(client.SessionId!)!;
        Assert.Equal(PushChannelState.Connected, session.State);
        Assert.Equal(transport, session.Transport);
        Assert.Equal(transport, client.Transport);

        await session.SendAsync(PushMessage.FromJson(new { text = "hello" }, topic: "greetings")).AsTask().WaitAsync(TestTimeouts.Default);
        var message = (await client.ReadAsync(1)).Single();
        Assert.Equal("greetings", message.Topic);
        Assert.Equal(PushMessage.JsonContentType, message.ContentType);
        Assert.Equal("{\"text\":\"hello\"}", message.GetString());
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_broadcast_reaches_each_of_100_concurrent_clients_in_order(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var clients = await Task.WhenAll(Enumerable.Range(0, 100).Select(_ => server.ConnectClientAsync(transport)));
        Assert.Equal(100, server.Sessions.Count);

        for (var i = 0; i < 50; i++)
        {
            Assert.Equal(100, await server.Sender.BroadcastAsync(PushMessage.FromString($"b{i}")));
        }

        var all = await Task.WhenAll(clients.Select(c => c.ReadAsync(50)));
        foreach (var received in all)
        {
            Assert.Equal(Enumerable.Range(0, 50).Select(i => $"b{i}"), received.Select(m => m.GetString()));
        }
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Large_binary_and_text_payloads_round_trip_byte_for_byte_both_ways(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);

        var binary = new byte[700 * 1024];
        new Random(42).NextBytes(binary);
        var allBytes = Enumerable.Range(0, 256).Select(i => (byte)i).ToArray();
        var text = string.Concat(Enumerable.Repeat("Grüße, 世界! \"quoted\" \\ \n\t 😀 ", 10_000));
        var headers = new Dictionary<string, string> { ["x-trace"] = "abc", ["x-ünicode"] = "✓" };
        PushMessage[] messages =
        [
            new PushMessage(binary, "application/octet-stream") { Id = "bin-1", Headers = headers },
            new PushMessage(allBytes, "image/x-test"),
            new PushMessage(Encoding.UTF8.GetBytes(text), "text/plain; charset=utf-8") { Topic = "big-text" },
        ];

        foreach (var message in messages)
        {
            await client.SendAsync(message).AsTask().WaitAsync(TestTimeouts.Default);
            await server.Sessions.FindSession(client.SessionId!)!.SendAsync(message).AsTask().WaitAsync(TestTimeouts.Default);
        }

        var atServer = await collector.TakeAsync(messages.Length);
        var atClient = await client.ReadAsync(messages.Length);
        for (var i = 0; i < messages.Length; i++)
        {
            foreach (var received in new[] { atServer[i], atClient[i] })
            {
                Assert.Equal(messages[i].Payload.ToArray(), received.Payload.ToArray());
                Assert.Equal(messages[i].ContentType, received.ContentType);
                Assert.Equal(messages[i].Id ?? (received == atServer[i] ? received.Id : null), received.Id);
                Assert.Equal(messages[i].Topic, received.Topic);
                Assert.Equal(messages[i].Headers, received.Headers);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task States_and_session_lifetime_are_observable_on_both_ends(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = server.CreateClient(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName(transport));
        });
        var states = new List<PushChannelState>();
        client.StateChanged += (_, e) =>
        {
            lock (states)
            {
                states.Add(e.CurrentState);
            }
        };

        Assert.Equal(PushChannelState.Disconnected, client.State);
        Assert.Null(client.SessionId);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var started = await collector.Started.Task.WaitAsync(TestTimeouts.Default);
        Assert.Equal(client.SessionId, started.SessionId);

        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        Assert.Equal([PushChannelState.Connecting, PushChannelState.Connected, PushChannelState.Closed], states);
        Assert.Null(server.Sessions.FindSession(client.SessionId!));

        var afterClose = await Assert.ThrowsAsync<PushChannelClosedException>(() => client.SendStringAsync("too late").AsTask());
        Assert.NotNull(afterClose.Message);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Closing_a_session_on_the_server_closes_the_client_and_fails_later_sends(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync(transport);
        var closed = client.NextStateAsync(PushChannelState.Closed);

        var session = server.Sessions.FindSession(client.SessionId!)!;
        await session.CloseAsync();
        var change = await closed.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, change.CloseCode);

        // Both sides' refused sends say why the channel closed on the exception callers catch (getting-started §3.5).
        var onClient = await Assert.ThrowsAsync<PushChannelClosedException>(() => client.SendStringAsync("x").AsTask());
        Assert.Equal(PushCloseCode.Normal, onClient.CloseCode);
        var onServer = await Assert.ThrowsAsync<PushChannelClosedException>(() => session.SendAsync(PushMessage.FromString("x")).AsTask());
        Assert.Equal(PushCloseCode.Normal, onServer.CloseCode);
        Assert.False(await server.Sender.SendToSessionAsync(session.SessionId, PushMessage.FromString("x")));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_session_names_its_transport_from_its_start_handler_on_and_none_once_its_connection_ended(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);

        Assert.Equal(transport, await collector.TransportAtStart.Task.WaitAsync(TestTimeouts.Default));
        var session = server.Sessions.FindSession(client.SessionId!)!;
        Assert.Equal(transport, session.Transport);

        // The session ends (and its handler hears of it) once the connection that carried the client's close has
        // ended, so by then no transport is named.
        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        Assert.Null(session.Transport);
    }

    [Fact]
    public async Task Closing_a_channel_again_or_after_disposing_it_does_nothing_and_later_sends_say_it_was_closed()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync();

        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);

        var error = await Assert.ThrowsAsync<PushChannelClosedException>(() => client.SendStringAsync("x").AsTask());
        Assert.Equal(PushCloseCode.Normal, error.CloseCode);
        Assert.Equal(PushChannelState.Closed, client.State);
    }

    [Fact]
    public async Task A_close_racing_a_dispose_finishes_quietly()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync();

        var closing = client.CloseAsync();
        var disposing = client.DisposeAsync().AsTask();
        var closingAgain = client.CloseAsync();
        await Task.WhenAll(closing, disposing, closingAgain).WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Closed, client.State);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_session_closed_while_its_connection_is_being_set_up_still_tells_the_client_it_was_closed(string transport)
    {
        // The server closes the session after the first poll was answered (or the WebSocket or SSE stream accepted) but
        // before the connection was attached: the client used to find the session gone (404 on its next poll, or 4404)
        // and quietly start a new one.
        var collector = new Collector { HoldStart = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));

        // On long-polling the client's next poll is held back until the session has ended, so that it reaches the
        // server in the window CI hit: the session ended, its close frame not written yet.
        var pollsGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = server.CreateClient(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName(transport));
            o.HttpMessageHandlerFactory = () => new PollGate(pollsGate.Task);
        });
        var closed = client.NextStateAsync(PushChannelState.Closed);

        var connecting = client.ConnectAsync();
        var session = await collector.Started.Task.WaitAsync(TestTimeouts.Default);
        await session.CloseAsync().WaitAsync(TestTimeouts.Default);
        pollsGate.SetResult();
        if (((PushKit.Server.Sessions.PushSession)session).HttpConnection is PushKit.Server.Connections.LongPollingServerConnection polled)
        {
            // That poll must be held for the close frame, not answered 404.
            await polled.PollHeld.WaitAsync(TestTimeouts.Default);
        }

        collector.HoldStart.SetResult();

        var change = await closed.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, change.CloseCode);
        Assert.Equal(session.SessionId, client.SessionId);
        await connecting.WaitAsync(TestTimeouts.Default);
        await Assert.ThrowsAsync<PushChannelClosedException>(() => client.SendStringAsync("too late").AsTask());
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_handler_that_closes_the_session_when_it_starts_turns_the_client_away_with_1000(string transport)
    {
        // The documented way to turn a client away: the client must hear 1000 and stop, not start session after session.
        await using var server = await PushTestServer.StartAsync(push => push.AddHandler<ClosingOnStartHandler>());
        var client = server.CreateClient(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName(transport));
        });
        var closed = client.NextStateAsync(PushChannelState.Closed);

        var connecting = client.ConnectAsync();
        var change = await closed.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, change.CloseCode);
        await connecting.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Closed, client.State);

        // And the ended session is removed once the client has answered the close (a WebSocket's close handshake; the
        // run ends a moment after). Nothing signals the removal, so this polls, bounded by the test timeout. On SSE and
        // long-polling no answer comes: the close is held, hidden from the application, for the resume window.
        var manager = server.Services.GetRequiredService<PushKit.Server.Sessions.PushSessionManager>();
        if (transport == "websocket")
        {
            await Eventually.TrueAsync(() => !manager.All().Any());
        }
        else
        {
            Assert.Empty(server.Sessions.GetSessions());
        }
    }

    [Fact]
    public async Task A_cancellation_exception_of_the_handler_s_own_when_a_session_starts_is_logged_and_the_session_goes_on()
    {
        // An HttpClient timeout inside the handler is a TaskCanceledException that has nothing to do with the connection.
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddHandler<TimingOutOnStartHandler>().AddCollector(collector));
        var client = server.CreateClient();
        var reconnects = 0;
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                Interlocked.Increment(ref reconnects);
            }
        };
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await client.SendStringAsync("still here").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("still here", Assert.Single(await collector.TakeAsync(1)).GetString());

        // The first connection carried it: the exception did not cost the client its connection.
        Assert.Equal(PushChannelState.Connected, client.State);
        Assert.Equal(0, Volatile.Read(ref reconnects));
    }

    [Fact]
    public async Task Disposing_a_session_found_in_the_registry_does_not_end_it()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync();
        var session = server.Sessions.FindSession(client.SessionId!)!;
        await using (session)
        {
            Assert.NotNull(session.SessionId);
        }

        Assert.NotEqual(PushChannelState.Closed, session.State);
        var received = client.ReadAsync(1);
        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("after")).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal("after", Assert.Single(await received).GetString());
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Fact]
    public async Task A_handler_that_throws_is_logged_by_name_the_next_handler_still_runs_and_the_send_succeeds()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(
            push => push.AddHandler<ThrowingOnMessageHandler>().AddCollector(collector),
            configureBuilder: b => b.Services.AddFakeLogging());
        var logs = server.Services.GetFakeLogCollector();
        var client = await server.ConnectClientAsync();

        await client.SendStringAsync("bad for the first handler").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("bad for the first handler", Assert.Single(await collector.TakeAsync(1)).GetString());

        var error = Assert.Single(logs.GetSnapshot(), r => r.Id.Id == 23);
        Assert.Equal(LogLevel.Error, error.Level);
        Assert.Contains(nameof(ThrowingOnMessageHandler), error.Message, StringComparison.Ordinal);
        Assert.Contains(nameof(PushHandler.OnMessageAsync), error.Message, StringComparison.Ordinal);
        Assert.IsType<InvalidOperationException>(error.Exception);
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    private sealed class ThrowingOnMessageHandler : PushHandler
    {
        public override ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken) =>
            throw new InvalidOperationException("The handler's own bug.");
    }

    private sealed class TimingOutOnStartHandler : PushHandler
    {
        public override ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken) =>
            throw new TaskCanceledException("The request was canceled due to the configured HttpClient.Timeout of 100 seconds elapsing.");
    }

    private sealed class ClosingOnStartHandler : PushHandler
    {
        public override async ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken) =>
            await session.CloseAsync(cancellationToken);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Messages_from_clients_can_be_read_from_the_session_when_no_handler_is_registered(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync(transport);
        var session = server.Sessions.FindSession(client.SessionId!)!;
        var send = client.SendStringAsync("to the session reader").AsTask();
        var received = await session.ReadAsync(1);
        Assert.Equal("to the session reader", received.Single().GetString());
        await send.WaitAsync(TestTimeouts.Default);
    }

    [Fact]
    public async Task A_message_sent_again_with_the_same_id_is_acknowledged_but_applied_once()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync();
        var order = new PushMessage("place order 42"u8.ToArray(), "text/plain") { Id = "order-42" };
        await client.SendAsync(order).AsTask().WaitAsync(TestTimeouts.Default);
        await client.SendAsync(order).AsTask().WaitAsync(TestTimeouts.Default);
        await client.SendStringAsync("after").AsTask().WaitAsync(TestTimeouts.Default);

        Assert.Equal(["place order 42", "after"], collector.All.Select(m => m.Message.GetString()));
        Assert.Equal("order-42", collector.All[0].Message.Id);
        Assert.NotNull(collector.All[1].Message.Id);
    }
}
