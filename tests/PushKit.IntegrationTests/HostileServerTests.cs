using System.Net.WebSockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// The .NET client against a broken or hostile server (a hand-written one, <see cref="FakePushServer"/>): whatever the
/// server sends, the client fails with a clear error or recovers, and never crashes, spins, hangs or buffers without
/// bound. Several probes pass on older code too; they stay as guards.
/// </summary>
public sealed class HostileServerTests
{
    private static readonly TimeSpan T = TimeSpan.FromSeconds(30);

    internal static IPushChannel Client(FakePushServer server, string transport, Action<PushClientOptions>? configure = null)
    {
        return new PushChannelBuilder().WithUrl(server.BaseUrl).Configure(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName(transport));
            o.ConnectTimeout = TimeSpan.FromSeconds(5);
            o.ReconnectDelay = TimeSpan.FromMilliseconds(200);
            o.MaxReconnectDelay = TimeSpan.FromSeconds(1);
            configure?.Invoke(o);
        }).Build();
    }

    internal static Task<PushChannelStateChangedEventArgs> Next(IPushChannel ch, PushChannelState s) => ch.NextStateAsync(s);

    private static string Msg(long seq, string data) =>
        $"{{\"type\":\"msg\",\"seq\":{seq},\"contentType\":\"text/plain\",\"data\":\"{data}\"}}";

    // ---------------------------------------------------------------- negotiate

    [Theory]
    [InlineData("limits")]
    [InlineData("transports")]
    [InlineData("heartbeat")]
    [InlineData("sessionId")]
    [InlineData("hugeHeartbeat")]
    public async Task HostileServer_negotiate_null_or_absurd_fields_fail_with_PushConnectException(string field)
    {
        var json = field switch
        {
            "limits" => FakePushServer.NegotiateJson(limits: "null"),
            "transports" => FakePushServer.NegotiateJson(transports: "null"),
            "heartbeat" => FakePushServer.NegotiateJson(heartbeat: "null"),
            "sessionId" => FakePushServer.NegotiateJson(sessionId: "null"),
            _ => FakePushServer.NegotiateJson(heartbeat: "{\"intervalMs\":900000000000000000,\"timeoutMs\":900000000000000001}"),
        };
        await using var server = await FakePushServer.StartAsync(app => FakePushServer.MapNegotiate(app, () => json));
        await using var ch = Client(server, "websocket");
        var ex = await Record.ExceptionAsync(() => ch.ConnectAsync().WaitAsync(T));
        Assert.NotNull(ex);
        Assert.True(ex is PushConnectException, $"Expected PushConnectException, got {ex.GetType().FullName}: {ex.Message}");
    }

    [Fact]
    public async Task HostileServer_negotiate_503_with_retry_after_is_PushConnectException()
    {
        await using var server = await FakePushServer.StartAsync(app => app.MapPost("/push/negotiate", ctx =>
        {
            ctx.Response.StatusCode = 503;
            ctx.Response.Headers.RetryAfter = "3600";
            return ctx.Response.WriteAsync("<html>down</html>");
        }));
        await using var ch = Client(server, "websocket");
        var ex = await Assert.ThrowsAsync<PushConnectException>(() => ch.ConnectAsync().WaitAsync(T));
        Assert.Equal(503, ex.StatusCode);
        Assert.Equal(PushChannelState.Disconnected, ch.State);
    }

    [Fact]
    public async Task HostileServer_negotiate_non_json_and_empty_transports_are_clear_errors()
    {
        var answer = 0;
        await using var server = await FakePushServer.StartAsync(app => app.MapPost("/push/negotiate", ctx =>
        {
            ctx.Response.ContentType = "text/html";
            return ctx.Response.WriteAsync(Interlocked.Increment(ref answer) == 1 ? "<html>hi</html>" : FakePushServer.NegotiateJson(transports: "[\"carrier-pigeon\",\"\"]"));
        }));
        await using var ch = Client(server, "websocket");
        await Assert.ThrowsAsync<PushConnectException>(() => ch.ConnectAsync().WaitAsync(T));
        var ex = await Assert.ThrowsAsync<PushConnectException>(() => ch.ConnectAsync().WaitAsync(T));
        Assert.Contains("not offered", ex.Message);
    }

    [Fact]
    public async Task HostileServer_negotiate_body_that_never_ends_is_bounded_by_ConnectTimeout()
    {
        await using var server = await FakePushServer.StartAsync(app => app.MapPost("/push/negotiate", async ctx =>
        {
            ctx.Response.ContentType = "application/json";
            await ctx.Response.WriteAsync("{\"protocolVersion\":1,\"pad\":\"");
            var chunk = Encoding.ASCII.GetBytes(new string('a', 1024));
            while (!ctx.RequestAborted.IsCancellationRequested)
            {
                await ctx.Response.Body.WriteAsync(chunk, ctx.RequestAborted);
                await Task.Delay(50, ctx.RequestAborted);
            }
        }));
        await using var ch = Client(server, "websocket", o => o.ConnectTimeout = TimeSpan.FromSeconds(2));
        await Assert.ThrowsAsync<PushConnectException>(() => ch.ConnectAsync().WaitAsync(T));
    }

    [Fact]
    public async Task HostileServer_sse_stream_whose_first_event_is_too_big_counts_as_sse_not_working()
    {
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(transports: "[\"sse\"]"));
            app.MapGet("/push/sse", async ctx =>
            {
                ctx.Response.ContentType = "text/event-stream";
                await ctx.Response.WriteAsync(": " + new string('p', 8 * 1024) + "\n\nevent: open\ndata: {}\n\n");
                await Task.Delay(Timeout.Infinite, ctx.RequestAborted);
            });
        });
        await using var ch = Client(server, "sse", o => o.MaxMessageBytes = 1024);
        var error = await Assert.ThrowsAsync<PushConnectException>(() => ch.ConnectAsync().WaitAsync(T));
        Assert.Contains("sse", error.Message, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------- heartbeat values

    [Fact]
    public async Task HostileServer_huge_heartbeat_interval_does_not_leave_a_dead_Connected_channel()
    {
        // 10^10 ms: TimeSpan-representable, but half of it is beyond what a System.Threading.Timer accepts.
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(heartbeat: "{\"intervalMs\":10000000000,\"timeoutMs\":20000000000}"));
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                await FakePushServer.SendTextAsync(ws, Msg(1, "hello") + "\n");
                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is not null)
                {
                }
            });
        });
        var ch = Client(server, "websocket");
        Exception? connectError = await Record.ExceptionAsync(() => ch.ConnectAsync().WaitAsync(T));
        if (connectError is not null)
        {
            // Refusing the negotiate response would be fine too, as long as it is a PushConnectException.
            Assert.IsType<PushConnectException>(connectError);
            return;
        }

        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        string? got = null;
        try
        {
            await foreach (var m in ch.ReadAllAsync(cts.Token))
            {
                got = m.GetString();
                break;
            }
        }
        catch (OperationCanceledException)
        {
        }

        var disposeError = await Record.ExceptionAsync(() => ch.DisposeAsync().AsTask().WaitAsync(T));
        Assert.True(got == "hello" && disposeError is null,
            $"State {ch.State}; message received: {got ?? "none in 10 s"}; DisposeAsync threw: {disposeError?.GetType().Name}: {disposeError?.Message}");
    }

    [Fact]
    public async Task HostileServer_tiny_heartbeat_interval_still_detects_a_silent_server()
    {
        // intervalMs 1 => CheckPeriod 0.5 ms => a timer with period 0 ms => fires once, never again.
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(heartbeat: "{\"intervalMs\":1,\"timeoutMs\":1000}"));
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                // Reads (so client sends succeed) but never sends anything: a dead server.
                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is not null)
                {
                }
            });
        });
        await using var ch = Client(server, "websocket");
        var reconnecting = Next(ch, PushChannelState.Reconnecting);
        await ch.ConnectAsync().WaitAsync(T);
        var finished = await Task.WhenAny(reconnecting, Task.Delay(TimeSpan.FromSeconds(10)));
        Assert.True(finished == reconnecting, $"Nothing received for 10 s with heartbeat.timeoutMs 1000, yet the channel is still {ch.State}.");
    }

    [Fact]
    public async Task HostileServer_tiny_heartbeat_interval_does_not_make_the_client_flood_pings()
    {
        var pings = 0;
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(heartbeat: "{\"intervalMs\":3,\"timeoutMs\":60000}"));
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                // Answers nothing but keeps the connection 'alive' by sending a pong every 100 ms.
                _ = Task.Run(async () =>
                {
                    while (ws.State == WebSocketState.Open)
                    {
                        await FakePushServer.SendTextAsync(ws, "{\"type\":\"pong\"}\n");
                        await Task.Delay(100);
                    }
                });
                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is { } text)
                {
                    Interlocked.Add(ref pings, text.Split('\n').Count(l => l.Contains("\"ping\"")));
                }
            });
        });
        await using var ch = Client(server, "websocket");
        await ch.ConnectAsync().WaitAsync(T);
        await Task.Delay(TimeSpan.FromSeconds(2));
        var count = Volatile.Read(ref pings);
        Assert.True(count < 50, $"The client sent {count} pings in 2 s because the server said intervalMs=3.");
    }

    // ---------------------------------------------------------------- close frames

    [Fact]
    public async Task HostileServer_huge_retryAfterMs_is_bounded()
    {
        // retryAfterMs 2^31-1 (24.8 days) is a valid close frame (§3.1). One simulated hour later the client must have
        // tried again (a ceiling of minutes, not weeks); the server's usual hints are 1 s and 5 s.
        var time = new TimerReportingTime(new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow));
        var connects = 0;
        var secondConnection = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                if (Interlocked.Increment(ref connects) == 1)
                {
                    await FakePushServer.SendTextAsync(ws, "{\"type\":\"close\",\"code\":1001,\"reason\":\"bye\",\"retryAfterMs\":2147483647}");
                    await ws.CloseOutputAsync((WebSocketCloseStatus)1001, "bye", CancellationToken.None);
                }
                else
                {
                    secondConnection.TrySetResult();
                }

                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is not null)
                {
                }
            });
        });
        await using var ch = Client(server, "websocket", o => o.TimeProvider = time);
        var reconnecting = Next(ch, PushChannelState.Reconnecting);

        // Watched from before the connect: the server closes at once, so the wait may start before ConnectAsync returns.
        var capped = time.WaitForTimerAsync(PushChannel.MaxRetryAfter);
        await ch.ConnectAsync().WaitAsync(T);
        await reconnecting.WaitAsync(T);

        // The client waits the ceiling (its timer exists), not 24.8 days; once it has passed, it comes back.
        await capped.WaitAsync(T);
        time.Advance(PushChannel.MaxRetryAfter);
        await secondConnection.Task.WaitAsync(T);
    }


    [Fact]
    public async Task HostileServer_close_frame_reason_is_bounded_and_on_one_line()
    {
        var reason = "line1\r\nFAKE LOG ENTRY " + new string('x', 200_000);
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                await FakePushServer.SendTextAsync(ws, "{\"type\":\"close\",\"code\":4500,\"reason\":\"" + reason.Replace("\r\n", "\\r\\n") + "\"}");
                await ws.CloseOutputAsync((WebSocketCloseStatus)4500, "x", CancellationToken.None);
                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is not null)
                {
                }
            });
        });
        await using var ch = Client(server, "websocket");
        var reconnecting = Next(ch, PushChannelState.Reconnecting);
        await ch.ConnectAsync().WaitAsync(T);
        var e = await reconnecting.WaitAsync(T);
        Assert.True(e.Reason!.Length < 1200 && !e.Reason.Contains('\n'), $"Reason length {e.Reason.Length}, contains newline: {e.Reason.Contains('\n')}");
    }

    // ---------------------------------------------------------------- frames

    [Fact]
    public async Task HostileServer_duplicates_reorders_gaps_and_replays_deliver_each_message_once_in_order()
    {
        var connects = 0;
        var closeCodes = new List<string>();
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                var n = Interlocked.Increment(ref connects);
                if (n == 1)
                {
                    await FakePushServer.SendTextAsync(ws, Msg(1, "m1") + "\n" + Msg(2, "m2") + "\n" + Msg(2, "m2") + "\n" + Msg(1, "m1") + "\n");
                    // binary message, unknown frame type, CRLF line ending, empty lines
                    await ws.SendAsync(Encoding.UTF8.GetBytes(Msg(3, "m3") + "\r\n\n\n{\"type\":\"bogus\",\"seq\":\"x\"}\n"), WebSocketMessageType.Binary, true, CancellationToken.None);
                    await FakePushServer.SendTextAsync(ws, Msg(5, "m5"));
                }
                else
                {
                    await FakePushServer.SendTextAsync(ws, Msg(1, "m1") + "\n" + Msg(2, "m2") + "\n" + Msg(3, "m3") + "\n" + Msg(4, "m4") + "\n" + Msg(5, "m5") + "\n");
                }

                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is { } text)
                {
                    lock (closeCodes)
                    {
                        closeCodes.Add(text);
                    }
                }
            });
        });
        await using var ch = Client(server, "websocket");
        await ch.ConnectAsync().WaitAsync(T);
        var got = new List<string>();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        try
        {
            await foreach (var m in ch.ReadAllAsync(cts.Token))
            {
                got.Add(m.GetString());
                if (got.Count == 5)
                {
                    break;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }

        await Task.Delay(500);
        Assert.Equal(["m1", "m2", "m3", "m4", "m5"], got);
        lock (closeCodes)
        {
            Assert.Contains(closeCodes, t => t.Contains("\"code\":4400"));
            Assert.Contains(closeCodes, t => t.Contains("unknown_frame_type"));
        }
    }

    [Fact]
    public async Task HostileServer_ack_for_never_sent_message_and_malformed_json_close_4400_and_reconnect()
    {
        var connects = 0;
        var received = new List<string>();
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                var n = Interlocked.Increment(ref connects);
                if (n == 1)
                {
                    await FakePushServer.SendTextAsync(ws, "{\"type\":\"ack\",\"seq\":99}\n");
                }
                else if (n == 2)
                {
                    await FakePushServer.SendTextAsync(ws, "{\"type\":\"msg\",\"seq\":1,\"data\":\"\\ud800\"}\n{not json");
                }

                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is { } text)
                {
                    lock (received)
                    {
                        received.Add(n + ":" + text);
                    }
                }
            });
        });
        await using var ch = Client(server, "websocket");
        await ch.ConnectAsync().WaitAsync(T);
        await Eventually.TrueAsync(() => Volatile.Read(ref connects) >= 3);
        lock (received)
        {
            Assert.Contains(received, t => t.StartsWith("1:") && t.Contains("\"code\":4400"));
            Assert.Contains(received, t => t.StartsWith("2:") && t.Contains("\"code\":4400"));
        }
    }

    [Fact]
    public async Task HostileServer_oversized_websocket_message_closes_4413()
    {
        var received = new List<string>();
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                // 3 MB message in 64 KB fragments, limit is 1 MB.
                var chunk = new byte[64 * 1024];
                Array.Fill(chunk, (byte)' ');
                for (var i = 0; i < 48 && ws.State == WebSocketState.Open; i++)
                {
                    await ws.SendAsync(chunk, WebSocketMessageType.Text, i == 47, ctx.RequestAborted);
                }

                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is { } text)
                {
                    lock (received)
                    {
                        received.Add(text);
                    }
                }
            });
        });
        await using var ch = Client(server, "websocket", o => o.MaxMessageBytes = 1024 * 1024);
        var reconnecting = Next(ch, PushChannelState.Reconnecting);
        await ch.ConnectAsync().WaitAsync(T);
        var e = await reconnecting.WaitAsync(T);
        Assert.Equal(PushCloseCode.MessageTooBig, e.CloseCode);
    }

    [Fact]
    public async Task HostileServer_websocket_server_that_never_answers_close_does_not_hang_CloseAsync()
    {
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            FakePushServer.MapWebSocket(app, async (ws, ctx) => await Task.Delay(Timeout.Infinite, ctx.RequestAborted));
        });
        await using var ch = Client(server, "websocket");
        await ch.ConnectAsync().WaitAsync(T);
        var start = TimeProvider.System.GetTimestamp();
        await ch.CloseAsync().WaitAsync(T);
        Assert.True(TimeProvider.System.GetElapsedTime(start) < TimeSpan.FromSeconds(8));
        Assert.Equal(PushChannelState.Closed, ch.State);
    }

    [Fact]
    public async Task HostileServer_batch_of_pings_is_not_answered_with_a_batch_over_the_servers_limit()
    {
        var sizes = new List<int>();
        await using var server = await FakePushServer.StartAsync(app =>
        {
            // The server's own limit: 4096 bytes (servers may be configured from 1024).
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(limits: "{\"maxMessageBytes\":4096}"));
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                // 2,000 pings in one 32 KB message (well under the client's 1 MB limit).
                await FakePushServer.SendTextAsync(ws, string.Concat(Enumerable.Repeat("{\"type\":\"ping\"}\n", 2000)));
                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is { } text)
                {
                    lock (sizes)
                    {
                        sizes.Add(Encoding.UTF8.GetByteCount(text));
                    }
                }
            });
        });
        await using var ch = Client(server, "websocket");
        await ch.ConnectAsync().WaitAsync(T);
        await Task.Delay(TimeSpan.FromSeconds(2));
        lock (sizes)
        {
            Assert.NotEmpty(sizes);
            Assert.True(sizes.Max() <= 4096, $"The client sent a {sizes.Max()}-byte batch to a server whose limit is 4096 (4413 follows).");
        }
    }

    // ---------------------------------------------------------------- SSE


    [Fact]
    public async Task HostileServer_bare_websocket_close_1000_without_close_frame_is_a_lost_connection()
    {
        // Protocol 9.1: a WebSocket Close without a 'close' frame never ends a session (a proxy closing an idle socket).
        var connects = 0;
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                if (Interlocked.Increment(ref connects) == 1)
                {
                    await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "proxy idle", CancellationToken.None);
                }

                while (await FakePushServer.ReceiveTextAsync(ws, ctx.RequestAborted) is not null)
                {
                }
            });
        });
        await using var ch = Client(server, "websocket");
        var changed = new TaskCompletionSource<PushChannelState>(TaskCreationOptions.RunContinuationsAsynchronously);
        ch.StateChanged += (_, e) =>
        {
            if (e.PreviousState == PushChannelState.Connected)
            {
                changed.TrySetResult(e.CurrentState);
            }
        };
        await ch.ConnectAsync().WaitAsync(T);
        var state = await changed.Task.WaitAsync(T);
        Assert.True(state == PushChannelState.Reconnecting, $"A bare WebSocket Close 1000 (no PushKit close frame) moved the channel to {state}.");
    }

    [Fact]
    public async Task HostileServer_sse_stream_that_stalls_after_open_is_dropped_by_heartbeat()
    {
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(heartbeat: "{\"intervalMs\":1000,\"timeoutMs\":2000}"));
            app.MapGet("/push/sse", async ctx =>
            {
                await FakePushServer.StartSseAsync(ctx);
                while (!ctx.RequestAborted.IsCancellationRequested)
                {
                    // comments only, and an event of another type
                    await ctx.Response.WriteAsync(": keep-alive\n\nevent: other\ndata: {\"type\":\"msg\",\"seq\":1}\n\n", ctx.RequestAborted);
                    await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
                    await Task.Delay(200, ctx.RequestAborted);
                }
            });
            app.MapPost("/push/send", ctx => { ctx.Response.StatusCode = 204; return Task.CompletedTask; });
        });
        await using var ch = Client(server, "sse");
        var reconnecting = Next(ch, PushChannelState.Reconnecting);
        await ch.ConnectAsync().WaitAsync(T);
        var e = await reconnecting.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(PushCloseCode.HeartbeatTimeout, e.CloseCode);
    }


    // ---------------------------------------------------------------- long-polling

    [Theory]
    [InlineData(200)]
    [InlineData(204)]
    public async Task HostileServer_long_poll_answered_empty_at_once_does_not_busy_loop(int status)
    {
        var polls = 0;
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            app.MapGet("/push/poll", ctx =>
            {
                Interlocked.Increment(ref polls);
                ctx.Response.StatusCode = ctx.Request.Query["open"] == "1" ? 200 : status;
                return Task.CompletedTask;
            });
            app.MapPost("/push/send", ctx => { ctx.Response.StatusCode = 204; return Task.CompletedTask; });
        });
        await using var ch = Client(server, "longpolling");
        await ch.ConnectAsync().WaitAsync(T);
        var start = Volatile.Read(ref polls);
        await Task.Delay(TimeSpan.FromSeconds(3));
        var count = Volatile.Read(ref polls) - start;
        Assert.True(count < 30, $"{count} polls in 3 s against a server that answers every poll empty at once (state {ch.State}).");
    }

    [Fact]
    public async Task HostileServer_long_poll_404_mid_session_starts_a_new_session_with_reset()
    {
        var negotiations = 0;
        var polls = 0;
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(sessionId: $"\"s{Interlocked.Increment(ref negotiations)}\""));
            app.MapGet("/push/poll", async ctx =>
            {
                var n = Interlocked.Increment(ref polls);
                var session = ctx.Request.Query["session"].ToString();
                if (session == "s1" && n > 1)
                {
                    ctx.Response.StatusCode = 404;
                    ctx.Response.ContentType = "application/json";
                    await ctx.Response.WriteAsync("{\"error\":{\"code\":\"session_not_found\",\"message\":\"gone\"}}");
                    return;
                }

                if (ctx.Request.Query["open"] == "1")
                {
                    return;
                }

                await Task.Delay(1000, ctx.RequestAborted);
            });
            app.MapPost("/push/send", ctx => { ctx.Response.StatusCode = 204; return Task.CompletedTask; });
        });
        await using var ch = Client(server, "longpolling");
        var reset = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        ch.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Connected && e.IsSessionReset)
            {
                reset.TrySetResult(e);
            }
        };
        await ch.ConnectAsync().WaitAsync(T);
        await reset.Task.WaitAsync(T);
        Assert.Equal("s2", ch.SessionId);
    }

    [Fact]
    public async Task HostileServer_long_poll_body_over_limit_and_reset_mid_body()
    {
        var polls = 0;
        var codes = new List<PushCloseCode?>();
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson());
            app.MapGet("/push/poll", async ctx =>
            {
                var n = Interlocked.Increment(ref polls);
                if (ctx.Request.Query["open"] == "1")
                {
                    return;
                }

                if (n == 2)
                {
                    var chunk = Encoding.ASCII.GetBytes(new string(' ', 64 * 1024));
                    for (var i = 0; i < 64; i++)
                    {
                        await ctx.Response.Body.WriteAsync(chunk, ctx.RequestAborted);
                    }

                    return;
                }

                // partial body then reset
                ctx.Response.ContentLength = 1000;
                await ctx.Response.WriteAsync(Msg(1, "partial"));
                await ctx.Response.Body.FlushAsync();
                ctx.Abort();
            });
            app.MapPost("/push/send", ctx => { ctx.Response.StatusCode = 204; return Task.CompletedTask; });
        });
        await using var ch = Client(server, "longpolling", o => o.MaxMessageBytes = 1024 * 1024);
        ch.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                lock (codes)
                {
                    codes.Add(e.CloseCode);
                }
            }
        };
        await ch.ConnectAsync().WaitAsync(T);
        await Eventually.TrueAsync(() => { lock (codes) { return codes.Count >= 2; } });
        lock (codes)
        {
            Assert.Equal(PushCloseCode.MessageTooBig, codes[0]);
        }
    }
}

