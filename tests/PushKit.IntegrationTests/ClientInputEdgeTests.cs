using System.Net.WebSockets;
using Microsoft.Extensions.DependencyInjection;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>
/// What a client sends at the edges of the session's life, handled as the protocol says: a <c>skip</c> reaches the
/// application after its start handlers and cannot be stopped by a throwing subscriber; a new connection behind a busy
/// handler is dropped in time (C1.2); messages waiting for <c>ReadAllAsync</c> are bounded in bytes.
/// </summary>
[Collection(LargeBodiesCollection.Name)]
public sealed class ClientInputEdgeTests
{
    private const string SkipThenMessage = "{\"type\":\"skip\",\"seq\":3}\n{\"type\":\"msg\",\"seq\":4,\"contentType\":\"text/plain\",\"data\":\"after the gap\"}\n";

    [Fact]
    public async Task A_skip_at_session_start_reaches_a_MessagesDropped_handler_subscribed_in_OnSessionStarted()
    {
        // A DropOldest client that overflowed while offline sends exactly this as its first frame.
        var probe = new DropProbe { HoldStart = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = await StartAsync(probe);
        await using var socket = await server.ConnectRawAsync();
        var inbox = new Inbox(socket.Socket);
        await probe.Starting.Task.WaitAsync(TestTimeouts.Default);

        // The skip arrives while the start handler is still loading the user's state, before it subscribes: it waits
        // for the handler, as a message does, so it is not applied (nor acknowledged) meanwhile.
        await socket.SendAsync("{\"type\":\"skip\",\"seq\":3}");
        Assert.Null(await inbox.NextWithinAsync(TimeSpan.FromSeconds(1)));
        probe.HoldStart.SetResult();

        Assert.Equal(3, await probe.Dropped.Task.WaitAsync(TestTimeouts.Default));
        await socket.SendAsync("{\"type\":\"msg\",\"seq\":4,\"contentType\":\"text/plain\",\"data\":\"after the gap\"}");
        Assert.Equal("after the gap", (await probe.Messages.Task.WaitAsync(TestTimeouts.Default)).GetString());
        await inbox.WaitForAckAsync(4);
    }

    [Fact]
    public async Task A_MessagesDropped_handler_that_throws_neither_blocks_the_session_nor_hides_the_gap_from_the_next_handler()
    {
        var probe = new DropProbe { ThrowInDropped = true };
        await using var server = await StartAsync(probe);
        await using var socket = await server.ConnectRawAsync();
        await probe.Subscribed.Task.WaitAsync(TestTimeouts.Default);

        await socket.SendAsync(SkipThenMessage);

        // The message behind the skip is delivered and acknowledged on the same connection: it is not cut.
        Assert.Contains("\"type\":\"ack\",\"seq\":4}", await socket.ReceiveContainingAsync("\"type\":\"ack\",\"seq\":4}"), StringComparison.Ordinal);
        Assert.Equal(3, await probe.Dropped.Task.WaitAsync(TestTimeouts.Default));
        Assert.Equal(3, await probe.DroppedToTheNext.Task.WaitAsync(TestTimeouts.Default));
        Assert.Equal("after the gap", (await probe.Messages.Task.WaitAsync(TestTimeouts.Default)).GetString());
        Assert.Equal(WebSocketState.Open, socket.Socket.State);
    }

    [Fact]
    public async Task A_client_MessagesDropped_handler_that_throws_neither_cuts_the_connection_nor_hides_the_gap_from_the_next_handler()
    {
        var connections = 0;
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                // A server whose DropOldest buffer overflowed: a skip, then the message after the gap.
                Interlocked.Increment(ref connections);
                await FakePushServer.SendTextAsync(ws, "{\"type\":\"skip\",\"seq\":3}\n{\"type\":\"msg\",\"seq\":4,\"contentType\":\"text/plain\",\"data\":\"after the gap\"}\n");
                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is not null)
                {
                }
            });
        });
        await using var channel = HostileServerTests.Client(server, "websocket");
        var dropped = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        var droppedToTheNext = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        channel.MessagesDropped += (_, e) =>
        {
            dropped.TrySetResult(e.Count);
            throw new InvalidOperationException("An application bug in a MessagesDropped handler.");
        };
        channel.MessagesDropped += (_, e) => droppedToTheNext.TrySetResult(e.Count);
        await channel.ConnectAsync().WaitAsync(TestTimeouts.Default);

        Assert.Equal(3, await dropped.Task.WaitAsync(TestTimeouts.Default));
        Assert.Equal(3, await droppedToTheNext.Task.WaitAsync(TestTimeouts.Default));
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        await foreach (var message in channel.ReadAllAsync(timeout.Token))
        {
            Assert.Equal("after the gap", message.GetString());
            break;
        }

        // Delivered on the first connection, which carries on: the handler's exception did not cut it.
        Assert.Equal(PushChannelState.Connected, channel.State);
        Assert.Equal(1, Volatile.Read(ref connections));
    }

    [Fact]
    public async Task A_new_websocket_behind_a_busy_handler_is_dropped_within_seconds_not_left_open_and_silent()
    {
        var busy = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(push => push.OnMessage(async (_, message, _) =>
        {
            if (message.GetString() == "work")
            {
                busy.TrySetResult();
                // Busy, and not listening to its token (for longer than the test looks at the new connection).
                await release.Task.WaitAsync(3 * TestTimeouts.Default);
            }
        }));
        try
        {
            await using var first = await server.ConnectRawAsync();
            await first.SendAsync("{\"type\":\"msg\",\"seq\":1,\"contentType\":\"text/plain\",\"data\":\"work\"}");
            await busy.Task.WaitAsync(TestTimeouts.Default);

            // C1.2: 1 s for the old connection to close, 1 s more after it is cut; then the new one is dropped,
            // rather than left open with nothing on it for as long as the handler takes.
            await using var second = await RawSocket.ConnectAsync(server.WebSocketUrl(first.SessionId, first.Secret), first.SessionId, first.Secret);
            var ended = await ReceiveEndAsync(second.Socket, TimeSpan.FromSeconds(10));
            Assert.NotEqual("nothing", ended);
        }
        finally
        {
            release.TrySetResult();
        }
    }

    [Fact]
    public async Task A_new_long_polling_connection_behind_a_busy_handler_is_not_dropped_and_delivers_what_was_posted_to_it()
    {
        // On long-polling a dropped connection cannot be told: its poll is answered empty, and the client's next poll
        // would silently open a new connection, losing what it had POSTed (answered 204) to the dropped one.
        var busy = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var received = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var m2 = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(
            push => push.OnMessage(async (_, message, _) =>
            {
                var text = message.GetString();
                received.Enqueue(text);
                if (text == "work")
                {
                    busy.TrySetResult();
                    await release.Task.WaitAsync(3 * TestTimeouts.Default);
                }
                else if (text == "m2")
                {
                    m2.TrySetResult();
                }
            }),
            o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        try
        {
            var (id, secret, _) = await server.NegotiateRawAsync();
            using var http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
            Uri Url(string path, string extra = "") =>
                new($"{server.BaseUrl}/{path}?session={Uri.EscapeDataString(id)}&secret={Uri.EscapeDataString(secret)}{extra}");
            async Task PostAsync(string body)
            {
                using var response = await http.PostAsync(Url("send"), new StringContent(body)).WaitAsync(TestTimeouts.Default);
                Assert.Equal(System.Net.HttpStatusCode.NoContent, response.StatusCode);
            }

            // Connection A: message 1 keeps the handler busy.
            (await http.GetAsync(Url("poll", "&open=1")).WaitAsync(TestTimeouts.Default)).Dispose();
            await PostAsync(Msg(1, "work"));
            await busy.Task.WaitAsync(TestTimeouts.Default);

            // The client lost A and resumes: B opens, and it replays message 1 and sends message 2 (both accepted).
            (await http.GetAsync(Url("poll", "&open=1")).WaitAsync(TestTimeouts.Default)).Dispose();
            var b = ((PushKit.Server.Sessions.PushSession)server.Sessions.FindSession(id)!).HttpConnection!;
            await PostAsync(Msg(1, "work") + Msg(2, "m2"));

            // Past C1.2's 2 s, B is still there: its polls are answered (empty), and it is not dropped.
            for (var i = 0; i < 3; i++)
            {
                using var poll = await http.GetAsync(Url("poll")).WaitAsync(TestTimeouts.Default);
                Assert.Equal(System.Net.HttpStatusCode.OK, poll.StatusCode);
            }

            Assert.False(b.IsDead);

            // Once the handler returns, B takes over and message 2 is delivered, once.
            release.SetResult();
            var polling = Task.Run(async () =>
            {
                while (!m2.Task.IsCompleted)
                {
                    (await http.GetAsync(Url("poll")).WaitAsync(TestTimeouts.Default)).Dispose();
                }
            });
            await m2.Task.WaitAsync(TestTimeouts.Default);
            await polling.WaitAsync(TestTimeouts.Default);
            Assert.Equal(["work", "m2"], received);
        }
        finally
        {
            release.TrySetResult();
        }

        static string Msg(long seq, string data) => $"{{\"type\":\"msg\",\"seq\":{seq},\"contentType\":\"text/plain\",\"data\":\"{data}\"}}\n";
    }

    [Theory]
    [InlineData("data", 8)]
    [InlineData("topic", 4)]
    [InlineData("headers", 4)]
    public async Task Messages_waiting_for_ReadAllAsync_are_bounded_in_bytes_whatever_carries_them_and_none_is_lost(string where, int fit)
    {
        const int Messages = 40;
        await using var server = await PushTestServer.StartAsync(options: o => o.MaxBufferedBytesPerSession = 8 * 1024 * 1024);
        await using var socket = await server.ConnectRawAsync();
        var filler = new string('b', 1_000_000 - 4);

        // Sent beside the rest: the server stops reading once its own queue is full, so the sends finish only after
        // the application has read.
        var sending = Task.Run(async () =>
        {
            for (var seq = 1; seq <= Messages; seq++)
            {
                var bulk = $"{seq:D4}{filler}";
                var fields = where switch
                {
                    "data" => $"\"contentType\":\"text/plain\",\"data\":\"{bulk}\"",
                    "topic" => $"\"topic\":\"{bulk}\",\"contentType\":\"text/plain\",\"data\":\"x\"",
                    _ => $"\"headers\":{{\"h\":\"{bulk}\"}},\"contentType\":\"text/plain\",\"data\":\"x\"",
                };
                await socket.SendAsync($"{{\"type\":\"msg\",\"seq\":{seq},{fields}}}");
            }
        });

        // Nobody reads the session: what fits in its 8 MiB is acknowledged, and no more (the count bound, 1,024, took
        // all 40: up to a gigabyte or two per session). A million bytes of payload fit eight times; a million
        // characters of topic or header take 2 MB as a string, and fit four times. Acks are read until none comes for 1 s.
        var inbox = new Inbox(socket.Socket);
        var highestAck = 0L;
        while (await inbox.NextWithinAsync(TimeSpan.FromSeconds(1)) is { } batch)
        {
            highestAck = Math.Max(highestAck, Inbox.HighestAck(batch));
        }

        Assert.InRange(highestAck, 0, fit);

        // Reading makes room: every message arrives, in order, and all are acknowledged.
        var session = server.Sessions.FindSession(socket.SessionId)!;
        var expected = 1;
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        await foreach (var message in session.ReadAllAsync(timeout.Token))
        {
            var bulk = where switch
            {
                "data" => message.GetString(),
                "topic" => message.Topic!,
                _ => message.Headers!["h"],
            };
            Assert.Equal($"{expected:D4}", bulk[..4]);
            if (++expected > Messages)
            {
                break;
            }
        }

        await sending.WaitAsync(TestTimeouts.Default);
        await inbox.WaitForAckAsync(Messages);
    }

    private static Task<PushTestServer> StartAsync(DropProbe probe) => PushTestServer.StartAsync(push =>
    {
        push.Services.AddSingleton(probe);
        push.AddHandler<DropProbeHandler>();
    });

    /// <summary>What a connection sees next: "a frame", "closed", "dropped" (the connection cut), or "nothing" in time.</summary>
    private static async Task<string> ReceiveEndAsync(WebSocket socket, TimeSpan within)
    {
        using var wait = new CancellationTokenSource(within);
        try
        {
            var result = await socket.ReceiveAsync(new byte[4096], wait.Token);
            return result.MessageType == WebSocketMessageType.Close ? "closed" : "a frame";
        }
        catch (OperationCanceledException)
        {
            return "nothing";
        }
        catch (WebSocketException)
        {
            return "dropped";
        }
    }

    /// <summary>
    /// Reads a raw WebSocket with one receive kept pending, so that a bounded look for something that must not come
    /// does not cancel a receive (which would abort the socket).
    /// </summary>
    private sealed class Inbox(WebSocket socket)
    {
        private readonly byte[] _buffer = new byte[64 * 1024];
        private Task<WebSocketReceiveResult>? _pending;

        /// <summary>The next message (or fragment) as text if one comes within <paramref name="within"/>, else null.</summary>
        public async Task<string?> NextWithinAsync(TimeSpan within)
        {
            _pending ??= socket.ReceiveAsync(_buffer, CancellationToken.None);
            if (await Task.WhenAny(_pending, Task.Delay(within)) != _pending)
            {
                return null;
            }

            var result = await _pending;
            _pending = null;
            return System.Text.Encoding.UTF8.GetString(_buffer, 0, result.Count);
        }

        public async Task WaitForAckAsync(long sequence)
        {
            var deadline = DateTime.UtcNow + TestTimeouts.Default;
            while (DateTime.UtcNow < deadline)
            {
                if (await NextWithinAsync(deadline - DateTime.UtcNow) is not { } batch)
                {
                    break;
                }

                if (HighestAck(batch) >= sequence)
                {
                    return;
                }
            }

            throw new TimeoutException($"No ack for {sequence} within {TestTimeouts.Default}.");
        }

        public static long HighestAck(string batch)
        {
            var highest = 0L;
            foreach (System.Text.RegularExpressions.Match ack in System.Text.RegularExpressions.Regex.Matches(batch, "\"type\":\"ack\",\"seq\":(\\d+)"))
            {
                highest = Math.Max(highest, long.Parse(ack.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
            }

            return highest;
        }
    }

    public sealed class DropProbe
    {
        public bool ThrowInDropped { get; init; }

        public TaskCompletionSource? HoldStart { get; init; }

        public TaskCompletionSource Starting { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Subscribed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource<long> Dropped { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource<long> DroppedToTheNext { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource<PushMessage> Messages { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public sealed class DropProbeHandler(DropProbe probe) : PushHandler
    {
        public override async ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken)
        {
            probe.Starting.TrySetResult();
            if (probe.HoldStart is { } hold)
            {
                // Loads the user's state first, as start handlers do.
                await hold.Task.WaitAsync(TestTimeouts.Default, cancellationToken);
            }

            session.MessagesDropped += (_, e) =>
            {
                probe.Dropped.TrySetResult(e.Count);
                if (probe.ThrowInDropped)
                {
                    throw new InvalidOperationException("An application bug in a MessagesDropped handler.");
                }
            };

            // Another component's subscriber, after the one that may throw.
            session.MessagesDropped += (_, e) => probe.DroppedToTheNext.TrySetResult(e.Count);
            probe.Subscribed.TrySetResult();
        }

        public override ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken)
        {
            probe.Messages.TrySetResult(message);
            return default;
        }
    }
}
