using System.Buffers;
using System.Threading.Channels;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using PushKit.Client;
using PushKit.Delivery;
using PushKit.Server;
using PushKit.Server.Sessions;

namespace PushKit.Tests.Delivery;

/// <summary>
/// The pieces that keep connections cheap and fast: the client's receive queue, the write loop's signal, pooled
/// frame buffers, the shared heartbeat timer and the read loop's inline delivery.
/// </summary>
public class FastPathTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task The_receive_queue_refuses_writes_beyond_its_capacity_until_a_reader_makes_room()
    {
        var queue = new ReceiveQueue(capacity: 2);
        Assert.True(queue.TryWrite(PushMessage.FromString("1")));
        Assert.True(queue.TryWrite(PushMessage.FromString("2")));
        Assert.False(queue.TryWrite(PushMessage.FromString("3")));

        await using var reader = queue.ReadAllAsync().GetAsyncEnumerator();
        Assert.True(await reader.MoveNextAsync().AsTask().WaitAsync(s_timeout));
        Assert.Equal("1", reader.Current.GetString());
        Assert.True(queue.TryWrite(PushMessage.FromString("3")));
        Assert.False(queue.TryWrite(PushMessage.FromString("4")));
    }

    [Fact]
    public async Task A_waiting_writer_resumes_when_a_message_is_read_and_fails_when_the_queue_completes()
    {
        var queue = new ReceiveQueue(capacity: 1);
        Assert.True(queue.TryWrite(PushMessage.FromString("1")));
        var second = queue.WriteAsync(PushMessage.FromString("2"), CancellationToken.None).AsTask();
        Assert.False(second.IsCompleted);

        await using var reader = queue.ReadAllAsync().GetAsyncEnumerator();
        Assert.True(await reader.MoveNextAsync().AsTask().WaitAsync(s_timeout));
        await second.WaitAsync(s_timeout);

        var third = queue.WriteAsync(PushMessage.FromString("3"), CancellationToken.None).AsTask();
        Assert.False(third.IsCompleted);
        queue.Complete();
        await Assert.ThrowsAsync<ChannelClosedException>(() => third.WaitAsync(s_timeout));

        // What was queued before the end is still read, then the sequence ends.
        Assert.True(await reader.MoveNextAsync().AsTask().WaitAsync(s_timeout));
        Assert.Equal("2", reader.Current.GetString());
        Assert.False(await reader.MoveNextAsync().AsTask().WaitAsync(s_timeout));
    }

    [Fact]
    public async Task A_writer_and_a_reader_pass_many_messages_through_a_small_queue_without_stalling()
    {
        var queue = new ReceiveQueue(capacity: 16);
        using var cts = new CancellationTokenSource(s_timeout);
        const int count = 200_000;
        var reader = Task.Run(async () =>
        {
            var next = 0;
            await foreach (var message in queue.ReadAllAsync(cts.Token))
            {
                Assert.Equal(next.ToString(System.Globalization.CultureInfo.InvariantCulture), message.GetString());
                if (++next == count)
                {
                    return next;
                }
            }

            return next;
        });

        for (var i = 0; i < count; i++)
        {
            var message = PushMessage.FromString(i.ToString(System.Globalization.CultureInfo.InvariantCulture));
            if (!queue.TryWrite(message))
            {
                await queue.WriteAsync(message, cts.Token);
            }
        }

        Assert.Equal(count, await reader.WaitAsync(s_timeout));
    }

    [Fact]
    public async Task Concurrent_readers_share_the_messages_and_all_end_when_the_queue_completes()
    {
        var queue = new ReceiveQueue(capacity: 10_000);
        var received = new System.Collections.Concurrent.ConcurrentBag<string>();
        var readers = Enumerable.Range(0, 3).Select(_ => Task.Run(async () =>
        {
            await foreach (var message in queue.ReadAllAsync())
            {
                received.Add(message.GetString());
            }
        })).ToArray();

        for (var i = 0; i < 5_000; i++)
        {
            Assert.True(queue.TryWrite(PushMessage.FromString(i.ToString(System.Globalization.CultureInfo.InvariantCulture))));
        }

        await Eventually.TrueAsync(() => received.Count == 5_000);
        queue.Complete();
        await Task.WhenAll(readers).WaitAsync(s_timeout);
        Assert.Equal(5_000, received.Distinct().Count());
    }

    [Fact]
    public async Task A_waiting_reader_stops_when_cancelled_and_another_reader_then_gets_the_messages()
    {
        var queue = new ReceiveQueue(capacity: 10);
        using var cts = new CancellationTokenSource();
        var first = queue.ReadAllAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        var waiting = first.MoveNextAsync().AsTask();
        Assert.False(waiting.IsCompleted);
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(s_timeout));
        await first.DisposeAsync();

        await using var second = queue.ReadAllAsync().GetAsyncEnumerator();
        var next = second.MoveNextAsync().AsTask();
        Assert.True(queue.TryWrite(PushMessage.FromString("after")));
        Assert.True(await next.WaitAsync(s_timeout));
        Assert.Equal("after", second.Current.GetString());
    }

    [Fact]
    public async Task The_signal_wakes_its_waiter_coalesces_sets_and_ends_every_wait_once_cancelled()
    {
        var signal = new AsyncSignal();
        signal.Set();
        signal.Set();
        Assert.True(signal.WaitAsync().IsCompletedSuccessfully);

        var waiting = signal.WaitAsync().AsTask();
        Assert.False(waiting.IsCompleted);
        signal.Set();
        await waiting.WaitAsync(s_timeout);

        waiting = signal.WaitAsync().AsTask();
        using var cts = new CancellationTokenSource();
        await cts.CancelAsync();
        signal.Cancel(cts.Token);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(s_timeout));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => signal.WaitAsync().AsTask().WaitAsync(s_timeout));
    }

    [Fact]
    public void The_pooled_buffer_grows_with_what_is_written_and_holds_nothing_once_released()
    {
        var buffer = new PooledBufferWriter();
        Assert.Equal(0, buffer.WrittenMemory.Length);
        var data = Enumerable.Range(0, 10_000).Select(i => (byte)i).ToArray();
        buffer.Write<byte>(data.AsSpan(0, 100));
        buffer.Write<byte>(data.AsSpan(100));
        Assert.Equal(data, buffer.WrittenMemory.ToArray());

        buffer.Release();
        Assert.Equal(0, buffer.WrittenCount);
        Assert.Equal(0, buffer.WrittenMemory.Length);
        buffer.Write<byte>(data.AsSpan(0, 3));
        Assert.Equal(data[..3], buffer.WrittenMemory.ToArray());
    }

    [Fact]
    public async Task One_heartbeat_timer_serves_every_connection_and_stops_with_the_last()
    {
        var time = new FakeTimeProvider();
        var heartbeat = new HeartbeatSettings(TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(30), time);
        var first = new DeliveryEngine("first", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance) { Heartbeat = heartbeat };
        var second = new DeliveryEngine("second", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance) { Heartbeat = heartbeat };
        var (a, peerA) = InMemoryConnection.CreatePair();
        var (b, peerB) = InMemoryConnection.CreatePair();
        var runs = new[] { first.RunAsync(a), second.RunAsync(b) };
        await Eventually.TrueAsync(() => heartbeat.Count == 2);

        time.Advance(TimeSpan.FromSeconds(10));
        await Eventually.TrueAsync(() => a.SentText().Contains("\"ping\"", StringComparison.Ordinal) && b.SentText().Contains("\"ping\"", StringComparison.Ordinal));

        a.Abort();
        b.Abort();
        await Task.WhenAll(runs).WaitAsync(s_timeout);
        Assert.Equal(0, heartbeat.Count);
        _ = (peerA, peerB);
    }

    [Fact]
    public async Task A_message_is_not_handed_over_inline_while_the_one_before_it_is_still_being_delivered()
    {
        var seen = new List<string>();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var receiver = new DeliveryEngine(
            "receiver",
            1 << 20,
            async (m, _) =>
            {
                started.TrySetResult();
                await gate.Task;
                lock (seen)
                {
                    seen.Add(m.GetString());
                }
            },
            NullLogger.Instance)
        {
            // The application refuses message 1 inline (it goes through the delivery loop) and would take any other.
            TryDeliverInline = m =>
            {
                if (m.GetString() == "1")
                {
                    return false;
                }

                lock (seen)
                {
                    seen.Add(m.GetString());
                }

                return true;
            },
        };
        var sender = new DeliveryEngine("sender", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance);
        var (a, b) = InMemoryConnection.CreatePair();
        var runs = new[] { sender.RunAsync(a), receiver.RunAsync(b) };

        var first = sender.Enqueue(PushMessage.FromString("1"), trackAck: true)!;
        await started.Task.WaitAsync(s_timeout);
        var second = sender.Enqueue(PushMessage.FromString("2"), trackAck: true)!;
        await Eventually.TrueAsync(() => receiver.ReceivedThrough == 2);
        gate.SetResult();
        await Task.WhenAll(first, second).WaitAsync(s_timeout);

        lock (seen)
        {
            Assert.Equal(["1", "2"], seen);
        }

        sender.CloseConnection(PushCloseCode.Normal, "done");
        await Task.WhenAll(runs).WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Inline_delivery_never_overtakes_the_delivery_loop()
    {
        // The application takes some messages at once (inline) and refuses others, which then go through the
        // delivery loop (slowly): whatever the mix, it sees every message once, in order.
        var seen = new List<int>();
        var random = new Random(7);
        var receiver = new DeliveryEngine(
            "receiver",
            1 << 20,
            async (m, _) =>
            {
                await Task.Yield();
                lock (seen)
                {
                    seen.Add(int.Parse(m.GetString(), System.Globalization.CultureInfo.InvariantCulture));
                }
            },
            NullLogger.Instance)
        {
            TryDeliverInline = m =>
            {
                lock (seen)
                {
                    if (random.Next(3) == 0)
                    {
                        return false;
                    }

                    seen.Add(int.Parse(m.GetString(), System.Globalization.CultureInfo.InvariantCulture));
                    return true;
                }
            },
        };
        var sender = new DeliveryEngine("sender", 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance);
        var (a, b) = InMemoryConnection.CreatePair();
        var runs = new[] { sender.RunAsync(a), receiver.RunAsync(b) };

        const int count = 3000;
        var acks = Enumerable.Range(1, count).Select(i => sender.Enqueue(PushMessage.FromString(i.ToString(System.Globalization.CultureInfo.InvariantCulture)), trackAck: true)!).ToArray();
        await Task.WhenAll(acks).WaitAsync(s_timeout);

        lock (seen)
        {
            Assert.Equal(Enumerable.Range(1, count), seen);
        }

        Assert.Equal(count, receiver.LastDelivered);
        sender.CloseConnection(PushCloseCode.Normal, "done");
        await Task.WhenAll(runs).WaitAsync(s_timeout);
    }
}

