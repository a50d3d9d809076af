using System.Globalization;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.DependencyInjection;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>
/// The server-side public API under concurrency, cancellation and shutdown: the application's token callbacks that
/// throw, one message id sent by two sessions of a user at once, cancelled sends, a broadcast waiting for room at
/// shutdown. Runs in the process-wide events collection because one test watches
/// <see cref="TaskScheduler.UnobservedTaskException"/>.
/// </summary>
[Collection(GlobalEventsCollection.Name)]
public class ServerConcurrencyTests
{
    private const string CallbackFailure = "test: a cancellation callback of the application's that throws";

    /// <summary>
    /// A handler registers a callback on its token, and the callback throws when the token fires (a common slip: a
    /// registration that cancels or disposes something already gone). The token fires when the client's long-polling
    /// connection is replaced by its own reconnect (<c>open=1</c>). The session must carry on over the new connection.
    /// (Long-polling, because there nothing but PushKit cancels the token: on WebSocket and SSE, Kestrel's
    /// RequestAborted, linked into the token, may fire first and swallows the callback's exception itself.)
    /// </summary>
    [Fact]
    public async Task A_message_handler_whose_token_callback_throws_does_not_break_the_session_for_its_next_connection()
    {
        var handling = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handlerEnded = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(
            push => push.OnMessage(async (session, message, token) =>
            {
                if (message.GetString() != "hold")
                {
                    return;
                }

                _ = token.Register(static () => throw new InvalidOperationException(CallbackFailure));
                handling.TrySetResult();
                try
                {
                    await Task.Delay(Timeout.Infinite, token);
                }
                finally
                {
                    handlerEnded.TrySetResult();
                }
            }),
            options: o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));

        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        Uri Url(string path, string query = "") =>
            new($"{server.BaseUrl}/{path}?session={Uri.EscapeDataString(sessionId)}&secret={Uri.EscapeDataString(secret)}{query}");

        using (var open = await server.Http.GetAsync(Url("poll", "&open=1")).WaitAsync(TestTimeouts.Default))
        {
            Assert.Equal(System.Net.HttpStatusCode.OK, open.StatusCode);
        }

        using (var posted = await server.Http.PostAsync(Url("send"), new StringContent("{\"type\":\"msg\",\"seq\":1,\"data\":\"hold\"}")).WaitAsync(TestTimeouts.Default))
        {
            Assert.Equal(System.Net.HttpStatusCode.NoContent, posted.StatusCode);
        }

        await handling.Task.WaitAsync(TestTimeouts.Default);

        // The client lost its connection and opens a new one: the old one ends, and the handler's token fires.
        using (var reopen = await server.Http.GetAsync(Url("poll", "&open=1")).WaitAsync(TestTimeouts.Default))
        {
            Assert.Equal(System.Net.HttpStatusCode.OK, reopen.StatusCode);
        }

