using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

/// <summary>
/// When a receiver stops reading because its application is behind, and when it must read on: an application that
/// awaits an acknowledgement from the peer needs the peer's ack, which arrives behind the peer's messages.
/// </summary>
public class ReadPauseTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    private static string Messages(int from, int to, string data = "m") =>
        string.Join("\n", Enumerable.Range(from, to - from + 1).Select(i => $"{{\"type\":\"msg\",\"seq\":{i},\"data\":\"{data}\"}}"));

    [Fact]
    public async Task A_handler_that_awaits_an_acknowledged_reply_for_each_message_of_a_burst_is_not_stalled()
    {
        // The "server": answers every message with an acknowledged send and awaits the ack before it takes the next
        // message, as an OnMessageAsync handler that calls session.SendAsync does.
        DeliveryEngine server = null!;
        var handlerFailure = new TaskCompletionSource<Exception>(TaskCreationOptions.RunContinuationsAsynchronously);
        server = new DeliveryEngine("server", 1 << 20, async (message, ct) =>
        {
            try
            {
                var acknowledged = server.Enqueue(PushMessage.FromString("re:" + message.GetString()), trackAck: true)!;
                await acknowledged.WaitAsync(TimeSpan.FromSeconds(5), ct);
            }
            catch (Exception ex)
            {
                handlerFailure.TrySetResult(ex);
                throw;
            }
        }, NullLogger.Instance);

        var replies = Channel.CreateUnbounded<string>();
        var client = new DeliveryEngine("client", 1 << 20, (m, ct) => replies.Writer.WriteAsync(m.GetString(), ct), NullLogger.Instance);

        // A burst of 300 from the client, far more than the 64 the server queues for its handler when nothing of its
        // own awaits an ack: its first reply's ack comes behind all of them.
        const int burst = 300;
        for (var i = 1; i <= burst; i++)
        {
            _ = client.Enqueue(PushMessage.FromString($"m{i}"), trackAck: false);
        }

        var (a, b) = InMemoryConnection.CreatePair();
        var runs = new[] { client.RunAsync(a), server.RunAsync(b) };
        using var cts = new CancellationTokenSource(s_timeout);
        for (var i = 1; i <= burst; i++)
        {
            var next = replies.Reader.ReadAsync(cts.Token).AsTask();
            var first = await Task.WhenAny(next, handlerFailure.Task);
            if (first != next)
            {
                Assert.Fail($"The handler failed at reply {i}: {(await handlerFailure.Task).Message}");
            }

            Assert.Equal($"re:m{i}", await next);
        }

        client.CloseConnection(PushCloseCode.Normal, null);
        await Task.WhenAll(runs).WaitAsync(s_timeout);
    }

    [Fact]
    public async Task With_nothing_of_its_own_unacknowledged_a_receiver_stops_reading_at_64_queued_messages()
    {
        var log = new EventLog();
        var receiver = new Receiver(logger: log);
        var engine = receiver.Engine;

        receiver.Connection.Inject(Messages(1, 200));

        // Message 1 with the application, 2-66 queued: reading stops there and stays stopped. That is ordinary
        // back-pressure, not worth a warning.
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 66);
        Assert.Equal(66, engine.ReceivedThrough);
        Assert.DoesNotContain(16, log.EventIds);

        await receiver.FinishAsync(200);
    }

    [Fact]
    public async Task While_an_ack_is_awaited_reading_goes_on_up_to_the_byte_bound_of_the_buffer()
    {
        // 100,000 bytes, plus 64 bytes of frame envelope for each of the 1,000 messages: 164,000 bytes, about 158 of the
        // 1,037-1,039-byte frames injected below.
        var log = new EventLog();
        var receiver = new Receiver(new BufferLimits(1_000, 100_000, PushBufferFullPolicy.Wait), log);
        var engine = receiver.Engine;

        // Something of the receiver's own awaits the peer's ack.
        var acknowledged = engine.Enqueue(PushMessage.FromString("mine"), trackAck: true)!;
        receiver.Connection.Inject(Messages(1, 400, new string('x', 1000)));

        // Past 64 queued messages, and stopped at the byte bound (message 1 with the application, about 158 frames
        // queued), not at the message bound.
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough > 66);
        Assert.InRange(engine.ReceivedThrough, 155, 162);

        // Stopping while an ack is awaited may stall that send: it is logged, once for the connection.
        Assert.Equal(1, log.EventIds.Count(id => id == 16));

        // The peer's ack arrives behind what is unread, and is read once the application catches up.
        receiver.Connection.Inject(Ack(1));
        receiver.TakeAll();
        await acknowledged.WaitAsync(s_timeout);
        await receiver.FinishAsync(400);
    }

    [Fact]
    public async Task Large_messages_stop_reading_at_the_byte_bound_before_64_are_queued()
    {
        // 10,000 bytes plus 64 for each of the 100 messages: 16,400 bytes, about 16 of the frames injected below.
        var receiver = new Receiver(new BufferLimits(100, 10_000, PushBufferFullPolicy.Wait));
        var engine = receiver.Engine;

        receiver.Connection.Inject(Messages(1, 200, new string('x', 1000)));

        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough > 1);
        Assert.InRange(engine.ReceivedThrough, 16, 18);

        await receiver.FinishAsync(200);
    }

    [Fact]
    public async Task While_an_ack_is_awaited_reading_goes_on_up_to_the_message_bound_of_the_buffer()
    {
        var receiver = new Receiver(new BufferLimits(150, long.MaxValue, PushBufferFullPolicy.Wait));
        var engine = receiver.Engine;

        var acknowledged = engine.Enqueue(PushMessage.FromString("mine"), trackAck: true)!;
        receiver.Connection.Inject(Messages(1, 400));

        // Message 1 with the application, 2-151 queued (150), 152 waiting for room.
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 152);

        // The application catches up; then the ack for "mine" arrives.
        receiver.TakeAll();
        await Eventually.TrueAsync(() => engine.LastDelivered == 400);
        receiver.Connection.Inject(Ack(1));
        await acknowledged.WaitAsync(s_timeout);
        await receiver.FinishAsync(400);
    }

    [Fact]
    public async Task A_send_that_nobody_awaits_does_not_lift_the_64_message_pause()
    {
        var receiver = new Receiver(new BufferLimits(10_000, 16 * 1024 * 1024, PushBufferFullPolicy.Disconnect));
        var engine = receiver.Engine;

        // A broadcast's way in (queued, nobody waits for its ack): a server almost always has one unacknowledged.
        Assert.True(engine.TryEnqueueNow(PushMessage.FromString("news")));
        receiver.Connection.Inject(Messages(1, 2000));

        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 66);

        await receiver.FinishAsync(2000);
    }

    [Fact]
    public async Task A_send_waiting_for_room_in_a_full_buffer_lifts_the_pause()
    {
        // Full in bytes after one message; the bound on what waits for the application stays large (10,000 messages,
        // 640 KB with their envelopes).
        var receiver = new Receiver(new BufferLimits(10_000, 10, PushBufferFullPolicy.Wait));
        var engine = receiver.Engine;
        Assert.True(engine.TryEnqueueNow(PushMessage.FromString("first")));
        receiver.Connection.Inject(Messages(1, 200));
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 66);

        // The application's next send waits for the ack of the first, which is behind the unread messages.
        var second = engine.EnqueueAsync(PushMessage.FromString("second"), trackAck: false).AsTask();
        await Eventually.TrueAsync(() => engine.ReceivedThrough == 200);
        receiver.Connection.Inject(Ack(1));
        await second.WaitAsync(s_timeout);

        await receiver.FinishAsync(200);
    }

    [Fact]
    public async Task Frames_that_enter_through_a_full_queue_are_held_to_the_byte_bound()
    {
        // 10,000 bytes plus 64 for each of the 100 messages: 16,400 bytes.
        var receiver = new Receiver(new BufferLimits(100, 10_000, PushBufferFullPolicy.Wait));
        var engine = receiver.Engine;
        _ = engine.Enqueue(PushMessage.FromString("mine"), trackAck: true);

        // The queue fills with small frames (about 3.5 KB), then 10 KB frames wait for room.
        receiver.Connection.Inject(Messages(1, 101));
        receiver.Connection.Inject(Messages(102, 400, new string('x', 10_000)));
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 102);

        // The application takes the small ones one at a time; each frees a slot in a full queue, which a large frame
        // used to take whatever the bytes queued.
        for (var i = 1; i <= 100; i++)
        {
            receiver.TakeOne();
            await Eventually.TrueAsync(() => engine.LastDelivered == i);
            await Eventually.TrueAsync(() => engine.IsReadPaused);
        }

        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.LastDelivered == 100);
        var held = engine.ReceivedThrough - engine.LastDelivered;
        Assert.True(held * 10_035L <= 16_400 + (2 * 10_035), $"{held} messages held (about {held * 10_035L} bytes); the bound is 16,400 bytes and a frame.");

        await receiver.FinishAsync(400);
    }

    [Fact]
    public async Task Once_nothing_is_awaited_a_full_queue_drains_to_64_before_reading_goes_on()
    {
        var receiver = new Receiver(new BufferLimits(150, long.MaxValue, PushBufferFullPolicy.Wait));
        var engine = receiver.Engine;
        var acknowledged = engine.Enqueue(PushMessage.FromString("mine"), trackAck: true)!;

        // Message 1 with the application, 2-151 queued, 152 waiting for room; the ack is behind them.
        receiver.Connection.Inject(Messages(1, 155));
        receiver.Connection.Inject(Ack(1));
        receiver.Connection.Inject(Messages(156, 400));
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 152);

        // A few deliveries let the read loop reach the ack: nothing is awaited any more.
        for (var i = 1; i <= 4; i++)
        {
            receiver.TakeOne();
            await Eventually.TrueAsync(() => engine.LastDelivered == i);
        }

        await acknowledged.WaitAsync(s_timeout);

        // From here the read loop stays paused until the queue is down to 64, however many deliveries that takes.
        for (var i = 5; i <= 60; i++)
        {
            receiver.TakeOne();
            await Eventually.TrueAsync(() => engine.LastDelivered == i);
            await Eventually.TrueAsync(() => engine.IsReadPaused);
            Assert.True(engine.ReceivedThrough - engine.LastDelivered - 1 >= 64, $"Read through {engine.ReceivedThrough} with {engine.ReceivedThrough - engine.LastDelivered - 1} queued and nothing awaited.");
            Assert.True(engine.ReceivedThrough <= 157, $"Read on to {engine.ReceivedThrough} with nothing awaited.");
        }

        await receiver.FinishAsync(400);
    }

    [Fact]
    public async Task A_pause_ends_when_something_of_the_receivers_own_starts_to_await_an_ack()
    {
        var receiver = new Receiver();
        var engine = receiver.Engine;

        receiver.Connection.Inject(Messages(1, 200));
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 66);

        // The application (stuck on message 1) now sends and awaits the ack: reading resumes, so the ack can be read.
        var acknowledged = engine.Enqueue(PushMessage.FromString("mine"), trackAck: true)!;
        await Eventually.TrueAsync(() => engine.ReceivedThrough == 200);
        receiver.Connection.Inject(Ack(1));
        await acknowledged.WaitAsync(s_timeout);

        await receiver.FinishAsync(200);
    }

    private static string Ack(long sequence) => $"{{\"type\":\"ack\",\"seq\":{sequence}}}";

    /// <summary>A receiving engine on an in-memory connection whose application takes a message only when let.</summary>
    private sealed class Receiver
    {
        private readonly SemaphoreSlim _gate = new(0);
        private readonly Task<ConnectionEnd> _run;

        public Receiver(BufferLimits? limits = null, ILogger? logger = null)
        {
            Engine = new DeliveryEngine("receiver", 1 << 20, async (_, ct) => await _gate.WaitAsync(ct), logger ?? NullLogger.Instance)
            {
                Limits = limits,
            };
            (Connection, _) = InMemoryConnection.CreatePair();
            _run = Engine.RunAsync(Connection);
        }

        public DeliveryEngine Engine { get; }

        /// <summary>The receiver's end: what is injected here arrives from the peer.</summary>
        public InMemoryConnection Connection { get; }

        /// <summary>Lets the application take one more message.</summary>
        public void TakeOne() => _gate.Release();

        /// <summary>Lets the application take every message from now on.</summary>
        public void TakeAll() => _gate.Release(1_000_000);

        /// <summary>Lets the application take everything, waits until it has taken message <paramref name="last"/>, and ends the connection.</summary>
        public async Task FinishAsync(long last)
        {
            TakeAll();
            await Eventually.TrueAsync(() => Engine.LastDelivered == last);
            Connection.Abort();
            await _run.WaitAsync(s_timeout);
        }
    }

    /// <summary>Records the event id of every log line.</summary>
    private sealed class EventLog : ILogger
    {
        private readonly List<int> _ids = [];

        public List<int> EventIds
        {
            get
            {
                lock (_ids)
                {
                    return [.. _ids];
                }
            }
        }

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (_ids)
            {
                _ids.Add(eventId.Id);
            }
        }
    }
}
