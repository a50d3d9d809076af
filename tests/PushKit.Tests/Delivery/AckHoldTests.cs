using System.Buffers;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using PushKit.Connections;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

/// <summary>How the write loop holds an ack that has nothing else to travel with (<see cref="IAckCoalescing"/>).</summary>
public class AckHoldTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task An_ack_that_falls_due_while_a_batch_is_being_sent_is_held_like_any_other()
    {
        // On SSE every batch is a POST, a round trip long. An ack that fell due meanwhile went out right after it, unheld:
        // AckCoalescingTests saw it about once in ten runs.
        var time = new TimerCountingTime(new FakeTimeProvider());
        var (a, _) = InMemoryConnection.CreatePair();
        var sendGate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        a.SendGate = sendGate.Task;
        var client = new DeliveryEngine("client", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance)
        {
            Heartbeat = new HeartbeatSettings(TimeSpan.FromHours(1), TimeSpan.FromHours(2), time),
        };
        var run = client.RunAsync(new CoalescingConnection(a, TimeSpan.FromSeconds(1)));

        // A message whose sender waits: its ack goes at once, and that send stays in flight.
        a.Inject("{\"type\":\"msg\",\"seq\":1,\"ackNow\":true,\"data\":\"awaited\"}");
        await a.SendWaiting.Task.WaitAsync(s_timeout);

        // Meanwhile a message nobody waits for arrives and is handed over: its ack is due, and nothing else is.
        a.Inject("{\"type\":\"msg\",\"seq\":2,\"data\":\"later\"}");
        await UntilAsync(() => client.LastDelivered >= 2);

        var timersBefore = time.Created;
        a.SendGate = null;
        sendGate.SetResult();

        // The loop holds the second ack: it arms the hold's timer (the clock never moves) instead of sending.
        await time.WaitForCreatedAsync(timersBefore + 1).WaitAsync(s_timeout);
        Assert.Equal("{\"type\":\"ack\",\"seq\":1}", Assert.Single(SentSnapshot(a)));

        // When the hold is over, one ack covers it.
        time.Advance(TimeSpan.FromSeconds(1));
        await UntilAsync(() => SentSnapshot(a).Count >= 2);

        Assert.Equal("{\"type\":\"ack\",\"seq\":2}", SentSnapshot(a)[1]);
        a.Abort();
        await run.WaitAsync(s_timeout);
    }

    /// <summary>Waits until <paramref name="condition"/> holds (nothing raises an event for it), bounded by the timeout.</summary>
    private static async Task UntilAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(s_timeout);
        while (!condition())
        {
            await Task.Delay(10, timeout.Token);
        }
    }

    private static List<string> SentSnapshot(InMemoryConnection connection)
    {
        lock (connection.Sent)
        {
            return [.. connection.Sent.Select(s => s.TrimEnd('\n'))];
        }
    }

    /// <summary>An in-memory connection whose acks may be held, as the client's connections are.</summary>
    private sealed class CoalescingConnection(InMemoryConnection inner, TimeSpan ackDelay) : IPushTransportConnection, IAckCoalescing
    {
        public TimeSpan AckDelay => ackDelay;

        public string TransportName => inner.TransportName;

        public ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default) => inner.SendAsync(frames, cancellationToken);

        public ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default) =>
            inner.ReceiveAsync(destination, cancellationToken);

        public ValueTask CloseAsync(PushCloseCode code, string? reason, CancellationToken cancellationToken = default) => inner.CloseAsync(code, reason, cancellationToken);

        public void Abort() => inner.Abort();

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }

    /// <summary>A fake clock that counts the timers made on it.</summary>
    private sealed class TimerCountingTime(FakeTimeProvider inner) : TimeProvider
    {
        private int _created;

        public int Created => Volatile.Read(ref _created);

        public void Advance(TimeSpan delta) => inner.Advance(delta);

        public async Task WaitForCreatedAsync(int count)
        {
            while (Created < count)
            {
                await Task.Delay(10);
            }
        }

        public override long TimestampFrequency => inner.TimestampFrequency;

        public override long GetTimestamp() => inner.GetTimestamp();

        public override DateTimeOffset GetUtcNow() => inner.GetUtcNow();

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            var timer = inner.CreateTimer(callback, state, dueTime, period);
            Interlocked.Increment(ref _created);
            return timer;
        }
    }
}
