using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;
using Xunit.Abstractions;

namespace PushKit.IntegrationTests;

/// <summary>Records what the application sees, in order, with a global sequence number.</summary>
public sealed class EventLog
{
    private long _counter;
    public ConcurrentQueue<(long Order, string Session, string Kind, string? Text)> Events { get; } = new();
    public TimeSpan HandlerDelay { get; set; }
    public TaskCompletionSource FirstMessage { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Add(string session, string kind, string? text) => Events.Enqueue((Interlocked.Increment(ref _counter), session, kind, text));

    public List<(long Order, string Session, string Kind, string? Text)> For(string session) =>
        Events.Where(e => e.Session == session).OrderBy(e => e.Order).ToList();
}

public sealed class EventLogHandler(EventLog log) : PushHandler
{
    public override ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken)
    {
        log.Add(session.SessionId!, "started", null);
        return default;
    }

    public override async ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken)
    {
        log.Add(session.SessionId!, "msg-begin", message.GetString());
        log.FirstMessage.TrySetResult();
        if (log.HandlerDelay > TimeSpan.Zero)
        {
            // Ignores cancellation on purpose: a handler doing work that completes.
            await Task.Delay(log.HandlerDelay, CancellationToken.None);
        }

        log.Add(session.SessionId!, "msg-end", message.GetString());
    }

    public override ValueTask OnSessionEndedAsync(IPushSession session, PushCloseCode closeCode)
    {
        log.Add(session.SessionId!, "ended", closeCode.ToString());
        return default;
    }
}

public sealed class HostileClientTests(ITestOutputHelper output)
{
    private static readonly TimeSpan T = TestTimeouts.Default;

    private static async Task<(string SessionId, string Secret)> NegotiateAsync(PushTestServer server, int? maxMessageBytes = null)
    {
        object body = maxMessageBytes is { } max ? new { protocolVersion = 1, maxMessageBytes = max } : new { protocolVersion = 1 };
        using var response = await server.Http.PostAsync(new Uri(server.BaseUrl + "/negotiate"), JsonContent.Create(body)).WaitAsync(T);
        response.EnsureSuccessStatusCode();
        var json = await response.Content.ReadFromJsonAsync<JsonElement>().WaitAsync(T);
        return (json.GetProperty("sessionId").GetString()!, json.GetProperty("resumeSecret").GetString()!);
    }

    private static async Task<RawSocket> ConnectAsync(PushTestServer server, int? maxMessageBytes = null)
    {
        var (id, secret) = await NegotiateAsync(server, maxMessageBytes);
        return await RawSocket.ConnectAsync(server.WebSocketUrl(id, secret), id, secret);
    }

    /// <summary>Receives one message (bytes, type) or null on close; bounded.</summary>
    private static async Task<(byte[] Bytes, WebSocketMessageType Type)?> ReceiveRawAsync(ClientWebSocket socket, TimeSpan timeout)
    {
        var buffer = new byte[64 * 1024];
        using var stream = new MemoryStream();
        using var cts = new CancellationTokenSource(timeout);
        while (true)
        {
            var result = await socket.ReceiveAsync(buffer, cts.Token);
            if (result.MessageType == WebSocketMessageType.Close)
            {
                return null;
            }

            stream.Write(buffer, 0, result.Count);
            if (result.EndOfMessage)
            {
                return (stream.ToArray(), result.MessageType);
            }
        }
    }

    /// <summary>Round-trip latency of a bystander .NET client: send to the server, handler echoes back.</summary>
    private static async Task<TimeSpan> BystanderRoundTripAsync(IPushChannel bystander)
    {
        var sw = Stopwatch.StartNew();
        await bystander.SendStringAsync("bystander-ping").AsTask().WaitAsync(T);
        return sw.Elapsed;
    }

    // ---------------------------------------------------------------- size limits

