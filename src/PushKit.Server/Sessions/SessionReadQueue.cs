using System.Threading.Channels;

namespace PushKit.Server.Sessions;

/// <summary>
/// The client's messages waiting for <see cref="IPushChannel.ReadAllAsync"/> (no handler registered): bounded by count
/// (<see cref="PushKitServerOptions.InboundQueueCapacity"/>) and by bytes (<see cref="PushKitServerOptions.MaxBufferedBytesPerSession"/>,
/// counting each message's payload, its strings (id, topic, content type, headers) at two bytes a character, and
/// <see cref="OverheadBytes"/>). A message that does not fit waits, and with
/// it the delivery of everything behind it, so the client is slowed down (not acknowledged) rather than parking up to a
/// thousand maximum-size messages in the server's memory. One writer (the session's delivery loop); any readers.
/// </summary>
internal sealed class SessionReadQueue(int capacity, long maxBytes)
{
    /// <summary>What a queued message costs beyond its payload and id, roughly: the message object and its strings.</summary>
    public const int OverheadBytes = 64;

    private readonly Channel<Entry> _messages = Channel.CreateBounded<Entry>(new BoundedChannelOptions(capacity) { SingleWriter = true });
    private long _bytes;
    private TaskCompletionSource? _room;
    private volatile bool _completed;

    /// <summary>Completes when a message may be there to read; false once the queue is completed and empty.</summary>
    public ValueTask<bool> WaitToReadAsync(CancellationToken cancellationToken) => _messages.Reader.WaitToReadAsync(cancellationToken);

    /// <summary>Bytes queued now.</summary>
    public long Bytes => Volatile.Read(ref _bytes);

    /// <summary>Queues <paramref name="message"/> once it fits: an empty queue always takes one message.</summary>
    /// <exception cref="ChannelClosedException">The queue was completed (the session ended).</exception>
    public async ValueTask WriteAsync(PushMessage message, CancellationToken cancellationToken)
    {
        var size = SizeOf(message);
        while (true)
        {
            var queued = Volatile.Read(ref _bytes);
            if (queued == 0 || queued + size <= maxBytes)
            {
                break;
            }

            if (_completed)
            {
                throw new ChannelClosedException();
            }

            var room = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            // A full barrier, then a second look: a reader that took a message, or a Complete, in between could not see
            // this waiter.
            Interlocked.Exchange(ref _room, room);
            if (Volatile.Read(ref _bytes) != queued || _completed)
            {
                continue;
            }

            await room.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }

        Interlocked.Add(ref _bytes, size);
        try
        {
            await _messages.Writer.WriteAsync(new Entry(message, size), cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            Interlocked.Add(ref _bytes, -size);
            throw;
        }
    }

    /// <summary>Takes the next message, if any, and lets a waiting writer re-check the room it left.</summary>
    public bool TryRead(out PushMessage message)
    {
        if (!_messages.Reader.TryRead(out var entry))
        {
            message = null!;
            return false;
        }

        message = entry.Message;
        Interlocked.Add(ref _bytes, -entry.Bytes);
        Interlocked.Exchange(ref _room, null)?.TrySetResult();
        return true;
    }

    /// <summary>No more messages: readers finish once the queue is empty, and a waiting writer fails.</summary>
    public void Complete()
    {
        _completed = true;
        _messages.Writer.TryComplete();
        Interlocked.Exchange(ref _room, null)?.TrySetResult();
    }

    private static long SizeOf(PushMessage message)
    {
        long characters = (message.Id?.Length ?? 0) + (message.Topic?.Length ?? 0) + message.ContentType.Length;
        long headers = 0;
        if (message.Headers is { } all)
        {
            foreach (var (name, value) in all)
            {
                characters += name.Length + value.Length;
                headers++;
            }
        }

        return message.Payload.Length + characters * sizeof(char) + headers * OverheadBytes + OverheadBytes;
    }

    private readonly record struct Entry(PushMessage Message, long Bytes);
}
