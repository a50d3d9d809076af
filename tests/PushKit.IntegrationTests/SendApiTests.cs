using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Claims;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>
/// The server's sending and session API as an application uses it: IPushSender, IPushSessionRegistry,
/// IPushSession and the three BufferFullPolicy values, against getting-started §2.4–2.6 and reliability §6, §9.
/// </summary>
public class SendApiTests
{
    private static string S(int i) => "m" + i.ToString(CultureInfo.InvariantCulture);

    private static int N(PushMessage m) => int.Parse(m.GetString().AsSpan(1), CultureInfo.InvariantCulture);

    private static void Only(PushClientOptions o, string transport)
    {
        o.Transports.Clear();
        o.Transports.Add(Transports.ByName(transport));
        o.ReconnectDelay = TimeSpan.FromMilliseconds(50);
        o.MaxReconnectDelay = TimeSpan.FromMilliseconds(200);
    }

    /// <summary>Authenticates every request as the user named in the X-User header (none: anonymous).</summary>
    private static void UsersFromHeader(WebApplication app) => app.Use((context, next) =>
    {
        var user = context.Request.Headers["X-User"].ToString();
        if (user.Length > 0)
        {
            context.User = new ClaimsPrincipal(new ClaimsIdentity([new Claim(ClaimTypes.NameIdentifier, user)], "test"));
        }

        return next(context);
    });

    /// <summary>transports.md: "no poll arrives for LongPollingTimeout + 10 s" counts as lost on the server.</summary>
    private static void FastLongPollLoss(PushKitServerOptions o) => o.LongPollingTimeout = TimeSpan.FromSeconds(1);

    private static IPushChannel ClientVia(PushTestServer server, Uri url, string transport, Action<PushClientOptions>? configure = null)
    {
        var channel = new PushChannelBuilder().WithUrl(url).Configure(o =>
        {
            Only(o, transport);
            configure?.Invoke(o);
        }).Build();
        return channel;
    }

    // ---------------------------------------------------------------- argument validation, unknown ids

    [Fact]
    public async Task arguments_are_validated_with_the_parameter_named()
    {
        await using var server = await PushTestServer.StartAsync();
        var message = PushMessage.FromString("x");

        var e1 = await Assert.ThrowsAsync<ArgumentNullException>(async () => await server.Sender.SendToSessionAsync(null!, message));
        Assert.Equal("sessionId", e1.ParamName);
        var e2 = await Assert.ThrowsAsync<ArgumentNullException>(async () => await server.Sender.SendToSessionAsync("abc", null!));
        Assert.Equal("message", e2.ParamName);
        var e3 = await Assert.ThrowsAsync<ArgumentNullException>(async () => await server.Sender.SendToUserAsync(null!, message));
        Assert.Equal("userId", e3.ParamName);
        var e4 = await Assert.ThrowsAsync<ArgumentNullException>(async () => await server.Sender.SendToUserAsync("u", null!));
        Assert.Equal("message", e4.ParamName);
        var e5 = await Assert.ThrowsAsync<ArgumentNullException>(async () => await server.Sender.BroadcastAsync(null!));
        Assert.Equal("message", e5.ParamName);
    }

    [Fact]
    public async Task registry_FindSession_null_names_the_sessionId_parameter()
    {
        await using var server = await PushTestServer.StartAsync();
        var e = Assert.Throws<ArgumentNullException>(() => server.Sessions.FindSession(null!));
        Assert.Equal("sessionId", e.ParamName);
    }

    [Fact]
    public async Task unknown_or_empty_ids_give_false_zero_and_null()
    {
        await using var server = await PushTestServer.StartAsync();
        var message = PushMessage.FromString("x");
        Assert.False(await server.Sender.SendToSessionAsync("no-such-session", message));
        Assert.False(await server.Sender.SendToSessionAsync(string.Empty, message));
        Assert.Equal(0, await server.Sender.SendToUserAsync("nobody", message));
        Assert.Equal(0, await server.Sender.SendToUserAsync(string.Empty, message));
        Assert.Equal(0, await server.Sender.BroadcastAsync(message));
        Assert.Null(server.Sessions.FindSession("no-such-session"));
        Assert.Null(server.Sessions.FindSession(string.Empty));
        Assert.Empty(server.Sessions.GetSessions());
        Assert.Empty(server.Sessions.GetSessions("nobody"));
        Assert.Equal(0, server.Sessions.Count);
    }