    [Fact]
    public async Task HostileClient_error_frames_never_make_a_server_batch_exceed_the_client_limit()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.MaxBufferedMessagesPerSession = 1_000_000;
            o.MaxBufferedBytesPerSession = 1L << 31;
            o.HeartbeatInterval = TimeSpan.FromMinutes(5);
            o.HeartbeatTimeout = TimeSpan.FromMinutes(10);
        });
        await using var raw = await ConnectAsync(server, maxMessageBytes: 1024);

        // Fill the pipe to the client (which does not read yet) so that the server's write loop blocks.
        var payload = new string('x', 800);
        for (var i = 0; i < 25_000; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(raw.SessionId, PushMessage.FromString(payload)).AsTask().WaitAsync(T));
        }

        await Task.Delay(1000);

        // Each of these batches earns one error frame; each error frame names the type (64 chars, each escaped to 6 bytes).
        var type = string.Concat(Enumerable.Repeat("\\u0001", 64));
        for (var i = 0; i < 20; i++)
        {
            await raw.SendAsync($"{{\"type\":\"{type}\"}}");
        }

        await Task.Delay(500);

        // Now read everything: no batch may exceed 1024 bytes.
        var largest = 0;
        var errors = 0;
        var messages = 0;
        while (true)
        {
            (byte[] Bytes, WebSocketMessageType Type)? message;
            try
            {
                message = await ReceiveRawAsync(raw.Socket, TimeSpan.FromSeconds(3));
            }
            catch (OperationCanceledException)
            {
                break; // drained
            }

            Assert.NotNull(message);
            largest = Math.Max(largest, message.Value.Bytes.Length);
            var text = Encoding.UTF8.GetString(message.Value.Bytes);
            errors += text.Split('\n').Count(l => l.Contains("\"type\":\"error\"", StringComparison.Ordinal));
            messages += text.Split('\n').Count(l => l.Contains("\"type\":\"msg\"", StringComparison.Ordinal));
            if (message.Value.Bytes.Length > 1024)
            {
                output.WriteLine($"Oversize batch: {message.Value.Bytes.Length} bytes, {text.Split('\n').Length} lines");
                break;
            }
        }

        output.WriteLine($"largest {largest} bytes; {errors} error frames, {messages} msg frames");
        Assert.True(errors >= 1);
        Assert.True(largest <= 1024, $"A server batch of {largest} bytes exceeded the client's negotiated maxMessageBytes of 1024.");
    }

    [Fact]
    public async Task HostileClient_a_type_name_cut_inside_a_surrogate_pair_does_not_kill_the_connection()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var raw = await server.ConnectRawAsync();

        // 63 ASCII characters, then an emoji: truncation at 64 UTF-16 chars splits the pair.
        var type = new string('a', 63) + "\U0001F600" + "tail";
        await raw.SendAsync($"{{\"type\":\"{type}\"}}\n{{\"type\":\"ping\"}}");
        var batch = await raw.ReceiveAsync();
        output.WriteLine(batch ?? "(closed)");
        Assert.NotNull(batch);
        Assert.Contains("unknown_frame_type", batch, StringComparison.Ordinal);

        await raw.SendAsync("{\"type\":\"ping\"}");
        Assert.Contains("pong", await raw.ReceiveContainingAsync("pong"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task HostileClient_big_broadcasts_skip_a_1024_byte_client_and_reach_the_others()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var small = await ConnectAsync(server, maxMessageBytes: 1024);
        var normal = await server.ConnectClientAsync("websocket");

        var accepted = await server.Sender.BroadcastAsync(PushMessage.FromString(new string('b', 5000))).AsTask().WaitAsync(T);
        Assert.Equal(1, accepted);
        Assert.Equal(5000, (await normal.ReadAsync(1)).Single().GetString().Length);

        // Exactly 1024 bytes on the wire at most, with every seq width.
        var fits = new string('c', 1024 - 200);
        await server.Sender.BroadcastAsync(PushMessage.FromString(fits)).AsTask().WaitAsync(T);
        var message = await ReceiveRawAsync(small.Socket, T);
        Assert.NotNull(message);
        Assert.True(message.Value.Bytes.Length <= 1024);
    }

    // ---------------------------------------------------------------- floods

    [Fact]
    public async Task HostileClient_one_message_of_60000_pings_gets_one_pong()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var raw = await server.ConnectRawAsync();
        var batch = string.Join("\n", Enumerable.Repeat("{\"type\":\"ping\"}", 60_000));
        await raw.SendAsync(batch);
        var reply = await raw.ReceiveAsync();
        Assert.NotNull(reply);
        Assert.All(reply.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => Assert.Equal("{\"type\":\"pong\"}", l));
        Assert.True(reply.Length <= 1024);
        await raw.SendAsync("{\"type\":\"ping\"}");
        Assert.Contains("pong", await raw.ReceiveContainingAsync("pong"), StringComparison.Ordinal);
        Assert.Equal(WebSocketState.Open, raw.Socket.State);
    }

    [Fact]
    public async Task HostileClient_floods_from_one_socket_do_not_starve_a_bystander()
    {
        var log = new EventLog();
        await using var server = await PushTestServer.StartAsync(push => push.AddHandler<EventLogHandler>(),
            configureBuilder: b => b.Services.AddSingleton(log));
        var bystander = await server.ConnectClientAsync("websocket");
        var memBefore = GC.GetTotalMemory(forceFullCollection: true);
        var baseline = TimeSpan.Zero;
        for (var i = 0; i < 20; i++)
        {
            baseline += await BystanderRoundTripAsync(bystander);
        }

        baseline /= 20;

        await using var raw = await server.ConnectRawAsync();
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(6));
        long sentBatches = 0;
        var unknown = string.Join("\n", Enumerable.Range(0, 2000).Select(i => $"{{\"type\":\"x{i}\",\"a\":[1,2,3]}}"));
        var pings = string.Join("\n", Enumerable.Repeat("{\"type\":\"ping\"}", 5000));
        var acks = string.Join("\n", Enumerable.Repeat("{\"type\":\"ack\",\"seq\":0}", 5000));
        var seq = 0L;
        var flood = Task.Run(async () =>
        {
            // Never reads.
            while (!stop.IsCancellationRequested)
            {
                var k = sentBatches % 4;
                string batch = k switch
                {
                    0 => unknown,
                    1 => pings,
                    2 => acks,
                    _ => string.Join("\n", Enumerable.Range(0, 200).Select(_ => $"{{\"type\":\"msg\",\"seq\":{++seq},\"data\":\"t\"}}")),
                };
                await raw.Socket.SendAsync(Encoding.UTF8.GetBytes(batch), WebSocketMessageType.Text, true, CancellationToken.None).WaitAsync(T);
                sentBatches++;
            }
        });

        await Task.Delay(500);
        var worst = TimeSpan.Zero;
        var total = TimeSpan.Zero;
        var n = 0;
        while (!stop.IsCancellationRequested)
        {
            var rtt = await BystanderRoundTripAsync(bystander);
            worst = rtt > worst ? rtt : worst;
            total += rtt;
            n++;
        }

        try
        {
            await flood.WaitAsync(T);
        }
        catch (OperationCanceledException)
        {
        }
        catch (WebSocketException ex)
        {
            output.WriteLine("flood ended: " + ex.Message);
        }

        output.WriteLine($"baseline {baseline.TotalMilliseconds:F1} ms; under flood avg {(total / Math.Max(n, 1)).TotalMilliseconds:F1} ms, worst {worst.TotalMilliseconds:F1} ms over {n}; flood batches {sentBatches}, msgs {seq}");
        var memAfter = GC.GetTotalMemory(forceFullCollection: true);
        output.WriteLine($"managed heap before {memBefore / 1024} KiB, after {memAfter / 1024} KiB; handled {log.Events.Count(e => e.Kind == "msg-end")}");
        Assert.True(worst < TimeSpan.FromSeconds(2), $"worst bystander round trip {worst}");
        Assert.Equal(WebSocketState.Open, raw.Socket.State);
    }

    [Fact]
    public async Task HostileClient_acks_for_every_seq_repeatedly_and_backwards_are_harmless()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var raw = await server.ConnectRawAsync();
        for (var i = 1; i <= 50; i++)
        {
            await server.Sender.SendToSessionAsync(raw.SessionId, PushMessage.FromString($"m{i}")).AsTask().WaitAsync(T);
        }

        var seen = 0;
        while (seen < 50)
        {
            var b = await raw.ReceiveAsync();
            Assert.NotNull(b);
            seen += b.Split('\n').Count(l => l.Contains("\"type\":\"msg\"", StringComparison.Ordinal));
        }

        var sb = new StringBuilder();
        for (var round = 0; round < 20; round++)
        {
            for (var s = 50; s >= 0; s--)
            {
                sb.Append("{\"type\":\"ack\",\"seq\":").Append(s).Append("}\n");
            }
        }

        await raw.SendAsync(sb.ToString());
        await raw.SendAsync("{\"type\":\"ack\",\"seq\":3}\n{\"type\":\"ping\"}");
        Assert.Contains("pong", await raw.ReceiveContainingAsync("pong"), StringComparison.Ordinal);
        Assert.Equal(0, server.Sessions.FindSession(raw.SessionId)!.UnacknowledgedCount());
    }

    // ---------------------------------------------------------------- sequence games

    [Fact]
    public async Task HostileClient_sequence_games_are_answered_per_protocol()
    {
        var log = new EventLog();
        await using var server = await PushTestServer.StartAsync(push => push.AddHandler<EventLogHandler>(),
            configureBuilder: b => b.Services.AddSingleton(log));

        // Starting at 5: gap, 4400.
        await using (var raw = await server.ConnectRawAsync())
        {
            await raw.SendAsync("{\"type\":\"msg\",\"seq\":5,\"data\":\"five\"}");
            var (status, _) = await raw.ReceiveCloseAsync();
            Assert.Equal(4400, status);
            Assert.DoesNotContain(log.For(raw.SessionId), e => e.Kind == "msg-begin");
        }

        // Duplicates with different content, and going backwards: the first content only, each once.
        await using (var raw = await server.ConnectRawAsync())
        {
            await raw.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"one\"}\n{\"type\":\"msg\",\"seq\":1,\"data\":\"ONE\"}\n{\"type\":\"msg\",\"seq\":2,\"data\":\"two\"}\n{\"type\":\"msg\",\"seq\":1,\"data\":\"uno\"}");
            var ack = await raw.ReceiveContainingAsync("\"type\":\"ack\"");
            await raw.SendAsync("{\"type\":\"msg\",\"seq\":2,\"data\":\"TWO\"}\n{\"type\":\"msg\",\"seq\":3,\"data\":\"three\"}");
            await raw.ReceiveContainingAsync("\"seq\":3");
            await Eventually.TrueAsync(() => log.For(raw.SessionId).Count(e => e.Kind == "msg-end") == 3);
            Assert.Equal(["one", "two", "three"], log.For(raw.SessionId).Where(e => e.Kind == "msg-begin").Select(e => e.Text));
        }

        // Skip with the largest seq, then a message: 4400, but nothing delivered out of order and no crash.
        await using (var raw = await server.ConnectRawAsync())
        {
            await raw.SendAsync($"{{\"type\":\"skip\",\"seq\":{long.MaxValue}}}");
            var ack = await raw.ReceiveContainingAsync("\"type\":\"ack\"");
            Assert.Contains(long.MaxValue.ToString(System.Globalization.CultureInfo.InvariantCulture), ack, StringComparison.Ordinal);
            await raw.SendAsync($"{{\"type\":\"msg\",\"seq\":{long.MaxValue},\"data\":\"dup\"}}\n{{\"type\":\"ping\"}}");
            await raw.ReceiveContainingAsync("pong");
            await raw.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"old\"}\n{\"type\":\"ping\"}");
            await raw.ReceiveContainingAsync("pong");
            Assert.DoesNotContain(log.For(raw.SessionId), e => e.Kind == "msg-begin");
        }
    }

    [Fact]
    public async Task HostileClient_an_ack_for_the_previous_connection_after_a_resume_is_valid()
    {
        await using var server = await PushTestServer.StartAsync();
        var (id, secret) = await NegotiateAsync(server);
        var first = await RawSocket.ConnectAsync(server.WebSocketUrl(id, secret), id, secret);
        for (var i = 1; i <= 5; i++)
        {
            await server.Sender.SendToSessionAsync(id, PushMessage.FromString($"m{i}")).AsTask().WaitAsync(T);
        }

        var seen = 0;
        while (seen < 5)
        {
            seen += (await first.ReceiveAsync())!.Split('\n').Count(l => l.Contains("\"type\":\"msg\"", StringComparison.Ordinal));
        }

        first.Socket.Abort();
        await first.DisposeAsync();
        await using var second = await RawSocket.ConnectAsync(server.WebSocketUrl(id, secret), id, secret);
        // The replay arrives; ack 3 (seen on the previous connection), then 5, then 2 (backwards).
        await second.ReceiveContainingAsync("\"seq\":5");
        await second.SendAsync("{\"type\":\"ack\",\"seq\":3}\n{\"type\":\"ack\",\"seq\":5}\n{\"type\":\"ack\",\"seq\":2}\n{\"type\":\"ping\"}");
        await second.ReceiveContainingAsync("pong");
        Assert.Equal(0, server.Sessions.FindSession(id)!.UnacknowledgedCount());
        await second.SendAsync("{\"type\":\"ack\",\"seq\":6}");
        var (status, _) = await second.ReceiveCloseAsync();
        Assert.Equal(4400, status);
    }

    // ---------------------------------------------------------------- connection games

    [Fact]
    public async Task HostileClient_a_supersede_storm_leaves_one_working_connection_and_bystanders_unharmed()
    {
        var log = new EventLog();
        await using var server = await PushTestServer.StartAsync(push => push.AddHandler<EventLogHandler>(),
            configureBuilder: b => b.Services.AddSingleton(log));
        var bystander = await server.ConnectClientAsync("websocket");
        var (id, secret) = await NegotiateAsync(server);
        var sw = Stopwatch.StartNew();
        var sockets = (await Task.WhenAll(Enumerable.Range(0, 30).Select(_ => Task.Run(async () =>
        {
            try
            {
                return await RawSocket.ConnectAsync(server.WebSocketUrl(id, secret), id, secret);
            }
            catch (Exception ex) when (ex is WebSocketException or TimeoutException)
            {
                return null;
            }
        }))).WaitAsync(T)).Where(s => s is not null).Select(s => s!).ToList();
        output.WriteLine($"{sockets.Count} of 30 accepted in {sw.ElapsedMilliseconds} ms");
        var rtt = await BystanderRoundTripAsync(bystander);
        output.WriteLine($"bystander rtt during storm: {rtt.TotalMilliseconds} ms");

        // Every socket reads, answers pings and answers a close at once, like a well-behaved client would.
        var closed = new ConcurrentBag<int?>();
        var readers = sockets.Select(s => Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    var m = await ReceiveRawAsync(s.Socket, TimeSpan.FromSeconds(90));
                    if (m is null)
                    {
                        closed.Add((int?)s.Socket.CloseStatus);
                        await s.Socket.CloseOutputAsync(s.Socket.CloseStatus ?? WebSocketCloseStatus.NormalClosure, null, CancellationToken.None);
                        return;
                    }

                    if (Encoding.UTF8.GetString(m.Value.Bytes).Contains("\"type\":\"ping\"", StringComparison.Ordinal))
                    {
                        await s.SendAsync("{\"type\":\"pong\"}");
                    }
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or WebSocketException)
            {
                closed.Add(-1);
            }
        })).ToList();
        await Eventually.TrueAsync(() => closed.Count >= sockets.Count - 1);
        output.WriteLine($"settled after {sw.ElapsedMilliseconds} ms: " + string.Join(", ", closed.GroupBy(c => c).Select(g => $"{g.Key} x{g.Count()}")));
        Assert.All(closed, c => Assert.Equal(4409, c));
        Assert.Single(log.For(id), e => e.Kind == "started");
        var live = Assert.Single(sockets, s => s.Socket.State == WebSocketState.Open);
        await live.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"after storm\"}");
        await Eventually.TrueAsync(() => log.For(id).Any(e => e.Kind == "msg-end" && e.Text == "after storm"));
        Assert.True(await server.Sender.SendToSessionAsync(id, PushMessage.FromString("to the winner")).AsTask().WaitAsync(T));
        foreach (var s in sockets)
        {
            s.Socket.Abort();
            s.Socket.Dispose();
        }
    }

    [Fact]
    public async Task HostileClient_a_client_that_never_reads_is_ended_4429_and_its_connection_is_cut()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.MaxBufferedMessagesPerSession = 4_000;
            o.MaxBufferedBytesPerSession = 1L << 30;
        });
        var bystander = await server.ConnectClientAsync("websocket");
        await using var raw = await server.ConnectRawAsync();
        var session = server.Sessions.FindSession(raw.SessionId)!;

        // Keep the client talking (pings) but never read.
        using var stop = new CancellationTokenSource();
        var talker = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    await raw.Socket.SendAsync("{\"type\":\"ping\"}"u8.ToArray(), WebSocketMessageType.Text, true, stop.Token);
                    await Task.Delay(100, stop.Token);
                }
                catch (Exception)
                {
                    return;
                }
            }
        });

        var payload = PushMessage.FromString(new string('z', 60_000));
        var sent = 0;
        var sw = Stopwatch.StartNew();
        while (await server.Sender.SendToSessionAsync(raw.SessionId, payload).AsTask().WaitAsync(T))
        {
            sent++;
            if (sent == 1000)
            {
                // Let the write loop fill the pipe and block before the session ends.
                await Task.Delay(2000);
            }

            Assert.True(sw.Elapsed < T);
        }

        output.WriteLine($"ended after {sent} messages; state {session.State}");
        Assert.Equal(PushChannelState.Closed, session.State);

        // The connection is cut soon after the session ends (protocol 5.6), although the client keeps talking: its
        // close frame cannot go out, so the server does not wait for it for ever. Before the fix it stayed open.
        var endedAt = Stopwatch.StartNew();
        await Eventually.TrueAsync(() => session.Transport is null);
        output.WriteLine($"connection released {endedAt.ElapsedMilliseconds} ms after the end");

        // Broadcasts to others still work.
        await server.Sender.BroadcastAsync(PushMessage.FromString("hello all")).AsTask().WaitAsync(T);
        Assert.Equal("hello all", (await bystander.ReadAsync(1)).Single().GetString());
        await stop.CancelAsync();
        await talker.WaitAsync(T);
    }
}

