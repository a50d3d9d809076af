using Microsoft.Extensions.DependencyInjection;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// The client channel's public API under concurrency and cancellation: readers that come and go, disposal racing
/// itself, handlers that call back into the channel, sends racing a close, cancelled connects.
/// </summary>
public class ClientConcurrencyTests
{
    private static readonly TimeSpan s_longAckTimeout = TimeSpan.FromSeconds(60);

    // ---------------------------------------------------------------------------------------------------------------
    // Two DisposeAsync calls at once (a DI container and an 'await using', say): the second must not return while the
    // first is still closing. CloseAsync twice waits for the one close; DisposeAsync twice did not.
    // ---------------------------------------------------------------------------------------------------------------
    [Fact]
    public async Task A_second_DisposeAsync_racing_the_first_returns_only_once_the_channel_has_closed()
    {
        // The close frame goes out in a POST on SSE: holding that POST keeps the first close in progress.
        var gate = new RequestGate("/push/send");
        await using var server = await PushTestServer.StartAsync(configureApp: gate.Install);
        var client = await server.ConnectClientAsync("sse", o => o.AckTimeout = s_longAckTimeout);
        var reading = Task.Run(async () =>
        {
            await foreach (var _ in client.ReadAllAsync())
            {
            }
        });

        gate.Arm();
        var first = client.DisposeAsync().AsTask();
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);
        var second = client.DisposeAsync().AsTask();
        await second.WaitAsync(TestTimeouts.Default);

        // Once a DisposeAsync has returned the channel is closed and disposed: ReadAllAsync ends at once (as it does once
        // any CloseAsync returned), which it does only once the close has finished.
        var after = client.ReadAllAsync().GetAsyncEnumerator();
        var next = after.MoveNextAsync();
        var endedAtOnce = next.IsCompleted;
        gate.Release.TrySetResult();
        Assert.False(await next.AsTask().WaitAsync(TestTimeouts.Default));
        await after.DisposeAsync();
        await first.WaitAsync(TestTimeouts.Default);
        await reading.WaitAsync(TestTimeouts.Default);
        Assert.True(endedAtOnce, "The second DisposeAsync returned while the first was still closing (a new ReadAllAsync did not end at once).");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Concurrent readers "share the messages". When two readers each take one message of a burst and stop, a third
    // reader still waiting must get the rest; it was left waiting for a turn nobody would give it.
    // ---------------------------------------------------------------------------------------------------------------
    [Fact]
    public async Task A_reader_left_waiting_when_other_readers_stop_still_gets_the_messages_that_are_queued()
    {
        var gate = new RequestGate("/push/ws");
        await using var server = await PushTestServer.StartAsync(configureApp: gate.Install);
        var client = await server.ConnectClientAsync("websocket", o => o.AckTimeout = s_longAckTimeout);
        var session = (PushKit.Server.Sessions.PushSession)server.Sessions.FindSession(client.SessionId!)!;

        // Three readers: the first waits for messages, the other two wait for their turn behind it (in this order). The
        // first two take one message each, at most, and stop; the third takes all it can.
        var read = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using var stop = new CancellationTokenSource(TestTimeouts.Default);
        var firstOne = ReadAsync(client, read, stop.Token, one: true);
        await Eventually.TrueAsync(() => ReceiveQueueField(client, "_waiterSlot") == 1);
        var secondOne = ReadAsync(client, read, stop.Token, one: true);
        await Eventually.TrueAsync(() => ReceiveQueueField(client, "_contenders") == 1);
        var third = ReadAsync(client, read, stop.Token, one: false);
        await Eventually.TrueAsync(() => ReceiveQueueField(client, "_contenders") == 2);

        // A burst of ten arrives at once: queued on the server while the client's resume is held, replayed in one batch.
        var reconnected = client.NextStateAsync(PushChannelState.Connected);
        gate.Arm();
        session.Engine.CloseConnection(PushCloseCode.Overloaded, "come back");
        await gate.Arrived.Task.WaitAsync(TestTimeouts.Default);
        for (var i = 1; i <= 10; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(session.SessionId, PushMessage.FromString("m" + i)).AsTask().WaitAsync(TestTimeouts.Default));
        }

        gate.Release.TrySetResult();
        await reconnected.WaitAsync(TestTimeouts.Default);

        // However the readers share them, all ten are read: none stays queued while a reader waits. (Before the fix the
        // two one-message readers took one each and stopped, and the third waited for a turn nobody would give it.)
        await Eventually.TrueAsync(() => session.Engine.UnacknowledgedCount == 0);
        using (var within = new CancellationTokenSource(TimeSpan.FromSeconds(5)))
        {
            while (read.Count < 10 && !within.IsCancellationRequested)
            {
                await Task.Delay(10, CancellationToken.None);
            }
        }

        var count = read.Count;
        var queued = ReceiveQueueField(client, "_count");
        await stop.CancelAsync();
        foreach (var reader in new[] { firstOne, secondOne, third })
        {
            // A reader still waiting ends with the token.
            await reader.ContinueWith(static _ => { }, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default).WaitAsync(TestTimeouts.Default);
        }