    [Fact]
    public async Task a_cancelled_token_queues_nothing_on_a_live_session()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync("websocket");
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("cancelled"), cancelled.Token));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await server.Sender.BroadcastAsync(PushMessage.FromString("cancelled"), cancelled.Token));
        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("after")));
        Assert.Equal("after", (await client.ReadAsync(1))[0].GetString());
    }

    [Fact]
    public async Task A_cancelled_token_throws_from_every_send_even_with_no_session_to_send_to()
    {
        // The three sends agree: a token cancelled before the call throws, whoever the message would reach.
        await using var server = await PushTestServer.StartAsync();
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await server.Sender.SendToSessionAsync("nobody", PushMessage.FromString("x"), cancelled.Token));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await server.Sender.SendToUserAsync("nobody", PushMessage.FromString("x"), cancelled.Token));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await server.Sender.BroadcastAsync(PushMessage.FromString("x"), cancelled.Token));
    }

    // ---------------------------------------------------------------- ended sessions, CloseAsync

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task CloseAsync_reaches_the_client_with_1000_and_the_ended_session_is_gone(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync(transport);
        var id = client.SessionId!;
        var session = server.Sessions.FindSession(id)!;
        Assert.NotNull(session);
        Assert.Equal(1, server.Sessions.Count);

        var closed = client.NextStateAsync(PushChannelState.Closed);
        await session.CloseAsync().WaitAsync(TestTimeouts.Default);
        var change = await closed.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, change.CloseCode);
        Assert.False(change.IsSessionReset);
        Assert.Equal(PushChannelState.Closed, session.State);

        Assert.False(await server.Sender.SendToSessionAsync(id, PushMessage.FromString("late")));
        Assert.Equal(0, await server.Sender.BroadcastAsync(PushMessage.FromString("late")));
        Assert.Null(server.Sessions.FindSession(id));
        Assert.Equal(0, server.Sessions.Count);
        Assert.Empty(server.Sessions.GetSessions());
        await Assert.ThrowsAsync<PushChannelClosedException>(async () => await session.SendAsync(PushMessage.FromString("late")).AsTask().WaitAsync(TestTimeouts.Default));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task a_session_closed_while_its_client_is_away_is_invisible_and_the_client_hears_1000_on_return(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: FastLongPollLoss);
        await using var proxy = new ChaosProxy(server.Root);
        await using var client = ClientVia(server, proxy.PushUrl, transport);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var id = client.SessionId!;
        var session = server.Sessions.FindSession(id)!;

        var away = session.NextStateAsync(PushChannelState.Disconnected);
        proxy.RefuseNew = true;
        proxy.CutAll();
        await away.WaitAsync(TestTimeouts.Default);

        var closed = client.NextStateAsync(PushChannelState.Closed);
        await session.CloseAsync().WaitAsync(TestTimeouts.Default);
        Assert.False(await server.Sender.SendToSessionAsync(id, PushMessage.FromString("late")));
        Assert.Equal(0, await server.Sender.BroadcastAsync(PushMessage.FromString("late")));
        Assert.Null(server.Sessions.FindSession(id));
        Assert.Equal(0, server.Sessions.Count);

        proxy.RefuseNew = false;
        var change = await closed.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, change.CloseCode);
        Assert.False(change.IsSessionReset);
    }

    // ---------------------------------------------------------------- resume window

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task sends_in_the_resume_window_are_accepted_and_delivered_in_order_after_resume_and_Items_survive(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: FastLongPollLoss);
        await using var proxy = new ChaosProxy(server.Root);
        await using var client = ClientVia(server, proxy.PushUrl, transport);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var id = client.SessionId!;
        var session = server.Sessions.FindSession(id)!;
        session.Items["k"] = "v";

        Assert.True(await server.Sender.SendToSessionAsync(id, PushMessage.FromString(S(0))));
        Assert.Equal(S(0), (await client.ReadAsync(1))[0].GetString());

        var away = session.NextStateAsync(PushChannelState.Disconnected);
        proxy.RefuseNew = true;
        proxy.CutAll();
        await away.WaitAsync(TestTimeouts.Default);

        Assert.Equal(1, server.Sessions.Count);
        Assert.Same(session, server.Sessions.FindSession(id));
        Assert.Single(server.Sessions.GetSessions());
        for (var i = 1; i <= 5; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(id, PushMessage.FromString(S(i))));
        }

        Assert.Equal(1, await server.Sender.BroadcastAsync(PushMessage.FromString(S(6))));

        var back = session.NextStateAsync(PushChannelState.Connected);
        proxy.RefuseNew = false;
        await back.WaitAsync(TestTimeouts.Default);
        Assert.True(await server.Sender.SendToSessionAsync(id, PushMessage.FromString(S(7))));

        var received = await client.ReadAsync(7);
        Assert.Equal(Enumerable.Range(1, 7).Select(S), received.Select(m => m.GetString()));
        Assert.Equal(id, client.SessionId);
        Assert.Same(session, server.Sessions.FindSession(id));
        Assert.Equal("v", session.Items["k"]);

        // Nothing more (no duplicate) arrives.
        Assert.True(await server.Sender.SendToSessionAsync(id, PushMessage.FromString("end")));
        Assert.Equal("end", (await client.ReadAsync(1))[0].GetString());
    }

    // ---------------------------------------------------------------- users and broadcast counts

    [Fact]
    public async Task a_user_with_several_sessions_gets_each_message_on_each_and_counts_are_exact()
    {
        await using var server = await PushTestServer.StartAsync(configureApp: UsersFromHeader);
        var alice = new List<IPushChannel>();
        foreach (var transport in new[] { "websocket", "sse", "longpolling" })
        {
            alice.Add(await server.ConnectClientAsync(transport, o => o.Headers["X-User"] = "alice"));
        }

        var bob = await server.ConnectClientAsync("websocket", o => o.Headers["X-User"] = "bob");
        var anonymous = await server.ConnectClientAsync("sse");
        var (pendingId, _, _) = await server.NegotiateRawAsync(); // negotiated, never connected: a session too (§2.5)

        Assert.Equal(6, server.Sessions.Count);
        Assert.Equal(3, server.Sessions.GetSessions("alice").Count);
        Assert.All(server.Sessions.GetSessions("alice"), s => Assert.Equal("alice", s.UserId));
        Assert.Equal("bob", Assert.Single(server.Sessions.GetSessions("bob")).UserId);
        Assert.Null(server.Sessions.FindSession(anonymous.SessionId!)!.UserId);
        Assert.Null(server.Sessions.FindSession(pendingId)!.UserId);

        for (var i = 1; i <= 3; i++)
        {
            Assert.Equal(3, await server.Sender.SendToUserAsync("alice", PushMessage.FromString(S(i))));
        }

        Assert.Equal(1, await server.Sender.SendToUserAsync("bob", PushMessage.FromString("b")));
        Assert.Equal(0, await server.Sender.SendToUserAsync("ALICE", PushMessage.FromString("case")));
        Assert.Equal(6, await server.Sender.BroadcastAsync(PushMessage.FromString("all")));

        foreach (var a in alice)
        {
            Assert.Equal([S(1), S(2), S(3), "all"], (await a.ReadAsync(4)).Select(m => m.GetString()));
        }

        Assert.Equal(["b", "all"], (await bob.ReadAsync(2)).Select(m => m.GetString()));
        Assert.Equal(["all"], (await anonymous.ReadAsync(1)).Select(m => m.GetString()));

        // One of alice's sessions ends: the count follows.
        var closed = alice[0].NextStateAsync(PushChannelState.Closed);
        await server.Sessions.FindSession(alice[0].SessionId!)!.CloseAsync().WaitAsync(TestTimeouts.Default);
        await closed.WaitAsync(TestTimeouts.Default);
        Assert.Equal(2, server.Sessions.GetSessions("alice").Count);
        Assert.Equal(2, await server.Sender.SendToUserAsync("alice", PushMessage.FromString("two")));
        Assert.Equal(5, await server.Sender.BroadcastAsync(PushMessage.FromString("five")));
        Assert.Equal(5, server.Sessions.Count);
    }

    // ---------------------------------------------------------------- BufferFullPolicy.Disconnect

    [Fact]
    public async Task Disconnect_leaves_the_slow_session_out_of_broadcast_and_user_counts()
    {
        await using var server = await PushTestServer.StartAsync(configureApp: UsersFromHeader, options: o => o.MaxBufferedMessagesPerSession = 5);
        var good = await server.ConnectClientAsync("websocket", o => o.Headers["X-User"] = "carol");
        await using var slow = await server.ConnectRawAsync(); // anonymous raw socket that never acknowledges

        var goodSession = (PushKit.Server.Sessions.PushSession)server.Sessions.FindSession(good.SessionId!)!;
        var counts = new List<int>();
        for (var i = 1; i <= 8; i++)
        {
            counts.Add(await server.Sender.BroadcastAsync(PushMessage.FromString(S(i))));
            // The good client keeps up: its acknowledgement is awaited before the next send.
            await Eventually.TrueAsync(() => goodSession.Engine.UnacknowledgedCount == 0);
        }

        // 5 fit in the slow session's buffer; the 6th ends it (4429) and is not counted.
        Assert.Equal([2, 2, 2, 2, 2, 1, 1, 1], counts);
        var (status, _) = await slow.ReceiveCloseAsync();
        Assert.Equal(4429, status);
        Assert.False(await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString("x")));
        Assert.Null(server.Sessions.FindSession(slow.SessionId));
        Assert.Equal(1, server.Sessions.Count);
        Assert.Equal(1, await server.Sender.SendToUserAsync("carol", PushMessage.FromString(S(9))));
        Assert.Equal(Enumerable.Range(1, 9).Select(S), (await good.ReadAsync(9)).Select(m => m.GetString()));
    }

    [Fact]
    public async Task Disconnect_fails_a_waiting_session_SendAsync_with_Overloaded()
    {
        await using var server = await PushTestServer.StartAsync(options: o => o.MaxBufferedMessagesPerSession = 3);
        await using var slow = await server.ConnectRawAsync();
        var session = server.Sessions.FindSession(slow.SessionId)!;
        var awaited = session.SendAsync(PushMessage.FromString("awaited")).AsTask();
        Assert.True(await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString("a")));
        Assert.True(await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString("b")));
        Assert.False(await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString("c")));
        var ex = await Assert.ThrowsAsync<PushChannelClosedException>(() => awaited.WaitAsync(TestTimeouts.Default));
        Assert.Equal(PushCloseCode.Overloaded, ex.CloseCode);
        var over = await Assert.ThrowsAsync<PushChannelClosedException>(async () => await session.SendAsync(PushMessage.FromString("d")).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal(PushCloseCode.Overloaded, over.CloseCode);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Disconnect_ends_a_non_reading_dotnet_client_with_4429_and_it_starts_a_new_session(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: o => o.MaxBufferedMessagesPerSession = 5);
        var client = await server.ConnectClientAsync(transport, o =>
        {
            o.ReceiveQueueCapacity = 1;
            o.ReconnectDelay = TimeSpan.FromMilliseconds(50);
        });
        var first = client.SessionId!;
        var reset = client.NextChangeAsync(e => e.CurrentState == PushChannelState.Connected && e.IsSessionReset);
        var overloaded = client.NextChangeAsync(e => e.CloseCode == PushCloseCode.Overloaded);

        var accepted = 0;
        var refused = false;
        for (var i = 1; i <= 2000 && !refused; i++)
        {
            if (await server.Sender.SendToSessionAsync(first, PushMessage.FromString(S(i))))
            {
                accepted++;
            }
            else
            {
                refused = true;
            }
        }

        Assert.True(refused, $"all {accepted} sends were accepted by a client that reads nothing");
        await overloaded.WaitAsync(TestTimeouts.Default);
        Assert.Null(server.Sessions.FindSession(first));
        Assert.True((await reset.WaitAsync(TimeSpan.FromSeconds(20))).IsSessionReset);
        Assert.NotEqual(first, client.SessionId);
    }

    // ---------------------------------------------------------------- BufferFullPolicy.DropOldest

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task DropOldest_while_away_tells_the_client_exactly_how_many_it_lost(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            FastLongPollLoss(o);
            o.MaxBufferedMessagesPerSession = 3;
            o.BufferFullPolicy = PushBufferFullPolicy.DropOldest;
        });
        await using var proxy = new ChaosProxy(server.Root);
        await using var client = ClientVia(server, proxy.PushUrl, transport);
        var drops = new ConcurrentQueue<long>();
        client.MessagesDropped += (_, e) => drops.Enqueue(e.Count);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var id = client.SessionId!;
        var session = server.Sessions.FindSession(id)!;

        Assert.True(await server.Sender.SendToSessionAsync(id, PushMessage.FromString(S(0))));
        Assert.Equal(S(0), (await client.ReadAsync(1))[0].GetString());
        await Eventually.TrueAsync(() => ((PushKit.Server.Sessions.PushSession)session).Engine.UnacknowledgedCount == 0);

        var away = session.NextStateAsync(PushChannelState.Disconnected);
        proxy.RefuseNew = true;
        proxy.CutAll();
        await away.WaitAsync(TestTimeouts.Default);

        for (var i = 1; i <= 10; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(id, PushMessage.FromString(S(i))));
        }

        proxy.RefuseNew = false;
        var received = await client.ReadAsync(3);
        Assert.Equal([S(8), S(9), S(10)], received.Select(m => m.GetString()));
        Assert.Equal([7L], drops.ToArray());
        Assert.Equal(id, client.SessionId);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task DropOldest_with_a_client_that_stops_reading_accounts_for_every_message_exactly(string transport)
    {
        const int total = 400;
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.MaxBufferedMessagesPerSession = 5;
            o.BufferFullPolicy = PushBufferFullPolicy.DropOldest;
        });
        var client = await server.ConnectClientAsync(transport, o => o.ReceiveQueueCapacity = 1);
        long dropped = 0;
        client.MessagesDropped += (_, e) => Interlocked.Add(ref dropped, e.Count);
        var id = client.SessionId!;

        // The client reads nothing meanwhile. Each message is 64 KB, 25 MB in all: more than the socket buffers and the
        // client's queues can hold, so the server's writes back up and what it drops was never sent (small messages
        // could all reach the client's socket before it stopped reading, leaving nothing to skip: once in CI).
        var padding = new string('x', 64 * 1024);
        for (var i = 1; i <= total; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(id, PushMessage.FromString(S(i) + "|" + padding)).AsTask().WaitAsync(TestTimeouts.Default));
        }

        var received = new List<int>();
        using var cts = new CancellationTokenSource(TestTimeouts.Default);
        await foreach (var m in client.ReadAllAsync(cts.Token))
        {
            var text = m.GetString();
            received.Add(int.Parse(text.AsSpan(1, text.IndexOf('|', StringComparison.Ordinal) - 1), CultureInfo.InvariantCulture));
            if (received[^1] == total)
            {
                break;
            }
        }

        Assert.Equal(received.Distinct().Count(), received.Count);
        Assert.Equal(received.OrderBy(x => x), received);
        Assert.True(Interlocked.Read(ref dropped) > 0, "nothing was dropped: the scenario did not fill the buffer");
        Assert.Equal(total, received.Count + Interlocked.Read(ref dropped));
        Assert.Equal(client.SessionId, id);
    }

    [Fact]
    public async Task DropOldest_fails_a_dropped_awaited_session_SendAsync()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.MaxBufferedMessagesPerSession = 3;
            o.BufferFullPolicy = PushBufferFullPolicy.DropOldest;
        });
        await using var slow = await server.ConnectRawAsync();
        var session = server.Sessions.FindSession(slow.SessionId)!;
        var awaited = session.SendAsync(PushMessage.FromString("awaited")).AsTask();
        for (var i = 1; i <= 5; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString(S(i))));
        }

        await Assert.ThrowsAsync<PushMessageDroppedException>(() => awaited.WaitAsync(TestTimeouts.Default));
        Assert.Equal(PushChannelState.Connected, session.State);
        Assert.Equal(1, await server.Sender.BroadcastAsync(PushMessage.FromString("b")));
    }

    // ---------------------------------------------------------------- BufferFullPolicy.Wait

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Wait_blocks_the_sender_until_the_client_reads_and_loses_or_duplicates_nothing(string transport)
    {
        const int total = 600;
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.MaxBufferedMessagesPerSession = 5;
            o.BufferFullPolicy = PushBufferFullPolicy.Wait;
        });
        var client = await server.ConnectClientAsync(transport, o => o.ReceiveQueueCapacity = 1);
        var id = client.SessionId!;
        var sent = 0;
        var sender = Task.Run(async () =>
        {
            for (var i = 1; i <= total; i++)
            {
                if (!await server.Sender.SendToSessionAsync(id, PushMessage.FromString(S(i))))
                {
                    throw new InvalidOperationException($"send {i} refused");
                }

                Volatile.Write(ref sent, i);
            }
        });

        // The sender stalls: the client reads nothing, so it stops acknowledging.
        await Eventually.TrueAsync(() => Volatile.Read(ref sent) > 5);
        int stalledAt;
        do
        {
            stalledAt = Volatile.Read(ref sent);
            await Task.WhenAny(sender, Task.Delay(500));
        }
        while (!sender.IsCompleted && Volatile.Read(ref sent) != stalledAt);

        Assert.False(sender.IsCompleted, "the sender never waited although the client read nothing");
        Assert.True(stalledAt < total);
        Assert.Equal(PushChannelState.Connected, server.Sessions.FindSession(id)!.State);

        // A send with a token cancelled during the wait fails and is not delivered: run alongside from another task is
        // not ordered, so it is checked with a second session below; here the client now reads and releases the sender.
        var received = new List<int>();
        using var cts = new CancellationTokenSource(TestTimeouts.Default);
        await foreach (var m in client.ReadAllAsync(cts.Token))
        {
            received.Add(N(m));
            if (received.Count == total)
            {
                break;
            }
        }

        await sender.WaitAsync(TestTimeouts.Default);
        Assert.Equal(Enumerable.Range(1, total), received);
        Assert.Equal(id, client.SessionId);
    }

    [Fact]
    public async Task Wait_a_cancelled_wait_throws_and_the_message_is_never_delivered()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.MaxBufferedMessagesPerSession = 3;
            o.BufferFullPolicy = PushBufferFullPolicy.Wait;
        });
        await using var slow = await server.ConnectRawAsync();
        for (var i = 1; i <= 3; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString(S(i))));
        }

        using var cts = new CancellationTokenSource();
        var waiting = server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString("cancelled")).AsTask();
        var waitingCancellable = server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString("cancelled2"), cts.Token).AsTask();
        var waitingBroadcast = server.Sender.BroadcastAsync(PushMessage.FromString("cancelled3"), cts.Token).AsTask();
        Assert.False(waiting.IsCompleted);
        Assert.False(waitingCancellable.IsCompleted);
        Assert.False(waitingBroadcast.IsCompleted);
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waitingCancellable.WaitAsync(TestTimeouts.Default));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waitingBroadcast.WaitAsync(TestTimeouts.Default));

        // Read m1..m3, acknowledge them: the uncancelled waiter is released, and only its message follows.
        var seen = new System.Text.StringBuilder();
        while (!seen.ToString().Contains("\"m3\"", StringComparison.Ordinal))
        {
            seen.Append(await slow.ReceiveAsync() ?? throw new InvalidOperationException("closed"));
        }

        await slow.SendAsync("{\"type\":\"ack\",\"seq\":3}");
        Assert.True(await waiting.WaitAsync(TestTimeouts.Default));
        Assert.True(await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString("last")));
        while (!seen.ToString().Contains("\"last\"", StringComparison.Ordinal))
        {
            seen.Append(await slow.ReceiveAsync() ?? throw new InvalidOperationException("closed"));
        }

        var text = seen.ToString();
        Assert.Contains("\"cancelled\"", text, StringComparison.Ordinal);
        Assert.DoesNotContain("cancelled2", text, StringComparison.Ordinal);
        Assert.DoesNotContain("cancelled3", text, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- size limits, awaited sends across a resume

    [Fact]
    public async Task a_client_with_a_smaller_limit_is_skipped_and_left_out_of_the_counts()
    {
        await using var server = await PushTestServer.StartAsync(configureApp: UsersFromHeader, options: o => o.MaxMessageBytes = 8 * 1024);
        var small = await server.ConnectClientAsync("websocket", o => { o.Headers["X-User"] = "dave"; o.MaxMessageBytes = 1024; });
        var large = await server.ConnectClientAsync("sse", o => o.Headers["X-User"] = "dave");
        var big = PushMessage.FromString(new string('x', 3000));

        Assert.Equal(1, await server.Sender.SendToUserAsync("dave", big));
        Assert.Equal(1, await server.Sender.BroadcastAsync(big));
        await Assert.ThrowsAsync<PushMessageTooLargeException>(async () => await server.Sender.SendToSessionAsync(small.SessionId!, big));
        Assert.True(await server.Sender.SendToSessionAsync(large.SessionId!, big));
        await Assert.ThrowsAsync<PushMessageTooLargeException>(async () => await server.Sender.BroadcastAsync(PushMessage.FromString(new string('y', 9000))));
        await Assert.ThrowsAsync<PushMessageTooLargeException>(async () => await server.Sender.SendToUserAsync("dave", PushMessage.FromString(new string('y', 9000))));

        Assert.True(await server.Sender.SendToSessionAsync(small.SessionId!, PushMessage.FromString("small")));
        Assert.Equal(["small"], (await small.ReadAsync(1)).Select(m => m.GetString()));
        Assert.Equal(3, (await large.ReadAsync(3)).Count(m => m.GetString() == big.GetString()));
        Assert.Equal(PushChannelState.Connected, small.State);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task an_awaited_session_SendAsync_made_while_away_completes_after_resume(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: FastLongPollLoss);
        await using var proxy = new ChaosProxy(server.Root);
        await using var client = ClientVia(server, proxy.PushUrl, transport);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var session = server.Sessions.FindSession(client.SessionId!)!;
        var away = session.NextStateAsync(PushChannelState.Disconnected);
        proxy.RefuseNew = true;
        proxy.CutAll();
        await away.WaitAsync(TestTimeouts.Default);

        var awaited = session.SendAsync(PushMessage.FromString("awaited")).AsTask();
        Assert.True(await server.Sender.SendToSessionAsync(session.SessionId, PushMessage.FromString("queued")));
        Assert.False(awaited.IsCompleted);
        proxy.RefuseNew = false;
        Assert.Equal(["awaited", "queued"], (await client.ReadAsync(2)).Select(m => m.GetString()));
        await awaited.WaitAsync(TestTimeouts.Default);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Wait_a_broadcast_waits_for_a_full_session_and_counts_it_only_if_it_accepted(bool closeInstead)
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.MaxBufferedMessagesPerSession = 3;
            o.BufferFullPolicy = PushBufferFullPolicy.Wait;
        });
        await using var slow = await server.ConnectRawAsync();
        var good = await server.ConnectClientAsync("websocket");
        for (var i = 1; i <= 3; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString(S(i))));
        }

        var broadcast = server.Sender.BroadcastAsync(PushMessage.FromString("b")).AsTask();
        Assert.False(broadcast.IsCompleted);
        if (closeInstead)
        {
            await server.Sessions.FindSession(slow.SessionId)!.CloseAsync().WaitAsync(TestTimeouts.Default);
            Assert.Equal(1, await broadcast.WaitAsync(TestTimeouts.Default));
        }
        else
        {
            await slow.ReceiveContainingAsync("\"m3\"");
            await slow.SendAsync("{\"type\":\"ack\",\"seq\":3}");
            Assert.Equal(2, await broadcast.WaitAsync(TestTimeouts.Default));
        }

        Assert.Equal("b", (await good.ReadAsync(1))[0].GetString());
    }
}