/// <summary>
/// A hostile server's ping flood, measured by the process's heap: it runs alone (with the other tests that watch
/// process-wide state), since other tests' allocations running beside it would count as the client's.
/// </summary>
[Collection(GlobalEventsCollection.Name)]
public sealed class HostileServerMemoryTests
{
    [Fact]
    public async Task HostileServer_ping_flood_while_not_reading_does_not_grow_client_memory_without_bound()
    {
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(heartbeat: "{\"intervalMs\":60000,\"timeoutMs\":120000}"));
            FakePushServer.MapWebSocket(app, async (ws, ctx) =>
            {
                // Never reads: the client's writes back up, its read loop keeps taking pings.
                var batch = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Repeat("{\"type\":\"ping\"}\n", 60_000)));
                for (var i = 0; i < 80 && ws.State == WebSocketState.Open; i++)
                {
                    await ws.SendAsync(batch, WebSocketMessageType.Text, true, ctx.RequestAborted);
                }

                await Task.Delay(Timeout.Infinite, ctx.RequestAborted);
            });
        });
        await using var ch = HostileServerTests.Client(server, "websocket");
        var baseline = GC.GetTotalMemory(forceFullCollection: true);
        await ch.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await Task.Delay(TimeSpan.FromSeconds(8));
        var retained = GC.GetTotalMemory(forceFullCollection: true) - baseline;
        Assert.True(retained < 32L * 1024 * 1024, $"Client retains {retained / (1024 * 1024)} MB after 4.8 M pings from a server that does not read (state {ch.State}).");
    }
}
