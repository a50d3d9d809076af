using System.Globalization;
using System.Threading.Channels;
using Microsoft.Extensions.DependencyInjection;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;
using Xunit.Abstractions;

namespace PushKit.IntegrationTests;

/// <summary>
/// Sessions outlive their connections: through a chaos proxy that cuts connections and black-holes traffic, every
/// message reaches the application exactly once, in order, both ways, on every transport.
/// </summary>
public class ResilienceTests(ITestOutputHelper output)
{
    private const int Messages = 5_000;

    private static Task<PushTestServer> StartServerAsync(Collector collector) =>
        PushTestServer.StartAsync(push => push.AddCollector(collector), o =>
        {
            o.HeartbeatInterval = TimeSpan.FromMilliseconds(400);
            o.HeartbeatTimeout = TimeSpan.FromMilliseconds(1500);
            o.LongPollingTimeout = TimeSpan.FromSeconds(1);
        });

    private static void FastReconnect(PushClientOptions o, string transport)
    {
        o.Transports.Clear();
        o.Transports.Add(Transports.ByName(transport));
        o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
        o.MaxReconnectDelay = TimeSpan.FromMilliseconds(300);
        o.ConnectTimeout = TimeSpan.FromSeconds(3);
        o.TransportDetectionTimeout = TimeSpan.FromSeconds(2);
        o.AckTimeout = TimeSpan.FromSeconds(90);
    }

    /// <summary>Sends <see cref="Messages"/> each way while <paramref name="chaos"/> runs; checks both sides received exactly 1..N in order.</summary>
    private async Task ExchangeUnderChaosAsync(string transport, Func<ChaosProxy, Task, Task> chaos)
    {
        var collector = new Collector();
        await using var server = await StartServerAsync(collector);
        await using var proxy = new ChaosProxy(server.Root);
        var client = server.CreateClient(o =>
        {
            o.Url = proxy.PushUrl;
            FastReconnect(o, transport);
        });
        var reconnects = 0;
        var resets = 0;
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                Interlocked.Increment(ref reconnects);
            }

            if (e.IsSessionReset)
            {
                Interlocked.Increment(ref resets);
            }
        };
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var sessionId = client.SessionId!;

        var upstream = Task.Run(async () =>
        {
            var sends = new List<Task>(Messages);
            for (var i = 1; i <= Messages; i++)
            {
                sends.Add(client.SendStringAsync(i.ToString(CultureInfo.InvariantCulture)).AsTask());
                if (i % 10 == 0)
                {
                    // Paced over a few seconds, so that the chaos hits the exchange many times.
                    await Task.Delay(5);
                }
            }

            await Task.WhenAll(sends);
        });
        var downstream = Task.Run(async () =>
        {
            for (var i = 1; i <= Messages; i++)
            {
                await server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString(i.ToString(CultureInfo.InvariantCulture)));
                if (i % 10 == 0)
                {
                    // Paced over a few seconds, so that the chaos hits the exchange many times.
                    await Task.Delay(5);
                }
            }
        });
        var received = client.ReadAsync(Messages, TimeSpan.FromSeconds(120));
        var done = Task.WhenAll(upstream, downstream, received);
        var chaosTask = chaos(proxy, done);

        await done.WaitAsync(TimeSpan.FromSeconds(150));
        await chaosTask;

        var expected = Enumerable.Range(1, Messages).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(expected, (await received).Select(m => m.GetString()).ToList());
        Assert.Equal(expected, (await collector.TakeAsync(Messages)).Select(m => m.GetString()).ToList());
        Assert.Equal(Messages, collector.Count);
        Assert.Equal(0, resets);
        Assert.True(reconnects > 0 && proxy.Cuts > 0, $"the chaos should have forced reconnects (cuts: {proxy.Cuts}, reconnects: {reconnects})");
        Assert.Equal(sessionId, client.SessionId);
        output.WriteLine($"{transport}: {Messages} messages each way, {proxy.Cuts} connections cut, {reconnects} reconnects, nothing lost or repeated.");
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public Task Nothing_is_lost_or_repeated_while_connections_are_cut_every_few_hundred_milliseconds(string transport) =>
        ExchangeUnderChaosAsync(transport, (proxy, done) => proxy.CutRepeatedlyAsync(TimeSpan.FromMilliseconds(300), done, seed: transport.Length));

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public Task Nothing_is_lost_or_repeated_through_multi_second_outages(string transport) =>
        ExchangeUnderChaosAsync(transport, async (proxy, done) =>
        {
            // Two-second black holes (connections look alive, nothing passes) then refused connections, every three seconds.
            for (var outage = 0; outage < 3 && !done.IsCompleted; outage++)
            {
                await Task.WhenAny(done, Task.Delay(TimeSpan.FromMilliseconds(700)));
                proxy.BlackHole = true;
                await Task.Delay(TimeSpan.FromSeconds(1));
                proxy.RefuseNew = true;
                proxy.CutAll();
                await Task.Delay(TimeSpan.FromSeconds(1));
                proxy.BlackHole = false;
                proxy.RefuseNew = false;
            }
        });
}

