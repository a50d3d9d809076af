using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

public class DeliveryEngineTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    private sealed class End
    {
        public Channel<PushMessage> Received { get; } = Channel.CreateUnbounded<PushMessage>();

        public DeliveryEngine Engine { get; }

        public End(string name, int limit = 1024 * 1024) =>
            Engine = new DeliveryEngine(name, limit, (m, ct) => Received.Writer.WriteAsync(m, ct), NullLogger.Instance);

        public async Task<List<string>> ReadAsync(int count)
        {
            var result = new List<string>();
            using var cts = new CancellationTokenSource(s_timeout);
            while (result.Count < count)
            {
                result.Add((await Received.Reader.ReadAsync(cts.Token)).GetString());
            }

            return result;
        }
    }

    [Fact]
    public async Task Messages_flow_both_ways_in_order_and_acks_complete_sends()
    {
        var (a, b) = InMemoryConnection.CreatePair();
        var left = new End("left");
        var right = new End("right");
        var runs = new[] { left.Engine.RunAsync(a), right.Engine.RunAsync(b) };

        var acks = Enumerable.Range(1, 500).Select(i => left.Engine.Enqueue(PushMessage.FromString($"L{i}"), trackAck: true)!).ToArray();
        var back = Enumerable.Range(1, 500).Select(i => right.Engine.Enqueue(PushMessage.FromString($"R{i}"), trackAck: true)!).ToArray();

        Assert.Equal(Enumerable.Range(1, 500).Select(i => $"L{i}"), await right.ReadAsync(500));
        Assert.Equal(Enumerable.Range(1, 500).Select(i => $"R{i}"), await left.ReadAsync(500));
        await Task.WhenAll(acks.Concat(back)).WaitAsync(s_timeout);
        Assert.Equal(0, left.Engine.UnacknowledgedCount);
        Assert.Equal(0, right.Engine.UnacknowledgedCount);

        left.Engine.CloseConnection(PushCloseCode.Normal, "done");
        var ends = await Task.WhenAll(runs).WaitAsync(s_timeout);
        Assert.Equal(ConnectionEndKind.ClosedLocally, ends[0].Kind);
        Assert.Equal((ConnectionEndKind.ClosedByPeer, (PushCloseCode?)PushCloseCode.Normal), (ends[1].Kind, ends[1].Code));
    }

    [Fact]
    public async Task Pings_and_unknown_frames_from_a_peer_that_reads_nothing_queue_at_most_one_pong_and_sixteen_errors()
    {
        var (a, _) = InMemoryConnection.CreatePair();
        var end = new End("end");
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        a.SendGate = gate.Task;
        var run = end.Engine.RunAsync(a);

        // This side's write loop is stuck on a send (the peer reads nothing)...
        _ = end.Engine.Enqueue(PushMessage.FromString("stuck"), trackAck: false);
        await a.SendWaiting.Task.WaitAsync(s_timeout);

        // ...while a hundred batches arrive, each a ping and an unknown frame; then a message, so that its delivery
        // says every batch before it was read.
        for (var i = 0; i < 100; i++)
        {
            a.Inject("{\"type\":\"ping\"}\n{\"type\":\"future\"}\n");
        }

        a.Inject("{\"type\":\"msg\",\"seq\":1,\"data\":\"last\"}\n");
        Assert.Equal(["last"], await end.ReadAsync(1));

        gate.SetResult();
        using var cts = new CancellationTokenSource(s_timeout);
        while (!a.Sent.ToArray().Any(batch => batch.Contains("\"type\":\"ack\"", StringComparison.Ordinal)))
        {
            await Task.Delay(10, cts.Token);
        }

        // The first batch is the stuck one (the message alone). What queued up behind it is capped: one pong for
        // every ping, and sixteen errors.
        var queuedBehind = a.Sent.ToArray().Skip(1).SelectMany(batch => batch.Split('\n')).ToArray();
        var pongs = queuedBehind.Count(l => l.Contains("\"type\":\"pong\"", StringComparison.Ordinal));
        var errors = queuedBehind.Count(l => l.Contains("\"type\":\"error\"", StringComparison.Ordinal));
        Assert.Equal(1, pongs);
        Assert.InRange(errors, 1, 16);
        end.Engine.CloseConnection(PushCloseCode.Normal, "done");
        await run.WaitAsync(s_timeout).ContinueWith(_ => { }, TaskScheduler.Default);
    }

    [Fact]
    public async Task Unacknowledged_messages_are_replayed_on_the_next_connection_and_duplicates_dropped()
    {
        var left = new End("left");
        var right = new End("right");

        // First connection: the right side receives 1..3 but its acks never reach the left side.
        var (a1, b1) = InMemoryConnection.CreatePair();
        var leftRun = left.Engine.RunAsync(a1);
        var rightRun = right.Engine.RunAsync(b1);
        for (var i = 1; i <= 3; i++)
        {
            _ = left.Engine.Enqueue(PushMessage.FromString($"m{i}"), trackAck: false);
        }

        Assert.Equal(["m1", "m2", "m3"], await right.ReadAsync(3));
        a1.Abort();
        await Task.WhenAll(leftRun, rightRun).WaitAsync(s_timeout);

        // Whatever the left side still holds is replayed; the right side drops what it delivered already.
        var pendingBefore = left.Engine.UnacknowledgedCount;
        _ = left.Engine.Enqueue(PushMessage.FromString("m4"), trackAck: false);
        var (a2, b2) = InMemoryConnection.CreatePair();
        leftRun = left.Engine.RunAsync(a2);
        rightRun = right.Engine.RunAsync(b2);

        Assert.Equal(["m4"], await right.ReadAsync(1));
        await Eventually.TrueAsync(() => left.Engine.UnacknowledgedCount == 0);
        Assert.True(pendingBefore <= 3);
        Assert.False(right.Received.Reader.TryRead(out _));
        Assert.Equal(4, right.Engine.LastDelivered);
        left.Engine.CloseConnection(PushCloseCode.Normal, null);
        await Task.WhenAll(leftRun, rightRun).WaitAsync(s_timeout);
    }

    [Fact]
    public async Task A_replayed_duplicate_is_dropped_and_acknowledged_again()
    {
        var (a, b) = InMemoryConnection.CreatePair();
        var right = new End("right");
        var run = right.Engine.RunAsync(b);
        b.Inject("{\"type\":\"msg\",\"seq\":1,\"contentType\":\"text/plain\",\"data\":\"one\"}\n{\"type\":\"msg\",\"seq\":1,\"contentType\":\"text/plain\",\"data\":\"one again\"}\n{\"type\":\"msg\",\"seq\":2,\"contentType\":\"text/plain\",\"data\":\"two\"}");
        Assert.Equal(["one", "two"], await right.ReadAsync(2));
        await Eventually.TrueAsync(() => b.SentText().Contains("{\"type\":\"ack\",\"seq\":2}", StringComparison.Ordinal));
        b.Abort();
        await run.WaitAsync(s_timeout);
        Assert.False(right.Received.Reader.TryRead(out _));
    }

    [Theory]
    [InlineData("{\"type\":\"msg\",\"seq\":2,\"data\":\"gap\"}", "Sequence gap")]
    [InlineData("{\"type\":\"ack\",\"seq\":5}", "Invalid ack")]
    [InlineData("{\"type\":\"msg\"", "Malformed frame")]
    public async Task Protocol_violations_close_the_connection_with_4400(string batch, string reason)
    {
        var (a, b) = InMemoryConnection.CreatePair();
        var right = new End("right");
        var run = right.Engine.RunAsync(b);
        b.Inject(batch);
        var end = await run.WaitAsync(s_timeout);
        Assert.Equal((ConnectionEndKind.ClosedLocally, (PushCloseCode?)PushCloseCode.ProtocolError), (end.Kind, end.Code));
        Assert.Contains(reason, end.Reason, StringComparison.Ordinal);
        Assert.Contains("\"code\":4400", b.SentText(), StringComparison.Ordinal);
        _ = a;
    }

    [Fact]
    public async Task Error_frames_from_the_peer_are_logged_once_per_batch_shortened_and_on_one_line()
    {
        var log = new CapturingLogger();
        var (a, b) = InMemoryConnection.CreatePair();
        var received = Channel.CreateUnbounded<PushMessage>();
        var engine = new DeliveryEngine("right", 1024 * 1024, (m, ct) => received.Writer.WriteAsync(m, ct), log);
        var run = engine.RunAsync(b);

        var flood = string.Join("\n", Enumerable.Repeat("{\"type\":\"error\",\"code\":\"x\",\"message\":\"line one\\nforged line " + new string('y', 500) + "\"}", 100));
        b.Inject(flood + "\n{\"type\":\"msg\",\"seq\":1,\"data\":\"after\"}");
        using var cts = new CancellationTokenSource(s_timeout);
        Assert.Equal("after", (await received.Reader.ReadAsync(cts.Token)).GetString());

        var line = Assert.Single(log.Lines, l => l.Contains("reported error", StringComparison.Ordinal));
        Assert.DoesNotContain('\n', line);
        Assert.Contains("line one?forged line", line, StringComparison.Ordinal);
        Assert.True(line.Length < 400, line);
        b.Abort();
        await run.WaitAsync(s_timeout);
        _ = a;
    }

    private sealed class CapturingLogger : ILogger
    {
        public List<string> Lines { get; } = [];

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (Lines)
            {
                Lines.Add(formatter(state, exception));
            }
        }
    }

    [Fact]
    public async Task Unknown_frame_types_get_an_error_frame_and_the_connection_goes_on()
    {
        var (a, b) = InMemoryConnection.CreatePair();
        var right = new End("right");
        var run = right.Engine.RunAsync(b);
        b.Inject("{\"type\":\"teleport\"}\n{\"type\":\"ping\"}\n{\"type\":\"msg\",\"seq\":1,\"data\":\"still here\"}");
        Assert.Equal(["still here"], await right.ReadAsync(1));
        await Eventually.TrueAsync(() => b.SentText().Contains("unknown_frame_type", StringComparison.Ordinal) && b.SentText().Contains("\"pong\"", StringComparison.Ordinal));
        b.Abort();
        Assert.Equal(ConnectionEndKind.Lost, (await run.WaitAsync(s_timeout)).Kind);
        _ = a;
    }

    [Fact]
    public async Task Oversize_messages_are_refused_before_anything_is_sent()
    {
        var left = new End("left", limit: 2048);
        var error = Assert.Throws<PushMessageTooLargeException>(() => { _ = left.Engine.Enqueue(new PushMessage(new byte[4096]), trackAck: true); });
        Assert.Equal(2048, error.LimitBytes);
        Assert.Equal(0, left.Engine.UnacknowledgedCount);
        _ = left.Engine.Enqueue(PushMessage.FromString("small"), trackAck: false);
        Assert.Equal(1, left.Engine.UnacknowledgedCount);
        await Task.CompletedTask;
    }

    [Fact]
    public async Task Shutdown_fails_pending_sends_and_refuses_new_ones()
    {
        var left = new End("left");
        var pending = left.Engine.Enqueue(PushMessage.FromString("never acked"), trackAck: true)!;
        left.Engine.Shutdown(PushCloseCode.Normal, "bye", new PushChannelClosedException("closed", PushCloseCode.Normal));
        await Assert.ThrowsAsync<PushChannelClosedException>(() => pending.WaitAsync(s_timeout));
        Assert.Throws<PushChannelClosedException>(() => { _ = left.Engine.Enqueue(PushMessage.FromString("late"), trackAck: true); });
    }

    [Fact]
    public async Task A_connection_that_arrives_after_shutdown_is_told_the_close_the_engine_ended_with()
    {
        // A session can end while its next connection is still being set up: that connection's peer must hear why
        // (here 4429 with its retry hint), not find the session gone when it comes back.
        var left = new End("left");
        var right = new End("right");
        left.Engine.Shutdown(PushCloseCode.Overloaded, "too slow", new PushChannelClosedException("closed", PushCloseCode.Overloaded), retryAfterMs: 5000);

        var (a, b) = InMemoryConnection.CreatePair();
        var runs = new[] { left.Engine.RunAsync(a), right.Engine.RunAsync(b) };
        var ends = await Task.WhenAll(runs).WaitAsync(s_timeout);
        Assert.Equal(new ConnectionEnd(ConnectionEndKind.ClosedLocally, PushCloseCode.Overloaded, "too slow", 5000), ends[0]);
        Assert.Equal(new ConnectionEnd(ConnectionEndKind.ClosedByPeer, PushCloseCode.Overloaded, "too slow", 5000, FromFrame: true), ends[1]);
    }

    [Fact]
    public async Task A_connection_that_arrives_while_the_shut_down_engine_still_closes_the_last_one_is_told_the_close_too()
    {
        var engine = new End("server").Engine;
        var (old, _) = InMemoryConnection.CreatePair(); // its peer never answers the close: the run lingers for its grace
        var oldRun = engine.RunAsync(old);
        engine.Shutdown(PushCloseCode.Normal, "bye", new PushChannelClosedException("closed", PushCloseCode.Normal));

        var (late, _) = InMemoryConnection.CreatePair();
        var end = await engine.RunAsync(late).WaitAsync(s_timeout);
        Assert.Equal(new ConnectionEnd(ConnectionEndKind.ClosedLocally, PushCloseCode.Normal, "bye"), end);
        Assert.Contains("\"type\":\"close\"", late.SentText(), StringComparison.Ordinal);
        await oldRun.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task A_late_connection_that_cannot_take_the_final_close_ends_quietly()
    {
        // A closing client whose reconnect just got through, to a server that has stopped: the close cannot be
        // posted (HttpRequestException, not an IOException). Closing or disposing the client must not throw it.
        var engine = new End("client").Engine;
        engine.Shutdown(PushCloseCode.Normal, "bye", new PushChannelClosedException("closed", PushCloseCode.Normal));

        var (late, _) = InMemoryConnection.CreatePair();
        late.SendFailure = new HttpRequestException("Connection refused");
        var end = await engine.RunAsync(late).WaitAsync(s_timeout);
        Assert.Equal(new ConnectionEnd(ConnectionEndKind.ClosedLocally, PushCloseCode.Normal, "bye"), end);
    }

    [Fact]
    public async Task A_detached_engine_says_nothing_to_a_late_connection()
    {
        // Its messages went to the engine that adopted them: the old session is not to be closed by this one.
        var engine = new End("client").Engine;
        _ = engine.Enqueue(PushMessage.FromString("adopted elsewhere"), trackAck: false);
        Assert.Single(engine.Detach(new PushChannelClosedException("replaced")));

        var (late, _) = InMemoryConnection.CreatePair();
        var end = await engine.RunAsync(late).WaitAsync(s_timeout);
        Assert.Equal(ConnectionEndKind.ClosedLocally, end.Kind);
        Assert.Empty(late.Sent);
    }

    [Fact]
    public async Task Messages_queued_while_disconnected_are_sent_on_connect()
    {
        var left = new End("left");
        var right = new End("right");
        var ack = left.Engine.Enqueue(PushMessage.FromString("queued"), trackAck: true)!;
        var (a, b) = InMemoryConnection.CreatePair();
        var runs = new[] { left.Engine.RunAsync(a), right.Engine.RunAsync(b) };
        Assert.Equal(["queued"], await right.ReadAsync(1));
        await ack.WaitAsync(s_timeout);
        left.Engine.CloseConnection(PushCloseCode.Normal, null);
        await Task.WhenAll(runs).WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Shutdown_with_messages_still_queued_closes_the_connection_cleanly()
    {
        var (a, b) = InMemoryConnection.CreatePair();
        var left = new End("left");
        var right = new End("right");
        var runs = new[] { left.Engine.RunAsync(a), right.Engine.RunAsync(b) };
        var pending = Enumerable.Range(0, 2000).Select(i => left.Engine.Enqueue(PushMessage.FromString($"q{i}"), trackAck: true)!).ToArray();
        left.Engine.Shutdown(PushCloseCode.Normal, "bye", new PushChannelClosedException("closed"));

        var ends = await Task.WhenAll(runs).WaitAsync(s_timeout);
        Assert.Equal((ConnectionEndKind.ClosedLocally, (PushCloseCode?)PushCloseCode.Normal), (ends[0].Kind, ends[0].Code));
        Assert.Equal((ConnectionEndKind.ClosedByPeer, (PushCloseCode?)PushCloseCode.Normal), (ends[1].Kind, ends[1].Code));
        Assert.All(pending, p => Assert.True(p.IsCompleted));
    }

    [Fact]
    public async Task A_flood_of_unknown_frames_gets_one_error_frame_per_batch()
    {
        var (a, b) = InMemoryConnection.CreatePair();
        var right = new End("right");
        var run = right.Engine.RunAsync(b);
        b.Inject(string.Join("\n", Enumerable.Repeat("{\"type\":\"x\"}", 100)) + "\n{\"type\":\"msg\",\"seq\":1,\"data\":\"marker\"}");
        Assert.Equal(["marker"], await right.ReadAsync(1));
        await Eventually.TrueAsync(() => b.SentText().Contains("\"ack\"", StringComparison.Ordinal));
        Assert.Equal(1, b.SentText().Split("unknown_frame_type").Length - 1);
        b.Abort();
        await run.WaitAsync(s_timeout);
        _ = a;
    }

    [Fact]
    public async Task Going_away_first_drains_what_has_arrived_so_its_acks_go_out_before_the_close()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var delivering = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var delivered = 0;
        var engine = new DeliveryEngine("server", 1 << 20, async (_, ct) =>
        {
            delivering.TrySetResult();
            await release.Task.WaitAsync(ct);
            Interlocked.Increment(ref delivered);
        }, NullLogger.Instance);
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);
        a.Inject("{\"type\":\"msg\",\"seq\":1,\"data\":\"a\"}\n{\"type\":\"msg\",\"seq\":2,\"data\":\"b\"}\n{\"type\":\"msg\",\"seq\":3,\"data\":\"c\"}");
        await Eventually.TrueAsync(() => engine.IsConnected);

        // Closed while the first message is being delivered (before that, on a cold start, nothing has arrived yet).
        await delivering.Task.WaitAsync(s_timeout);
        engine.CloseConnection(PushCloseCode.GoingAway, "shutting down", retryAfterMs: 1000);
        await Task.Delay(100);
        Assert.DoesNotContain("close", a.SentText(), StringComparison.Ordinal);

        release.SetResult();
        var end = await run.WaitAsync(s_timeout);
        Assert.Equal(3, delivered);
        var sent = a.SentText();
        var ack = sent.IndexOf("{\"type\":\"ack\",\"seq\":3}", StringComparison.Ordinal);
        Assert.True(ack >= 0, sent);
        Assert.True(sent.IndexOf("\"code\":1001", StringComparison.Ordinal) > ack, sent);
        Assert.Equal(PushCloseCode.GoingAway, end.Code);
    }

    [Fact]
    public async Task A_second_concurrent_connection_is_refused()
    {
        var left = new End("left");
        var (a, _) = InMemoryConnection.CreatePair();
        var run = left.Engine.RunAsync(a);
        var (c, _) = InMemoryConnection.CreatePair();
        await Assert.ThrowsAsync<InvalidOperationException>(() => left.Engine.RunAsync(c));
        a.Abort();
        await run.WaitAsync(s_timeout);
    }
}
