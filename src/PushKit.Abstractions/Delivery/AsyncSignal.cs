using System.Threading.Tasks.Sources;

namespace PushKit.Delivery;

/// <summary>
/// An auto-reset signal for one waiter at a time: <see cref="Set"/> from any thread wakes the pending (or the next)
/// <see cref="WaitAsync"/>; sets while nobody waits coalesce into one. A single reusable object with no lock — no
/// allocation per wait, and no lock for a setter and the waiter to contend on — because it sits on the hot path of
/// every connection (the write loop's doorbell) and of every received message (the client's receive queue).
/// </summary>
internal sealed class AsyncSignal : IValueTaskSource
{
    private const int Idle = 0;
    private const int Signalled = 1;
    private const int Waiting = 2;

    // The woken waiter continues on the thread pool, never inside the setter's call (a setter may hold a lock, or be
    // the connection's read loop, which a waiter must not be able to block).
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private int _state;
    private volatile bool _cancelled;
    private CancellationToken _token;

    /// <summary>Wakes the waiter, or the next wait when nobody waits now.</summary>
    public void Set()
    {
        while (true)
        {
            switch (Volatile.Read(ref _state))
            {
                case Signalled:
                    return;
                case Idle when Interlocked.CompareExchange(ref _state, Signalled, Idle) == Idle:
                    return;
                case Waiting when Interlocked.CompareExchange(ref _state, Idle, Waiting) == Waiting:
                    _core.SetResult(true);
                    return;
            }
        }
    }

    /// <summary>
    /// Ends every wait, now and later, with <see cref="OperationCanceledException"/> for <paramref name="token"/>
    /// (call it from that token's cancellation callback).
    /// </summary>
    public void Cancel(CancellationToken token)
    {
        _token = token;
        _cancelled = true;
        if (Interlocked.CompareExchange(ref _state, Idle, Waiting) == Waiting)
        {
            _core.SetException(new OperationCanceledException(token));
        }
    }

    /// <summary>Completes when the signal is set (at once when it was set since the last wait). One waiter at a time.</summary>
    /// <exception cref="OperationCanceledException">The signal was cancelled.</exception>
    public ValueTask WaitAsync()
    {
        if (_cancelled)
        {
            return Canceled();
        }

        if (Interlocked.CompareExchange(ref _state, Idle, Signalled) == Signalled)
        {
            return ValueTask.CompletedTask;
        }

        _core.Reset();
        if (Interlocked.CompareExchange(ref _state, Waiting, Idle) != Idle)
        {
            // Set in between: take it.
            Volatile.Write(ref _state, Idle);
            return ValueTask.CompletedTask;
        }

        // A cancellation between the first check and now could not see the waiter: withdraw it, unless a setter or
        // the cancellation already took it (then the pending task is completing).
        if (_cancelled && Interlocked.CompareExchange(ref _state, Idle, Waiting) == Waiting)
        {
            return Canceled();
        }

        return new ValueTask(this, _core.Version);
    }

    private ValueTask Canceled() =>
        ValueTask.FromCanceled(_token.IsCancellationRequested ? _token : new CancellationToken(canceled: true));

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