/// <summary>What the application sees when a session cannot be resumed, when the server shuts down, and how reconnects are paced.</summary>
public class SessionLifetimeTests
{
    private static async Task WaitForAsync(IPushChannel channel, Func<PushChannelStateChangedEventArgs, bool> match, Action? trigger = null, PushChannelState? orAlready = null)
    {
        var seen = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        channel.StateChanged += (_, e) =>
        {
            if (match(e))
            {
                seen.TrySetResult(e);
            }
        };
        if (orAlready is { } state && channel.State == state)
        {
            return;
        }

        trigger?.Invoke();
        await seen.Task.WaitAsync(TestTimeouts.Default);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Beyond_the_resume_window_the_client_is_told_the_session_was_not_resumed_and_its_sends_carry_over(string transport)
    {
        var time = new Microsoft.Extensions.Time.Testing.FakeTimeProvider();
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(
            push => push.AddCollector(collector),
            o => o.ResumeWindow = TimeSpan.FromMinutes(2),
            configureBuilder: b => Microsoft.Extensions.DependencyInjection.ServiceCollectionServiceExtensions.AddSingleton<TimeProvider>(b.Services, time));
        await using var proxy = new ChaosProxy(server.Root);
        var client = await server.ConnectClientAsync(transport, o =>
        {
            o.Url = proxy.PushUrl;
            o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
            o.MaxReconnectDelay = TimeSpan.FromMilliseconds(200);
            o.ConnectTimeout = TimeSpan.FromSeconds(3);
        });
        var oldSessionId = client.SessionId!;
        var oldSession = server.Sessions.FindSession(oldSessionId)!;
        await client.SendStringAsync("before").AsTask().WaitAsync(TestTimeouts.Default);

        // The network goes away; the client keeps trying; a send made meanwhile is queued.
        proxy.RefuseNew = true;
        await WaitForAsync(client, e => e.CurrentState == PushChannelState.Reconnecting, proxy.CutAll);
        var during = client.SendStringAsync("during").AsTask();

        // The server notices the connection is gone (at once for a reset socket; for long-polling, when polls stop
        // coming; at the latest by the heartbeat timeout).
        await WaitForAsync(
            oldSession,
            e => e.CurrentState == PushChannelState.Disconnected,
            () => time.Run(TimeSpan.FromSeconds(40)),
            orAlready: PushChannelState.Disconnected);

        // The resume window passes on the server: the session expires.
        var reset = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Connected)
            {
                reset.TrySetResult(e);
            }
        };
        // The sweep that expires it runs on the thread pool after the clock moves: wait for the session to end (the
        // handler hears of it after the session is removed) rather than look at once.
        time.Advance(TimeSpan.FromMinutes(2) + TimeSpan.FromSeconds(2));
        Assert.Equal(PushCloseCode.SessionNotFound, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        Assert.Null(server.Sessions.FindSession(oldSessionId));
        proxy.RefuseNew = false;

        var connected = await reset.Task.WaitAsync(TestTimeouts.Default);
        Assert.True(connected.IsSessionReset);
        Assert.NotEqual(oldSessionId, client.SessionId);

        // One readable sentence: both session ids, the reason once (not one refusal per transport), no "..".
        Assert.StartsWith($"Not resumed: session {oldSessionId} is gone on the server (session_not_found); started session {client.SessionId}.", connected.Reason, StringComparison.Ordinal);
        Assert.DoesNotContain("..", connected.Reason, StringComparison.Ordinal);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(connected.Reason!, "session_not_found"));

