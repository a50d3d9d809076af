using System.Threading.Channels;
using Microsoft.Extensions.Logging.Abstractions;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

/// <summary>What the engine reports to <see cref="IDeliveryMetrics"/>: each message counted once, for what happened to it.</summary>
public class DeliveryMetricsTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    private sealed class Counts : IDeliveryMetrics
    {
        private long _acknowledged;
        private long _replayed;
        private long _dropped;

        public long AcknowledgedCount => Interlocked.Read(ref _acknowledged);

        public long ReplayedCount => Interlocked.Read(ref _replayed);

        public long DroppedCount => Interlocked.Read(ref _dropped);

        public void Acknowledged(long count) => Interlocked.Add(ref _acknowledged, count);

        public void Replayed(long count) => Interlocked.Add(ref _replayed, count);

        public void Dropped(long count) => Interlocked.Add(ref _dropped, count);
    }

    private static DeliveryEngine Receiver(Channel<string> received) =>
        new("receiver", 1 << 20, (m, ct) => received.Writer.WriteAsync(m.GetString(), ct), NullLogger.Instance);

    [Fact]
    public async Task Each_message_is_counted_acknowledged_once_however_often_its_ack_arrives()
    {
        var counts = new Counts();
        var sender = new DeliveryEngine("sender", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance) { Metrics = counts };
        var (a, _) = InMemoryConnection.CreatePair();
        var run = sender.RunAsync(a);
        for (var i = 1; i <= 3; i++)
        {
            _ = sender.Enqueue(PushMessage.FromString($"m{i}"), trackAck: false);
        }

        await Eventually.TrueAsync(() => sender.SentThrough == 3);
        a.Inject("{\"type\":\"ack\",\"seq\":2}\n{\"type\":\"ack\",\"seq\":2}");
        await Eventually.TrueAsync(() => sender.UnacknowledgedCount == 1);
        a.Inject("{\"type\":\"ack\",\"seq\":3}\n{\"type\":\"ack\",\"seq\":1}");
        // The metric is counted just after the buffer lets go of the messages (outside its lock): wait for both, then
        // check, once the run is over, that the repeated acks added nothing.
        await Eventually.TrueAsync(() => sender.UnacknowledgedCount == 0 && counts.AcknowledgedCount >= 3);
        a.Abort();
        await run.WaitAsync(s_timeout);
        Assert.Equal(3, counts.AcknowledgedCount);
        Assert.Equal(0, counts.ReplayedCount);
    }

    [Fact]
    public async Task What_a_lost_connection_sent_unacknowledged_is_counted_as_replayed_and_new_messages_are_not()
    {
        var counts = new Counts();
        var sender = new DeliveryEngine("sender", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance) { Metrics = counts };

        // First connection: three messages written, none acknowledged, then the connection is lost.
        var (a1, _) = InMemoryConnection.CreatePair();
        var run = sender.RunAsync(a1);
        for (var i = 1; i <= 3; i++)
        {
            _ = sender.Enqueue(PushMessage.FromString($"m{i}"), trackAck: false);
        }

        await Eventually.TrueAsync(() => sender.SentThrough == 3);
        a1.Abort();
        await run.WaitAsync(s_timeout);

        // Queued while disconnected: a first send on the next connection, not a replay.
        _ = sender.Enqueue(PushMessage.FromString("m4"), trackAck: false);
        var received = Channel.CreateUnbounded<string>();
        var receiver = Receiver(received);
        var (a2, b2) = InMemoryConnection.CreatePair();
        var runs = new[] { sender.RunAsync(a2), receiver.RunAsync(b2) };
        using var cts = new CancellationTokenSource(s_timeout);
        for (var i = 1; i <= 4; i++)
        {
            Assert.Equal($"m{i}", await received.Reader.ReadAsync(cts.Token));
        }

        await Eventually.TrueAsync(() => sender.UnacknowledgedCount == 0 && counts.AcknowledgedCount >= 4);
        sender.CloseConnection(PushCloseCode.Normal, null);
        await Task.WhenAll(runs).WaitAsync(s_timeout);
        Assert.Equal(3, counts.ReplayedCount);
        Assert.Equal(4, counts.AcknowledgedCount);
    }

    [Fact]
    public async Task Messages_dropped_from_a_full_buffer_are_counted_as_dropped_not_acknowledged()
    {
        var counts = new Counts();
        var sender = new DeliveryEngine("sender", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance)
        {
            Limits = new BufferLimits(3, long.MaxValue, PushBufferFullPolicy.DropOldest),
            Metrics = counts,
        };
        for (var i = 1; i <= 10; i++)
        {
            await sender.EnqueueAsync(PushMessage.FromString($"m{i}"), trackAck: false);
        }

        Assert.Equal(7, counts.DroppedCount);

        var received = Channel.CreateUnbounded<string>();
        var receiver = Receiver(received);
        var (a, b) = InMemoryConnection.CreatePair();
        var runs = new[] { sender.RunAsync(a), receiver.RunAsync(b) };
        using var cts = new CancellationTokenSource(s_timeout);
        for (var i = 8; i <= 10; i++)
        {
            Assert.Equal($"m{i}", await received.Reader.ReadAsync(cts.Token));
        }

        await Eventually.TrueAsync(() => sender.UnacknowledgedCount == 0 && counts.AcknowledgedCount >= 3);
        sender.CloseConnection(PushCloseCode.Normal, null);
        await Task.WhenAll(runs).WaitAsync(s_timeout);
        Assert.Equal(3, counts.AcknowledgedCount);
        Assert.Equal(0, counts.ReplayedCount);
        Assert.Equal(7, counts.DroppedCount);
    }
}
