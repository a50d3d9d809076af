using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace PushKit.Client;

/// <summary>
/// The bounded queue of received messages between the delivery engine (one writer at a time) and the application's
/// <see cref="IPushChannel.ReadAllAsync"/> readers.
/// </summary>
/// <remarks>
/// A bounded channel takes one lock for every write and every read, and the read loop and the application then
/// contend on it for every message. Here reads are lock-free (an unbounded channel's queue) and the bound is a
/// counter the single writer checks.
/// </remarks>
internal sealed class ReceiveQueue
{
    private readonly Channel<PushMessage> _channel = Channel.CreateUnbounded<PushMessage>(new UnboundedChannelOptions { SingleWriter = true });
    private readonly int _capacity;
    private int _count;
    private volatile bool _completed;
    private TaskCompletionSource? _space;

    public ReceiveQueue(int capacity) => _capacity = capacity;

    /// <summary>Queues <paramref name="message"/> when there is room; false when full or completed.</summary>
    public bool TryWrite(PushMessage message)
    {
        if (_completed || Volatile.Read(ref _count) >= _capacity)
        {
            return false;
        }

        Interlocked.Increment(ref _count);
        if (_channel.Writer.TryWrite(message))
        {
            return true;
        }

        Interlocked.Decrement(ref _count);
        return false;
    }

    /// <summary>Queues <paramref name="message"/>, waiting for room.</summary>
    /// <exception cref="ChannelClosedException">The queue was completed.</exception>
    public async ValueTask WriteAsync(PushMessage message, CancellationToken cancellationToken)
    {
        while (!TryWrite(message))
        {
            if (_completed)
            {
                throw new ChannelClosedException();
            }

            var space = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Interlocked.Exchange(ref _space, space);

            // A reader may have made room between the failed write and the line above, before it could see the waiter.
            if (Volatile.Read(ref _count) < _capacity || _completed)
            {
                Interlocked.CompareExchange(ref _space, null, space);
                continue;
            }

            await space.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>No more messages: readers finish once the queue is empty; waiting writers fail.</summary>
    public void Complete()
    {
        _completed = true;
        _channel.Writer.TryComplete();
        Interlocked.Exchange(ref _space, null)?.TrySetResult();
    }

    public async IAsyncEnumerable<PushMessage> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var reader = _channel.Reader;
        while (await reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            while (reader.TryRead(out var message))
            {
                if (Interlocked.Decrement(ref _count) < _capacity && Volatile.Read(ref _space) is not null)
                {
                    Interlocked.Exchange(ref _space, null)?.TrySetResult();
                }

                yield return message;
            }
        }
    }
}