        await during.WaitAsync(TestTimeouts.Default);
        Assert.Equal(["before"], collector.All.Where(m => m.Session.SessionId == oldSessionId).Select(m => m.Message.GetString()));
        Assert.Equal(["during"], collector.All.Where(m => m.Session.SessionId == client.SessionId).Select(m => m.Message.GetString()));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task When_the_server_shuts_down_clients_are_told_to_go_away_and_start_reconnecting(string transport)
    {
        var server = await PushTestServer.StartAsync();
        await using (var client = await ConnectOutlivingClientAsync(server, transport))
        {
            var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
            var stopping = server.DisposeAsync().AsTask();
            var change = await reconnecting.WaitAsync(TestTimeouts.Default);
            Assert.Equal(PushCloseCode.GoingAway, change.CloseCode);
            await stopping.WaitAsync(TestTimeouts.Default);
        }
    }

    [Fact]
    public async Task At_shutdown_a_long_polling_client_between_two_polls_still_collects_its_going_away()
    {
        // The client's next poll leaves only after the host has begun to stop. The web server must still be
        // serving when it arrives, so that it collects the 1001 rather than a refused connection.
        var server = await PushTestServer.StartAsync();
        var pollsGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        // Each request on a new connection: a web server that has begun to stop accepts none.
        await using (var client = await ConnectOutlivingClientAsync(server, "longpolling", () => new PollGate(pollsGate.Task, newConnectionEachRequest: true)))
        {
            var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
            var stopping = server.DisposeAsync().AsTask();

            // A client a little slow to come back: its next poll leaves 300 ms into the shutdown.
            await Task.Delay(300);
            Assert.False(stopping.IsCompleted, "the host should wait for the long-polling client to collect its close");
            pollsGate.SetResult();
            var change = await reconnecting.WaitAsync(TestTimeouts.Default);
            Assert.Equal(PushCloseCode.GoingAway, change.CloseCode);
            await stopping.WaitAsync(TestTimeouts.Default);
        }
    }

