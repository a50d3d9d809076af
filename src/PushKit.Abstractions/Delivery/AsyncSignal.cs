using System.Threading.Tasks.Sources;

namespace PushKit.Delivery;

/// <summary>
/// An auto-reset signal for one waiter: <see cref="Set"/> from any thread wakes the pending (or the next)
/// <see cref="WaitAsync"/>; sets while nobody waits coalesce into one. A single reusable object — no channel, no
/// allocation per wait — because every connection's write loop holds one while idle.
/// </summary>
internal sealed class AsyncSignal : IValueTaskSource
{
    private readonly object _gate = new();
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private bool _set;
    private bool _waiting;
    private bool _cancelled;
    private CancellationToken _token;

    /// <summary>Wakes the waiter, or the next wait when nobody waits now.</summary>
    public void Set()
    {
        lock (_gate)
        {
            if (!_waiting)
            {
                _set = true;
                return;
            }

            _waiting = false;
        }

        _core.SetResult(true);
    }

    /// <summary>
    /// Ends every wait, now and later, with <see cref="OperationCanceledException"/> for <paramref name="token"/>
    /// (call it from that token's cancellation callback).
    /// </summary>
    public void Cancel(CancellationToken token)
    {
        lock (_gate)
        {
            _cancelled = true;
            _token = token;
            if (!_waiting)
            {
                return;
            }

            _waiting = false;
        }

        _core.SetException(new OperationCanceledException(token));
    }

    /// <summary>Completes when the signal is set (at once when it was set since the last wait). One waiter at a time.</summary>
    /// <exception cref="OperationCanceledException">The signal was cancelled.</exception>
    public ValueTask WaitAsync()
    {
        lock (_gate)
        {
            if (_cancelled)
            {
                return ValueTask.FromCanceled(_token.IsCancellationRequested ? _token : new CancellationToken(canceled: true));
            }

            if (_set)
            {
                _set = false;
                return ValueTask.CompletedTask;
            }

            _core.Reset();
            _waiting = true;
            return new ValueTask(this, _core.Version);
        }
    }

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
