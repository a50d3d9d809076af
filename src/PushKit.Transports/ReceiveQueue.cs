using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using PushKit.Delivery;

namespace PushKit.Client;

/// <summary>
/// The bounded queue of received messages between the delivery engine (one writer at a time) and the application's
/// <see cref="IPushChannel.ReadAllAsync"/> readers.
/// </summary>
/// <remarks>
/// A channel takes a lock on every write (and a bounded one on every read too), and the read loop and the application
/// then contend on it for every message; the profile showed clients spinning on it for much of their CPU. Here the
/// queue is lock-free, the bound is a counter the single writer checks, and a lock-free signal wakes a reader that
/// found the queue empty. Concurrent readers share the messages: one waits on the signal, the others for their turn,
/// and all of them look again when the one on the signal is woken.
/// </remarks>
internal sealed class ReceiveQueue
{
    private readonly ConcurrentQueue<PushMessage> _items = new();
    private readonly AsyncSignal _available = new();
    private readonly SemaphoreSlim _turn = new(0);
    private int _waiterSlot;
    private int _contenders;
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

        AddAccepted(message);
        return true;
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

    /// <summary>Whether <see cref="Complete"/> was called.</summary>
    public bool IsCompleted => _completed;

    /// <summary>
    /// Moves the messages still queued, in order, to <paramref name="destination"/> (a new, larger or equal queue). A
    /// reader still draining this queue concurrently takes each message or leaves it to the move, never both.
    /// </summary>
    public void MoveRemainingTo(ReceiveQueue destination)
    {
        while (_items.TryDequeue(out var message))
        {
            Interlocked.Decrement(ref _count);
            destination.AddAccepted(message);
        }
    }

    /// <summary>Queues <paramref name="message"/> without checking the bound (the caller did, or it was accepted already).</summary>
    private void AddAccepted(PushMessage message)
    {
        Interlocked.Increment(ref _count);
        _items.Enqueue(message);
        _available.Set();
    }

    /// <summary>No more messages: readers finish once the queue is empty; waiting writers fail.</summary>
    public void Complete()
    {
        _completed = true;
        _available.Set();
        Interlocked.Exchange(ref _space, null)?.TrySetResult();

        // Every reader waiting for its turn ends too (one arriving after this sees the completion itself).
        var contenders = Volatile.Read(ref _contenders);
        if (contenders > 0)
        {
            _turn.Release(contenders);
        }
    }

    public async IAsyncEnumerable<PushMessage> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (true)
        {
            if (_items.TryDequeue(out var message))
            {
                if (Interlocked.Decrement(ref _count) < _capacity && Volatile.Read(ref _space) is not null)
                {
                    Interlocked.Exchange(ref _space, null)?.TrySetResult();
                }

                yield return message;
                continue;
            }

            if (_completed && _items.IsEmpty)
            {
                yield break;
            }

            await WaitForItemsAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WaitForItemsAsync(CancellationToken cancellationToken)
    {
        // One reader at a time waits on the signal (it has a single waiter). The usual single reader takes that slot
        // without a lock; a concurrent reader waits for its turn and then looks at the queue again.
        if (Interlocked.CompareExchange(ref _waiterSlot, 1, 0) != 0)
        {
            Interlocked.Increment(ref _contenders);
            try
            {
                if (Volatile.Read(ref _waiterSlot) != 0 && !_completed)
                {
                    await _turn.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
            }
            finally
            {
                Interlocked.Decrement(ref _contenders);
            }

            return;
        }

        try
        {
            // A cancelled reader is woken by a set; it then throws.
            using var registration = cancellationToken.CanBeCanceled
                ? cancellationToken.UnsafeRegister(static state => ((AsyncSignal)state!).Set(), _available)
                : default;
            while (_items.IsEmpty && !_completed)
            {
                await _available.WaitAsync().ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
            }
        }
        finally
        {
            // Every reader waiting for its turn looks at the queue again: this one may take a message and stop reading,
            // and a reader left waiting for a turn nobody gives would miss the messages that follow. Each woken reader
            // takes a message, or the slot, or waits for its turn again.
            Interlocked.Exchange(ref _waiterSlot, 0);
            var contenders = Volatile.Read(ref _contenders);
            if (contenders > 0)
            {
                _turn.Release(contenders);
            }
        }
    }
}
