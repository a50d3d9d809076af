using System.Threading.Channels;
using PushKit.Server.Sessions;

namespace PushKit.Tests.Server;

/// <summary>The server's queue for <c>ReadAllAsync</c>: bounded in bytes as well as in count, and completed cleanly.</summary>
public sealed class SessionReadQueueTests
{
    private static readonly TimeSpan T = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_message_that_does_not_fit_waits_until_a_read_makes_room_and_an_empty_queue_takes_any_message()
    {
        var queue = new SessionReadQueue(capacity: 16, maxBytes: 1_000);
        await queue.WriteAsync(new PushMessage(new byte[5_000]), CancellationToken.None).AsTask().WaitAsync(T);

        var waiting = queue.WriteAsync(new PushMessage(new byte[10]), CancellationToken.None).AsTask();
        Assert.False(waiting.IsCompleted);
        Assert.True(queue.TryRead(out var first));
        Assert.Equal(5_000, first.Payload.Length);
        await waiting.WaitAsync(T);
        Assert.True(queue.TryRead(out _));
        Assert.Equal(0, queue.Bytes);
    }

    [Theory]
    [InlineData("topic")]
    [InlineData("headers")]
    [InlineData("id")]
    public async Task A_messages_strings_count_as_well_as_its_payload(string where)
    {
        var queue = new SessionReadQueue(capacity: 16, maxBytes: 1_100);
        var text = new string('s', 100);
        PushMessage Message() => where switch
        {
            "topic" => new PushMessage(new byte[1], "text/plain") { Topic = text },
            "headers" => new PushMessage(new byte[1], "text/plain") { Headers = new Dictionary<string, string> { ["h"] = text } },
            _ => new PushMessage(new byte[1], "text/plain") { Id = text },
        };

        // Each message is about 300 bytes (100 characters at two bytes, the content type, 64 of overhead, 64 more per
        // header): three fit in 1,100 bytes, a fourth waits.
        for (var i = 0; i < 3; i++)
        {
            await queue.WriteAsync(Message(), CancellationToken.None).AsTask().WaitAsync(T);
        }

        Assert.InRange(queue.Bytes, 600, 1_100);
        var fourth = queue.WriteAsync(Message(), CancellationToken.None).AsTask();
        Assert.False(fourth.IsCompleted);
        Assert.True(queue.TryRead(out _));
        await fourth.WaitAsync(T);
    }

    [Fact]
    public async Task Complete_fails_a_writer_waiting_for_room_at_once_while_messages_are_still_queued()
    {
        var queue = new SessionReadQueue(capacity: 16, maxBytes: 1_000);
        await queue.WriteAsync(new PushMessage(new byte[800]), CancellationToken.None).AsTask().WaitAsync(T);
        var waiting = queue.WriteAsync(new PushMessage(new byte[800]), CancellationToken.None).AsTask();
        Assert.False(waiting.IsCompleted);

        queue.Complete();

        await Assert.ThrowsAsync<ChannelClosedException>(() => waiting.WaitAsync(T));
        // What was queued before the end can still be read.
        Assert.True(queue.TryRead(out _));
        Assert.False(await queue.WaitToReadAsync(CancellationToken.None).AsTask().WaitAsync(T));
    }
}
