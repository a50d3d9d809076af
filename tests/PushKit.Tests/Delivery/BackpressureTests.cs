using System.Threading.Channels;
using Microsoft.Extensions.Logging.Abstractions;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

/// <summary>Bounded buffers and each policy when full.</summary>
public class BackpressureTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    private static DeliveryEngine Engine(PushBufferFullPolicy policy, int maxMessages = 3, long maxBytes = long.MaxValue) =>
        new("sender", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance)
        {
            Limits = new BufferLimits(maxMessages, maxBytes, policy),
        };

    [Fact]
    public async Task Wait_makes_the_send_wait_for_room_until_the_peer_acknowledges()
    {
        var sender = Engine(PushBufferFullPolicy.Wait);
        var received = Channel.CreateUnbounded<string>();
        var receiver = new DeliveryEngine("receiver", 1 << 20, (m, ct) => received.Writer.WriteAsync(m.GetString(), ct), NullLogger.Instance);
        for (var i = 1; i <= 3; i++)
        {
            await sender.EnqueueAsync(PushMessage.FromString($"m{i}"), trackAck: false);
        }

        var fourth = sender.EnqueueAsync(PushMessage.FromString("m4"), trackAck: false).AsTask();
        Assert.False(fourth.IsCompleted);
        Assert.Equal(3, sender.UnacknowledgedCount);

        // A connection lets the peer acknowledge: room appears and the waiting send goes through.
        var (a, b) = InMemoryConnection.CreatePair();
        var runs = new[] { sender.RunAsync(a), receiver.RunAsync(b) };
        await fourth.WaitAsync(s_timeout);
        using var cts = new CancellationTokenSource(s_timeout);
        for (var i = 1; i <= 4; i++)
        {
            Assert.Equal($"m{i}", await received.Reader.ReadAsync(cts.Token));
        }

        sender.CloseConnection(PushCloseCode.Normal, null);
        await Task.WhenAll(runs).WaitAsync(s_timeout);
    }

    [Fact]
    public async Task The_byte_limit_counts_too()
    {
        var sender = Engine(PushBufferFullPolicy.Wait, maxMessages: 1000, maxBytes: 300);
        await sender.EnqueueAsync(new PushMessage(new byte[150]), trackAck: false);
        var second = sender.EnqueueAsync(new PushMessage(new byte[150]), trackAck: false).AsTask();
        Assert.False(second.IsCompleted);
        sender.Shutdown(PushCloseCode.Normal, "bye", new PushChannelClosedException("closed"));
        await Assert.ThrowsAsync<PushChannelClosedException>(() => second.WaitAsync(s_timeout));
    }

    [Fact]
    public async Task DropOldest_drops_and_the_receiver_is_told_of_the_gap()
    {
        var sender = Engine(PushBufferFullPolicy.DropOldest);
        var waiting = new List<Task>();
        for (var i = 1; i <= 10; i++)
        {
            waiting.Add((await sender.EnqueueAsync(PushMessage.FromString($"m{i}"), trackAck: true))!);
        }

        Assert.Equal(3, sender.UnacknowledgedCount);
        for (var i = 0; i < 7; i++)
        {
            await Assert.ThrowsAsync<PushMessageDroppedException>(() => waiting[i].WaitAsync(s_timeout));
        }

        var received = Channel.CreateUnbounded<string>();
        var dropped = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        var receiver = new DeliveryEngine("receiver", 1 << 20, (m, ct) => received.Writer.WriteAsync(m.GetString(), ct), NullLogger.Instance)
        {
            OnMessagesDropped = (count, _) =>
            {
                dropped.TrySetResult(count);
                return default;
            },
        };
        var (a, b) = InMemoryConnection.CreatePair();
        var runs = new[] { sender.RunAsync(a), receiver.RunAsync(b) };

        Assert.Equal(7, await dropped.Task.WaitAsync(s_timeout));
        using var cts = new CancellationTokenSource(s_timeout);
        Assert.Equal("m8", await received.Reader.ReadAsync(cts.Token));
        Assert.Equal("m9", await received.Reader.ReadAsync(cts.Token));
        Assert.Equal("m10", await received.Reader.ReadAsync(cts.Token));
        await Task.WhenAll(waiting.Skip(7)).WaitAsync(s_timeout);
        Assert.Equal(10, receiver.LastDelivered);

        sender.CloseConnection(PushCloseCode.Normal, null);
        await Task.WhenAll(runs).WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Disconnect_refuses_the_send_that_does_not_fit()
    {
        var sender = Engine(PushBufferFullPolicy.Disconnect);
        for (var i = 1; i <= 3; i++)
        {
            await sender.EnqueueAsync(PushMessage.FromString($"m{i}"), trackAck: false);
        }

        await Assert.ThrowsAsync<PushBufferFullException>(() => sender.EnqueueAsync(PushMessage.FromString("m4"), trackAck: false).AsTask());
        Assert.Equal(3, sender.UnacknowledgedCount);
    }
}