/// <summary>The broadcast hot path allocates nothing per recipient: a message is encoded once and shared.</summary>
public class BroadcastAllocationTests
{
    [Fact]
    public void Queueing_a_broadcast_for_another_session_allocates_nothing()
    {
        var engines = Enumerable.Range(0, 100)
            .Select(i => new DeliveryEngine("session " + i, 1 << 20, (_, _) => ValueTask.CompletedTask, NullLogger.Instance)
            {
                Limits = new BufferLimits(10_000, 1 << 30, PushBufferFullPolicy.Wait),
            })
            .ToArray();

        // Warm up: the rings grow to 64 entries (48 used) and the code paths are compiled.
        var warm = PushMessage.FromString(new string('w', 256));
        foreach (var engine in engines)
        {
            for (var i = 0; i < 40; i++)
            {
                Assert.True(engine.TryEnqueueNow(warm));
            }
        }

        var message = PushMessage.FromString(new string('x', 256));
        _ = message.EncodedBody.Length;
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var round = 0; round < 8; round++)
        {
            foreach (var engine in engines)
            {
                engine.TryEnqueueNow(message);
            }
        }

        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
    }

    [Fact]
    public async Task A_broadcast_through_the_sender_allocates_the_same_for_ten_sessions_as_for_a_thousand()
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddPushKit(o =>
        {
                        o.BufferFullPolicy = PushBufferFullPolicy.Wait;
        });
        await using var provider = services.BuildServiceProvider();
        var manager = provider.GetRequiredService<PushSessionManager>();
        var sender = provider.GetRequiredService<IPushSender>();
        var message = PushMessage.FromString(new string('x', 256));

        long BroadcastCost()
        {
            // Warm up: the rings grow and the code paths are compiled; the session snapshot is taken.
            for (var i = 0; i < 40; i++)
            {
                Assert.True(sender.BroadcastAsync(message).IsCompletedSuccessfully);
            }

            var before = GC.GetAllocatedBytesForCurrentThread();
            for (var i = 0; i < 8; i++)
            {
                _ = sender.BroadcastAsync(message);
            }

            return (GC.GetAllocatedBytesForCurrentThread() - before) / 8;
        }

        for (var i = 0; i < 10; i++)
        {
            manager.Create(null, out _);
        }

        var ten = BroadcastCost();
        for (var i = 10; i < 1_000; i++)
        {
            manager.Create(null, out _);
        }

        var thousand = BroadcastCost();
        // What a broadcast allocates at all (its own state machine in a Debug build) does not grow with the recipients.
        Assert.True(thousand <= ten, $"a broadcast to 1,000 sessions allocated {thousand} B, to 10 sessions {ten} B");
    }
}