public sealed class HostileClientAppTests(ITestOutputHelper output)
{
    private static readonly TimeSpan T = TestTimeouts.Default;

    [Fact]
    public async Task HostileClient_cannot_make_OnMessageAsync_start_after_OnSessionEndedAsync()
    {
        var log = new EventLog { HandlerDelay = TimeSpan.FromMilliseconds(100) };
        await using var server = await PushTestServer.StartAsync(push => push.AddHandler<EventLogHandler>(),
            o => o.MaxBufferedMessagesPerSession = 5,
            configureBuilder: b => b.Services.AddSingleton(log));
        await using var raw = await server.ConnectRawAsync();

        // 60 messages in one batch; the client then never reads, never acks, never answers a close.
        await raw.SendAsync(string.Join("\n", Enumerable.Range(1, 60).Select(i => $"{{\"type\":\"msg\",\"seq\":{i},\"data\":\"m{i}\"}}")));
        await log.FirstMessage.Task.WaitAsync(T);

        // The application pushes to it; the client does not ack: 4429 ends the session.
        for (var i = 0; i < 10; i++)
        {
            await server.Sender.SendToSessionAsync(raw.SessionId, PushMessage.FromString($"s{i}")).AsTask().WaitAsync(T);
        }

        // The session ends; the handler that was running then finishes (it ignores its token).
        await Eventually.TrueAsync(() => log.For(raw.SessionId).Any(e => e.Kind == "ended"));
        await Eventually.TrueAsync(() => log.For(raw.SessionId) is var seen && seen.Count(e => e.Kind == "msg-begin") == seen.Count(e => e.Kind == "msg-end"));

        // Nothing more may start (no event to await for 'nothing': a short real pause, three handler durations). Before
        // the fix, the next of the 59 queued messages started right after the running one finished.
        await Task.Delay(300);
        var events = log.For(raw.SessionId);
        output.WriteLine(string.Join(" ", events.Select(e => $"{e.Kind}:{e.Text}")));
        var ended = events.FindIndex(e => e.Kind == "ended");
        Assert.True(ended >= 0, "session did not end");
        var lateStarts = events.Skip(ended + 1).Count(e => e.Kind == "msg-begin");
        Assert.True(lateStarts == 0, $"{lateStarts} OnMessageAsync calls started after OnSessionEndedAsync");
    }

