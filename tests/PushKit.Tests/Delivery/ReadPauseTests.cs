using System.Threading.Channels;
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
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var engine = new DeliveryEngine("receiver", 1 << 20, async (_, ct) => await release.Task.WaitAsync(ct), NullLogger.Instance);
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        a.Inject(Messages(1, 200));

        // Message 1 with the application, 2-66 queued: reading stops there and stays stopped.
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 66);
        Assert.Equal(66, engine.ReceivedThrough);

        release.SetResult();
        await Eventually.TrueAsync(() => engine.LastDelivered == 200);
        a.Abort();
        await run.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task While_an_ack_is_awaited_reading_goes_on_up_to_the_byte_bound_of_the_buffer()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var engine = new DeliveryEngine("receiver", 1 << 20, async (_, ct) => await release.Task.WaitAsync(ct), NullLogger.Instance)
        {
            // 100,000 bytes, plus 64 bytes of frame envelope for each of the 1,000 messages: 164,000 bytes, about 158 of
            // the 1,037-1,039-byte frames injected below.
            Limits = new BufferLimits(1_000, 100_000, PushBufferFullPolicy.Wait),
        };
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        // Something of the receiver's own awaits the peer's ack.
        var acknowledged = engine.Enqueue(PushMessage.FromString("mine"), trackAck: true)!;
        a.Inject(Messages(1, 400, new string('x', 1000)));

        // Past 64 queued messages, and stopped at the byte bound (message 1 with the application, about 158 frames
        // queued), not at the message bound.
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough > 66);
        Assert.InRange(engine.ReceivedThrough, 155, 162);

        // The peer's ack arrives behind what is unread, and is read once the application catches up.
        a.Inject("{\"type\":\"ack\",\"seq\":1}");
        release.SetResult();
        await acknowledged.WaitAsync(s_timeout);
        await Eventually.TrueAsync(() => engine.LastDelivered == 400);
        a.Abort();
        await run.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task Large_messages_stop_reading_at_the_byte_bound_before_64_are_queued()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var engine = new DeliveryEngine("receiver", 1 << 20, async (_, ct) => await release.Task.WaitAsync(ct), NullLogger.Instance)
        {
            // 10,000 bytes plus 64 for each of the 100 messages: 16,400 bytes, about 16 of the frames injected below.
            Limits = new BufferLimits(100, 10_000, PushBufferFullPolicy.Wait),
        };
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        a.Inject(Messages(1, 200, new string('x', 1000)));

        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough > 1);
        Assert.InRange(engine.ReceivedThrough, 16, 18);

        release.SetResult();
        await Eventually.TrueAsync(() => engine.LastDelivered == 200);
        a.Abort();
        await run.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task While_an_ack_is_awaited_reading_goes_on_up_to_the_message_bound_of_the_buffer()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var engine = new DeliveryEngine("receiver", 1 << 20, async (_, ct) => await release.Task.WaitAsync(ct), NullLogger.Instance)
        {
            Limits = new BufferLimits(150, long.MaxValue, PushBufferFullPolicy.Wait),
        };
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        var acknowledged = engine.Enqueue(PushMessage.FromString("mine"), trackAck: true)!;
        a.Inject(Messages(1, 400));

        // Message 1 with the application, 2-151 queued (150), 152 waiting for room.
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 152);

        // The ack for "mine" arrives: nothing of the receiver's own is awaited any more, and it stays paused.
        release.SetResult();
        await Eventually.TrueAsync(() => engine.LastDelivered == 400);
        a.Inject("{\"type\":\"ack\",\"seq\":1}");
        await acknowledged.WaitAsync(s_timeout);
        a.Abort();
        await run.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task A_pause_ends_when_something_of_the_receivers_own_starts_to_await_an_ack()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var engine = new DeliveryEngine("receiver", 1 << 20, async (_, ct) => await release.Task.WaitAsync(ct), NullLogger.Instance);
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        a.Inject(Messages(1, 200));
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 66);

        // The application (stuck on message 1) now sends and awaits the ack: reading resumes, so the ack can be read.
        var acknowledged = engine.Enqueue(PushMessage.FromString("mine"), trackAck: true)!;
        await Eventually.TrueAsync(() => engine.ReceivedThrough == 200);
        a.Inject("{\"type\":\"ack\",\"seq\":1}");
        await acknowledged.WaitAsync(s_timeout);

        release.SetResult();
        await Eventually.TrueAsync(() => engine.LastDelivered == 200);
        a.Abort();
        await run.WaitAsync(s_timeout);
    }
}
