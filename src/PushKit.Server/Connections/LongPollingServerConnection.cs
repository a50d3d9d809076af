using System.Buffers;
using Microsoft.AspNetCore.Http;
using PushKit.Protocol;

namespace PushKit.Server.Connections;

/// <summary>
/// Long-polling downstream: frames wait here until a held <c>GET {base}/poll</c> collects them. One poll is held
/// at a time; a newer poll supersedes the older (answered 409 <c>poll_superseded</c>). The connection is considered
/// lost when no poll arrives for longer than the poll timeout plus a grace period.
/// </summary>
internal sealed class LongPollingServerConnection : HttpServerConnection
{
    private readonly object _gate = new();
    private readonly ArrayBufferWriter<byte> _pending = new(4096);
    private readonly int _maxPendingBytes;
    private readonly TimeSpan _pollTimeout;
    private readonly TimeProvider _timeProvider;
    private readonly ITimer _watchdog;
    private TaskCompletionSource _dataAvailable = NewSignal();
    private TaskCompletionSource _drained = NewSignal();
    private Poll? _currentPoll;
    private TaskCompletionSource _pollHeld = NewSignal();
    private long _lastPollEnded;

    public LongPollingServerConnection(int maxPendingBytes, TimeSpan pollTimeout, TimeProvider timeProvider)
    {
        _maxPendingBytes = maxPendingBytes;
        _pollTimeout = pollTimeout;
        _timeProvider = timeProvider;
        _lastPollEnded = timeProvider.GetTimestamp();
        var check = TimeSpan.FromSeconds(1);
        _watchdog = timeProvider.CreateTimer(static state => ((LongPollingServerConnection)state!).CheckAlive(), this, check, check);
    }

    public override string TransportName => PushProtocol.Transports.LongPolling;

    /// <summary>How long without any poll before the connection counts as lost.</summary>
    internal TimeSpan AbandonAfter => _pollTimeout + TimeSpan.FromSeconds(10);

    public override async ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            Task drained;
            lock (_gate)
            {
                if (IsDead)
                {
                    throw new IOException("The long-polling connection ended.");
                }

                // Always accept into an empty buffer; otherwise wait until a poll has collected what is there.
                if (_pending.WrittenCount == 0 || _pending.WrittenCount + frames.Length + 1 <= _maxPendingBytes)
                {
                    _pending.Write(frames.Span);
                    _pending.Write("\n"u8);
                    _dataAvailable.TrySetResult();
                    return;
                }

                drained = _drained.Task;
            }

            await drained.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Holds <paramref name="context"/> until frames are ready or the poll timeout, then answers them.</summary>
    public async Task PollAsync(HttpContext context)
    {
        var poll = new Poll(context);
        Poll? superseded;
        lock (_gate)
        {
            superseded = _currentPoll;
            _currentPoll = poll;
        }

        superseded?.Supersede();
        _pollHeld.TrySetResult();
        try
        {
            using var timeout = new CancellationTokenSource(_pollTimeout, _timeProvider);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, context.RequestAborted);
            var expired = Task.Delay(Timeout.Infinite, linked.Token);
            while (true)
            {
                Task dataAvailable;
                lock (_gate)
                {
                    if (_pending.WrittenCount > 0 || IsDead)
                    {
                        break;
                    }

                    dataAvailable = _dataAvailable.Task;
                }

                var finished = await Task.WhenAny(dataAvailable, poll.Superseded.Task, expired).ConfigureAwait(false);
                if (finished != dataAvailable)
                {
                    break;
                }
            }

            // Ends the delay task rather than leaving it registered on the token.
            await linked.CancelAsync().ConfigureAwait(false);

            if (poll.Superseded.Task.IsCompleted)
            {
                await Endpoints.HttpErrors.WriteAsync(context, StatusCodes.Status409Conflict, PushErrorCodes.PollSuperseded,
                    "A newer poll for this session took over; stop polling on this request's loop.").ConfigureAwait(false);
                return;
            }

            context.Response.StatusCode = StatusCodes.Status200OK;
            context.Response.ContentType = "application/x-ndjson";
            context.Response.Headers.CacheControl = "no-store";
            int length;
            lock (_gate)
            {
                // Copied straight into the response's pipe; it is sent by the flush below.
                length = _pending.WrittenCount;
                context.Response.ContentLength = length;
                if (length > 0)
                {
                    context.Response.BodyWriter.Write(_pending.WrittenSpan);
                }

                _pending.ResetWrittenCount();
                _dataAvailable = NewSignal();
                var drained = _drained;
                _drained = NewSignal();
                drained.TrySetResult();
            }

            if (length > 0)
            {
                await context.Response.BodyWriter.FlushAsync(context.RequestAborted).ConfigureAwait(false);
            }
        }
        finally
        {
            lock (_gate)
            {
                if (ReferenceEquals(_currentPoll, poll))
                {
                    _currentPoll = null;
                }

                _lastPollEnded = _timeProvider.GetTimestamp();
            }
        }
    }

    /// <summary>Whether frames are waiting for a poll.</summary>
    public bool HasPending
    {
        get
        {
            lock (_gate)
            {
                return _pending.WrittenCount > 0;
            }
        }
    }

    /// <summary>Waits (up to the poll timeout) for a poll to collect what is pending, the close frame included.</summary>
    public override async ValueTask CloseAsync(PushCloseCode code, string? reason, CancellationToken cancellationToken = default)
    {
        using var timeout = new CancellationTokenSource(_pollTimeout, _timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, cancellationToken);
        while (true)
        {
            Task drained;
            lock (_gate)
            {
                if (_pending.WrittenCount == 0)
                {
                    return;
                }

                drained = _drained.Task;
            }

            try
            {
                await drained.WaitAsync(linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>Completes once a poll is being held (for tests that need a poll in place before the next).</summary>
    internal Task PollHeld => _pollHeld.Task;

    protected override void OnAborted()
    {
        _watchdog.Dispose();
        lock (_gate)
        {
            _dataAvailable.TrySetResult();
            _drained.TrySetResult();
        }
    }

    private void CheckAlive()
    {
        bool abandoned;
        lock (_gate)
        {
            abandoned = _currentPoll is null && _timeProvider.GetElapsedTime(_lastPollEnded) > AbandonAfter;
        }

        if (abandoned)
        {
            Abort();
        }
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private sealed class Poll(HttpContext context)
    {
        public HttpContext Context { get; } = context;

        public TaskCompletionSource Superseded { get; } = NewSignal();

        public void Supersede() => Superseded.TrySetResult();
    }
}