        await handlerEnded.Task.WaitAsync(TestTimeouts.Default);
        Assert.True(await server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString("after the takeover")).AsTask().WaitAsync(TestTimeouts.Default));

        // The client polls on: within 10 s (ten poll timeouts) the message must arrive.
        var received = new System.Text.StringBuilder();
        using var within = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (!within.IsCancellationRequested && !received.ToString().Contains("after the takeover", StringComparison.Ordinal))
        {
            using var poll = await server.Http.GetAsync(Url("poll")).WaitAsync(TestTimeouts.Default);
            received.Append(CultureInfo.InvariantCulture, $"[{(int)poll.StatusCode}] ").Append(await poll.Content.ReadAsStringAsync().WaitAsync(TestTimeouts.Default)).Append('\n');
        }

        var session = (PushKit.Server.Sessions.PushSession)server.Sessions.FindSession(sessionId)!;
        Assert.True(
            received.ToString().Contains("after the takeover", StringComparison.Ordinal),
            $"The session's message never reached the client's new connection. Session state {session.State}, its run {session.CurrentRun?.Status} ({session.CurrentRun?.Exception?.InnerException?.GetType().Name}: {session.CurrentRun?.Exception?.InnerException?.Message}); polls answered: {received}");
    }

    /// <summary>
    /// The same slip in a start handler: its token fires when the session ends. PushKit cancels it with a
    /// fire-and-forget <c>CancelAsync</c>, whose faulted task nobody observes.
    /// </summary>
    [Fact]
    public async Task A_start_handler_whose_token_callback_throws_leaves_no_unobserved_task_exception_when_the_session_ends()
    {
        var started = new TaskCompletionSource<IPushSession>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(push =>
        {
            push.Services.AddSingleton(started);
            push.AddHandler<ThrowingCallbackStartHandler>();
        });
        using var unobserved = new UnobservedExceptions();

        var client = await server.ConnectClientAsync("websocket");
        var session = await started.Task.WaitAsync(TestTimeouts.Default);
        await CloseAsync(session);
        await client.WaitForStateAsync(PushChannelState.Closed);

        var leaked = (await unobserved.CollectAsync(IsOurs)).Where(IsOurs).ToList();
        Assert.True(leaked.Count == 0, "Unobserved task exceptions: " + string.Join(Environment.NewLine, leaked.Select(e => e.InnerException)));
    }

    /// <summary>
    /// reliability.md §7: "two devices of the same user that send the same application-chosen id ("order-42") are
    /// treated as one message". Both devices send it at about the same time, while the first is being handled.
    /// </summary>
    [Fact]
    public async Task Two_sessions_of_one_user_sending_the_same_message_id_at_once_apply_it_once()
    {
        var applied = 0;
        var secondArrived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(
            push => push.OnMessage(async (_, message, _) =>
            {
                if (message.Id != "order-42")
                {
                    return;
                }

                if (Interlocked.Increment(ref applied) == 1)
                {
                    // Applying the order takes a moment; the other device's copy arrives meanwhile.
                    await Task.WhenAny(secondArrived.Task, Task.Delay(TimeSpan.FromSeconds(3)));
                }
                else
                {
                    secondArrived.TrySetResult();
                }
            }),
            options: o => o.UserIdProvider = _ => "alice");

        var phone = await server.ConnectClientAsync("websocket");
        var laptop = await server.ConnectClientAsync("websocket");
        await Task.WhenAll(
            phone.SendAsync(new PushMessage("place order"u8.ToArray(), PushMessage.TextContentType) { Id = "order-42" }).AsTask(),
            laptop.SendAsync(new PushMessage("place order"u8.ToArray(), PushMessage.TextContentType) { Id = "order-42" }).AsTask()).WaitAsync(TestTimeouts.Default);

        Assert.Equal(1, Volatile.Read(ref applied));
    }

    /// <summary>
    /// IPushSender's three methods take a token. With one that is already cancelled, BroadcastAsync and SendToUserAsync
    /// throw <see cref="OperationCanceledException"/> and queue nothing; SendToSessionAsync should do the same rather
    /// than report the message as accepted.
    /// </summary>
    [Fact]
    public async Task SendToSessionAsync_with_an_already_cancelled_token_throws_and_queues_nothing_like_the_other_sends()
    {
        await using var server = await PushTestServer.StartAsync(options: o => o.UserIdProvider = _ => "alice");
        var client = await server.ConnectClientAsync("websocket");
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => server.Sender.BroadcastAsync(PushMessage.FromString("broadcast"), cancelled.Token).AsTask());
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => server.Sender.SendToUserAsync("alice", PushMessage.FromString("to user"), cancelled.Token).AsTask());

        bool? accepted = null;
        try
        {
            accepted = await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("to session"), cancelled.Token).AsTask().WaitAsync(TestTimeouts.Default);
        }
        catch (OperationCanceledException)
        {
        }

        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("marker")).AsTask().WaitAsync(TestTimeouts.Default));
        var first = (await client.ReadAsync(1))[0].GetString();
        Assert.True(accepted is null && first == "marker", $"SendToSessionAsync with a cancelled token returned {accepted}; the client's first message was '{first}'.");
    }

    /// <summary>
    /// Shutdown with a broadcast waiting for room in a session that never acknowledges (<c>Wait</c> policy), bounded by
    /// the documented token (ApplicationStopping): the broadcast ends with <see cref="OperationCanceledException"/>, and
    /// the host stops promptly.
    /// </summary>
    [Fact]
    public async Task At_shutdown_a_broadcast_waiting_for_room_under_Wait_ends_with_cancellation_and_the_host_stops_promptly()
    {
        var server = await PushTestServer.StartAsync(options: o =>
        {
            o.BufferFullPolicy = PushBufferFullPolicy.Wait;
            o.MaxBufferedMessagesPerSession = 2;
        });
        var disposed = false;
        try
        {
            await using var silent = await server.ConnectRawAsync();
            var lifetime = server.Services.GetRequiredService<Microsoft.Extensions.Hosting.IHostApplicationLifetime>();
            Assert.Equal(1, await server.Sender.BroadcastAsync(PushMessage.FromString("1"), lifetime.ApplicationStopping).AsTask().WaitAsync(TestTimeouts.Default));
            Assert.Equal(1, await server.Sender.BroadcastAsync(PushMessage.FromString("2"), lifetime.ApplicationStopping).AsTask().WaitAsync(TestTimeouts.Default));
            var waiting = server.Sender.BroadcastAsync(PushMessage.FromString("3"), lifetime.ApplicationStopping).AsTask();
            await Task.Delay(200);
            Assert.False(waiting.IsCompleted);

            var stopwatch = System.Diagnostics.Stopwatch.StartNew();
            lifetime.StopApplication();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(TestTimeouts.Default));
            disposed = true;
            await server.DisposeAsync();
            Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(10), $"The host took {stopwatch.Elapsed} to stop.");
        }
        finally
        {
            if (!disposed)
            {
                await server.DisposeAsync();
            }
        }
    }

    private static bool IsOurs(AggregateException e) => e.Flatten().InnerExceptions.Any(i => i.Message == CallbackFailure);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static Task CloseAsync(IPushSession session) => session.CloseAsync().WaitAsync(TestTimeouts.Default);

    /// <summary>A start handler that registers a throwing callback on its token and waits for the session to end.</summary>
    public sealed class ThrowingCallbackStartHandler(TaskCompletionSource<IPushSession> started) : PushHandler
    {
        public override async ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken)
        {
            _ = cancellationToken.Register(static () => throw new InvalidOperationException(CallbackFailure));
            started.TrySetResult(session);
            await Task.Delay(TestTimeouts.Default, cancellationToken);
        }
    }
}