        Assert.True(count == 10, $"{count} of 10 messages were read within 5 s, {queued} stayed queued with a reader waiting.");
        Assert.Equal(Enumerable.Range(1, 10).Select(i => "m" + i).Order(StringComparer.Ordinal), read.Order(StringComparer.Ordinal));
    }

    /// <summary>A field of the client's receive queue (to start the readers in a known order).</summary>
    private static int ReceiveQueueField(IPushChannel client, string name)
    {
        const System.Reflection.BindingFlags Private = System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance;
        var queue = typeof(PushChannel).GetField("_inbound", Private)!.GetValue(client)!;
        return (int)typeof(ReceiveQueue).GetField(name, Private)!.GetValue(queue)!;
    }

    private static Task ReadAsync(IPushChannel client, System.Collections.Concurrent.ConcurrentQueue<string> read, CancellationToken token, bool one) => Task.Run(async () =>
    {
        await foreach (var message in client.ReadAllAsync(token))
        {
            read.Enqueue(message.GetString());
            if (one)
            {
                return;
            }
        }
    });

    // ---------------------------------------------------------------------------------------------------------------
    // A StateChanged handler that waits for the channel's disposal when it sees Closed (a synchronous cleanup, or a
    // container disposed from the handler): when the application closed the channel, that wait never ends, because the
    // close it waits for is the one reporting the change, on the same thread.
    // ---------------------------------------------------------------------------------------------------------------
    [Fact]
    public async Task A_Closed_handler_that_waits_for_the_dispose_does_not_deadlock_the_close()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync("websocket", o => o.AckTimeout = s_longAckTimeout);
        var disposedInTime = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Closed)
            {
                // Bounded here only so that the test ends: with Dispose() (or an unbounded Wait) this never returns.
                disposedInTime.TrySetResult(client.DisposeAsync().AsTask().Wait(TimeSpan.FromSeconds(10)));
            }
        };

        var closing = Task.Run(() => client.CloseAsync());
        var inTime = await disposedInTime.Task.WaitAsync(TestTimeouts.Default);
        await closing.WaitAsync(TestTimeouts.Default);
        Assert.True(inTime, "DisposeAsync, waited for in the Closed handler of an application's CloseAsync, did not complete in 10 s: the close waits for the handler that waits for the close.");
    }

    private sealed class SlowDisposeHandler() : DelegatingHandler(new SocketsHttpHandler())
    {
        public volatile bool Disposed;

        protected override void Dispose(bool disposing)
        {
            if (disposing && !Disposed)
            {
                // Slow on purpose: a DisposeAsync that returned before it finished would be seen.
                Thread.Sleep(500);
                Disposed = true;
            }

            base.Dispose(disposing);
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // DisposeAsync returns once everything is disposed (the HTTP handler too), not only once the channel has closed.
    // ---------------------------------------------------------------------------------------------------------------
    [Fact]
    public async Task DisposeAsync_returns_only_after_the_http_handler_is_disposed()
    {
        await using var server = await PushTestServer.StartAsync();
        var handler = new SlowDisposeHandler();
        var client = await server.ConnectClientAsync("sse", o => o.HttpMessageHandlerFactory = () => handler);
        await client.DisposeAsync();
        Assert.True(handler.Disposed, "DisposeAsync returned before the channel's HttpMessageHandler was disposed.");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Application code that a StateChanged handler resumes inline on its thread (a TaskCompletionSource made with the
    // default options) is not a handler: its 'await DisposeAsync()' waits for the disposal like any other.
    // ---------------------------------------------------------------------------------------------------------------
    [Fact]
    public async Task DisposeAsync_from_code_resumed_inline_by_a_handler_waits_for_the_disposal()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync("websocket", o => o.AckTimeout = TimeSpan.FromSeconds(60));
        var session = (PushKit.Server.Sessions.PushSession)server.Sessions.FindSession(client.SessionId!)!;
        var reconnecting = new TaskCompletionSource(); // default options: continuations run synchronously
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                reconnecting.TrySetResult();
            }
        };

        var app = Task.Run(async () =>
        {
            await reconnecting.Task.ConfigureAwait(false);
            await client.DisposeAsync().ConfigureAwait(false);
            const System.Reflection.BindingFlags Private = System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance;
            var done = (TaskCompletionSource)typeof(PushChannel).GetField("_disposeDone", Private)!.GetValue(client)!;
            return done.Task.IsCompleted;
        });

        // (Given a moment to be awaiting the signal; if it is not yet, its continuation is not inline and the test is weaker.)
        await Task.Delay(100);
        session.Engine.CloseConnection(PushCloseCode.Overloaded, "come back");
        var disposedWhenReturned = await app.WaitAsync(TestTimeouts.Default);
        Assert.True(disposedWhenReturned, "await DisposeAsync() in ordinary application code returned before the disposal (it ran inline in a StateChanged handler's thread).");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Behaviour that holds (kept for coverage no other test has).
    // ---------------------------------------------------------------------------------------------------------------

    /// <summary>
    /// Sends from several threads while the application closes the channel: every send either completes, and then the
    /// server has its message, or fails with <see cref="PushChannelClosedException"/>; none hangs, and each thread's
    /// messages reach the server in its order, once.
    /// </summary>
    [Fact]
    public async Task Sends_from_several_threads_racing_a_close_each_end_acknowledged_and_delivered_or_with_PushChannelClosedException()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync("websocket", o => o.AckTimeout = s_longAckTimeout);

        var threads = Enumerable.Range(0, 4).Select(t => Task.Run(async () =>
        {
            var results = new List<(string Text, Exception? Error)>();
            for (var i = 0; i < 200; i++)
            {
                var text = $"t{t}-{i:D3}";
                try
                {
                    await client.SendStringAsync(text).AsTask().WaitAsync(TestTimeouts.Default);
                    results.Add((text, null));
                }
                catch (Exception ex) when (ex is not TimeoutException)
                {
                    results.Add((text, ex));
                }
            }

            return results;
        })).ToArray();

        await Eventually.TrueAsync(() => collector.Count >= 40);
        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        var all = (await Task.WhenAll(threads).WaitAsync(TestTimeouts.Default)).SelectMany(r => r).ToList();
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));

        Assert.All(all.Where(r => r.Error is not null), r => Assert.IsType<PushChannelClosedException>(r.Error));
        var atServer = collector.All.Select(m => m.Message.GetString()).ToList();
        Assert.Equal(atServer.Count, atServer.Distinct().Count());
        Assert.All(all.Where(r => r.Error is null), r => Assert.Contains(r.Text, atServer));
        for (var t = 0; t < 4; t++)
        {
            var prefix = $"t{t}-";
            var mine = atServer.Where(m => m.StartsWith(prefix, StringComparison.Ordinal)).ToList();
            Assert.Equal(mine.Order(StringComparer.Ordinal), mine);
        }

        Assert.Contains(all, r => r.Error is null);
        Assert.Contains(all, r => r.Error is not null);
    }

    /// <summary>
    /// ConnectAsync cancelled by its caller at a spread of moments (negotiation, each transport's handshake, after):
    /// it connects or throws <see cref="OperationCanceledException"/>, never another type, leaves the channel
    /// Disconnected when it throws, and the same channel then connects and carries a message.
    /// </summary>
    [Fact]
    public async Task ConnectAsync_cancelled_at_any_moment_throws_OperationCanceledException_and_the_channel_connects_afterwards()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var outcomes = new List<string>();
        foreach (var delay in new[] { 0, 1, 2, 3, 5, 8, 13, 21, 34, 55 })
        {
            var client = server.CreateClient(o => o.AckTimeout = s_longAckTimeout);
            using var cancel = new CancellationTokenSource();
            var connect = client.ConnectAsync(cancel.Token);
            if (delay > 0)
            {
                await Task.Delay(delay);
            }

            await cancel.CancelAsync();
            try
            {
                await connect.WaitAsync(TestTimeouts.Default);
                outcomes.Add($"{delay} ms: connected");
            }
            catch (OperationCanceledException)
            {
                outcomes.Add($"{delay} ms: cancelled");
                Assert.Equal(PushChannelState.Disconnected, client.State);
                await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
            }

            Assert.Equal(PushChannelState.Connected, client.State);
            await client.SendStringAsync("after " + delay).AsTask().WaitAsync(TestTimeouts.Default);
            await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
        }

        Assert.Contains(outcomes, o => o.EndsWith("cancelled", StringComparison.Ordinal));
        Assert.Equal(10, (await collector.TakeAsync(10)).Count);
    }

    /// <summary>
    /// A Reconnecting handler that closes the channel (without waiting): the close completes within its grace, the
    /// history is ordered and ends in Closed, and later sends fail at once.
    /// </summary>
    [Fact]
    public async Task A_Reconnecting_handler_that_closes_the_channel_ends_it_within_the_grace()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = await server.ConnectClientAsync("websocket", o => o.AckTimeout = s_longAckTimeout);
        var session = (PushKit.Server.Sessions.PushSession)server.Sessions.FindSession(client.SessionId!)!;
        var log = new StateLog(client);
        var close = new TaskCompletionSource<Task>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                close.TrySetResult(client.CloseAsync());
            }
        };

        session.Engine.CloseConnection(PushCloseCode.Overloaded, "come back");
        await (await close.Task.WaitAsync(TestTimeouts.Default)).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(PushChannelState.Closed, client.State);
        log.AssertConsistent();
        Assert.EndsWith("Reconnecting->Closed", log.Describe(), StringComparison.Ordinal);
        await Assert.ThrowsAsync<PushChannelClosedException>(() => client.SendStringAsync("late").AsTask().WaitAsync(TestTimeouts.Default));
    }
}