    [Fact]
    public async Task HostileClient_a_half_open_client_that_never_answers_close_is_let_go()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var raw = await server.ConnectRawAsync();
        var session = server.Sessions.FindSession(raw.SessionId)!;
        await raw.SendAsync("{\"type\":\"msg\",\"seq\":3,\"data\":\"gap\"}");
        var sw = Stopwatch.StartNew();
        await Eventually.TrueAsync(() => session.State == PushChannelState.Disconnected);
        output.WriteLine($"disconnected after {sw.ElapsedMilliseconds} ms");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(6));
    }

    [Fact]
    public async Task HostileClient_fragments_binary_frames_and_empty_messages()
    {
        await using var server = await PushTestServer.StartAsync(options: o => o.MaxMessageBytes = 4096);

        // Over the limit in 1-byte fragments: 4413, without buffering it all.
        await using (var raw = await server.ConnectRawAsync())
        {
            var bytes = Encoding.UTF8.GetBytes("{\"type\":\"ping\"}" + new string(' ', 10_000));
            Exception? sendError = null;
            try
            {
                for (var i = 0; i < bytes.Length; i++)
                {
                    await raw.Socket.SendAsync(bytes.AsMemory(i, 1), WebSocketMessageType.Text, i == bytes.Length - 1, CancellationToken.None).AsTask().WaitAsync(T);
                }
            }
            catch (Exception ex) when (ex is WebSocketException or IOException)
            {
                sendError = ex;
            }

            var (status, frame) = await raw.ReceiveCloseAsync();
            output.WriteLine($"fragments: {status} {frame} ({sendError?.Message})");
            Assert.Equal(4413, status);
        }

        // A binary message is read like text; an empty message is an empty batch.
        await using (var raw = await server.ConnectRawAsync())
        {
            await raw.Socket.SendAsync(Encoding.UTF8.GetBytes("{\"type\":\"ping\"}"), WebSocketMessageType.Binary, true, CancellationToken.None).WaitAsync(T);
            Assert.Contains("pong", await raw.ReceiveContainingAsync("pong"), StringComparison.Ordinal);
            await raw.Socket.SendAsync(Array.Empty<byte>(), WebSocketMessageType.Text, true, CancellationToken.None).WaitAsync(T);
            await raw.SendAsync("\n\n\r\n");
            await raw.SendAsync("{\"type\":\"ping\"}");
            Assert.Contains("pong", await raw.ReceiveContainingAsync("pong"), StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task HostileClient_websocket_control_frames_alone_do_not_keep_a_connection_alive()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.HeartbeatInterval = TimeSpan.FromMilliseconds(500);
            o.HeartbeatTimeout = TimeSpan.FromSeconds(1.5);
        });
        var (id, secret) = (await server.NegotiateRawAsync()) is var n ? (n.SessionId, n.Secret) : default;
        var socket = new ClientWebSocket();
        socket.Options.KeepAliveInterval = TimeSpan.FromMilliseconds(50); // unsolicited pongs
        await socket.ConnectAsync(server.WebSocketUrl(id, secret), CancellationToken.None).WaitAsync(T);
        var session = server.Sessions.FindSession(id)!;
        var sw = Stopwatch.StartNew();
        await Eventually.TrueAsync(() => session.State == PushChannelState.Disconnected);
        output.WriteLine($"timed out after {sw.ElapsedMilliseconds} ms");
        socket.Dispose();
    }
}

internal static class SessionTestExtensions
{
    public static int UnacknowledgedCount(this IPushSession session) => ((PushKit.Server.Sessions.PushSession)session).Engine.UnacknowledgedCount;
}