    /// <summary>A connected client on one transport that the server does not dispose: it is to see the server stop.</summary>
    private static async Task<IPushChannel> ConnectOutlivingClientAsync(PushTestServer server, string transport, Func<HttpMessageHandler>? handler = null)
    {
        var client = new PushChannelBuilder().WithUrl(server.BaseUrl).Configure(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName(transport));
            o.HttpMessageHandlerFactory = handler ?? o.HttpMessageHandlerFactory;
        }).Build();
        try
        {
            await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
            return client;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    [Fact]
    public async Task The_client_waits_for_the_server_retry_hint_before_reconnecting()
    {
        var time = new TimerReportingTime(new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow));
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync(o => o.TimeProvider = time);
        var sessionId = client.SessionId!;
        var session = (PushKit.Server.Sessions.PushSession)server.Sessions.FindSession(sessionId)!;

        var reconnecting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var connected = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                reconnecting.TrySetResult();
            }
            else if (e.CurrentState == PushChannelState.Connected)
            {
                connected.TrySetResult(e);
            }
        };

        // The server asks the client to come back in a minute (as it does when shutting down or overloaded).
        time.ForgetTimers();
        var waiting = time.WaitForTimerAsync(TimeSpan.FromSeconds(60));
        session.Engine.CloseConnection(PushCloseCode.GoingAway, "come back later", retryAfterMs: 60_000);
        await reconnecting.Task.WaitAsync(TestTimeouts.Default);

        // The client's wait for the hint has started (its timer exists): the clock may move. Advancing it before
        // then would start the minute after the advance, and the reconnect would never come (this test failed so).
        await waiting.WaitAsync(TestTimeouts.Default);

        // Nothing happens before the hint has passed (no event to await for 'nothing': a short real pause).
        time.Advance(TimeSpan.FromSeconds(59));
        await Task.Delay(300);
        Assert.False(connected.Task.IsCompleted);
        Assert.Equal(PushChannelState.Reconnecting, client.State);

        time.Advance(TimeSpan.FromSeconds(2));
        var change = await connected.Task.WaitAsync(TestTimeouts.Default);
        Assert.False(change.IsSessionReset);
        Assert.Equal(sessionId, client.SessionId);
        Assert.StartsWith("Resumed", change.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_message_whose_handling_was_cut_short_by_a_lost_connection_is_handled_when_replayed()
    {
        var handled = new List<string>();
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var attempts = 0;
        await using var server = await PushTestServer.StartAsync(push => push.OnMessage(async (_, message, ct) =>
        {
            if (message.GetString() == "slow" && Interlocked.Increment(ref attempts) == 1)
            {
                // The first attempt is still running when the connection goes: it ends with the connection.
                entered.TrySetResult();
                await Task.Delay(Timeout.Infinite, ct);
            }

            lock (handled)
            {
                handled.Add(message.GetString());
            }
        }));
        await using var proxy = new ChaosProxy(server.Root);
        var client = await server.ConnectClientAsync(o =>
        {
            o.Url = proxy.PushUrl;
            o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
        });

        var send = client.SendStringAsync("slow").AsTask();
        await entered.Task.WaitAsync(TestTimeouts.Default);
        proxy.CutAll();

        // The replay carries the same message id; it was never applied, so it is handled now, once.
        await send.WaitAsync(TestTimeouts.Default);
        await client.SendStringAsync("after").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(["slow", "after"], handled);
        Assert.Equal(2, attempts);
    }

    [Fact]
    public async Task The_default_reconnect_backoff_is_exponential_with_jitter_and_capped()
    {
        // Each delay the pipeline waits is read from the timer it creates on the fake clock, and the clock is moved
        // exactly that far: the figures do not depend on how fast this machine runs the test.
        var time = new TimerReportingTime(new Microsoft.Extensions.Time.Testing.FakeTimeProvider());
        var options = new PushClientOptions
        {
            TimeProvider = time,
            ReconnectDelay = TimeSpan.FromSeconds(1),
            MaxReconnectDelay = TimeSpan.FromSeconds(30),
            MaxReconnectAttempts = 12,
        };
        var pipeline = PushKit.Client.PushChannel.CreateDefaultReconnectPipeline(options);
        var attempts = new List<DateTimeOffset>();
        var attempted = new SemaphoreSlim(0);
        var run = Task.Run(() => pipeline.ExecuteAsync(_ =>
        {
            lock (attempts)
            {
                attempts.Add(time.GetUtcNow());
            }

            attempted.Release();
            throw new PushConnectException("refused");
        }).AsTask());

        var delays = new List<double>();
        while (true)
        {
            Assert.True(await attempted.WaitAsync(TestTimeouts.Default), "the pipeline should make another attempt");
            var timer = time.Timers.ReadAsync().AsTask();
            if (await Task.WhenAny(timer, run).WaitAsync(TestTimeouts.Default) == run)
            {
                break;
            }

            var due = await timer;
            delays.Add(due.TotalSeconds);
            time.Advance(due);
        }

        await Assert.ThrowsAsync<PushConnectException>(() => run.WaitAsync(TestTimeouts.Default));
        Assert.Equal(13, attempts.Count);
        Assert.Equal(12, delays.Count);
        Assert.Equal(delays, attempts.Zip(attempts.Skip(1), (a, b) => (b - a).TotalSeconds));
        var shown = string.Join(", ", delays.Select(d => d.ToString("F2", CultureInfo.InvariantCulture)));
        Assert.All(delays, d => Assert.InRange(d, 0.0, 30.0));
        Assert.True(delays.Take(3).Average() < delays.Skip(6).Average(), $"delays should grow: {shown}");

        // Capped at MaxReconnectDelay: far past it (2^6 to 2^11 s nominal), most delays are exactly the cap. Not all:
        // Polly's jitter is decorrelated (each delay is the difference of two jittered exponentials), so any one delay
        // can come out short at any attempt; "the last three are 30 s" failed about once in thirty runs.
        var capped = delays.TakeLast(6).Count(d => d == 30.0);
        Assert.True(capped >= 3, $"far past the cap, most delays should be exactly 30 s: {shown}");

        // Jittered: below the cap the delays are not the bare doubling 1, 2, 4, 8, 16 s, and they vary. Not "no two
        // alike": the timers' due times are whole milliseconds, so two of five jittered delays a few seconds long
        // coincide now and then (1.99 s twice failed a CI-like run). (Above the cap many delays are exactly 30 s, so
        // counting distinct values over all twelve would be luck.)
        var early = delays.Take(5).ToArray();
        Assert.NotEqual([1.0, 2.0, 4.0, 8.0, 16.0], early);
        Assert.True(early.Distinct().Count() >= early.Length - 1, $"jitter should vary the delays: {shown}");
    }
}
