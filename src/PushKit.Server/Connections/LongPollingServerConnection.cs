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
    private readonly ITimer _pollTimer;
    // Created only when someone waits for a poll to collect (a full buffer, a close): most polls have no one to tell.
    private TaskCompletionSource? _drained;
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
        _pollTimer = timeProvider.CreateTimer(static state => ((LongPollingServerConnection)state!).ExpirePoll(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
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
                    _currentPoll?.Ready();
                    return;
                }

                drained = (_drained ??= NewSignal()).Task;
            }

            await drained.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Holds <paramref name="context"/> until frames are ready or the poll timeout, then answers them.</summary>
    public async Task PollAsync(HttpContext context)
    {
        var poll = new Poll(_timeProvider.GetTimestamp());
        Poll? superseded;
        bool ready;
        lock (_gate)
        {
            superseded = _currentPoll;
            _currentPoll = poll;
            ready = _pending.WrittenCount > 0 || IsDead;
        }

        superseded?.Supersede();
        _pollHeld.TrySetResult();
        try
        {
            if (!ready)
            {
                // One wake-up for all that ends the wait: frames (SendAsync), a newer poll, the connection's end, the
                // client going away, or the poll timeout on the connection's one timer. A poll is held about once per
                // delivered batch: a timeout source, a linked source, a delay task and a WhenAny for each cost the server
                // more garbage than the rest of the poll.
                _pollTimer.Change(_pollTimeout, Timeout.InfiniteTimeSpan);
                using var aborted = context.RequestAborted.UnsafeRegister(static state => ((Poll)state!).Ready(), poll);
                await poll.Woken.ConfigureAwait(false);
            }

            if (poll.IsSuperseded)
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
                _drained?.TrySetResult();
                _drained = null;
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
                if (_pending.WrittenCount == 0 || IsDead)
                {
                    return;
                }

                drained = (_drained ??= NewSignal()).Task;
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

    /// <summary>Whether a poll is being held or answered now (for tests that need to know, poll after poll).</summary>
    internal bool HoldsPoll
    {
        get
        {
            lock (_gate)
            {
                return _currentPoll is not null;
            }
        }
    }

    protected override void OnAborted()
    {
        _watchdog.Dispose();
        _pollTimer.Dispose();
        lock (_gate)
        {
            _currentPoll?.Ready();
            _drained?.TrySetResult();
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

    /// <summary>Ends the held poll once it has been held for the poll timeout (the timer is shared by the connection's polls).</summary>
    private void ExpirePoll()
    {
        Poll? held;
        lock (_gate)
        {
            held = _currentPoll;
        }

        if (held is null)
        {
            return;
        }

        var left = _pollTimeout - _timeProvider.GetElapsedTime(held.Started);
        if (left <= TimeSpan.Zero)
        {
            held.Ready();
        }
        else
        {
            // A timer may fire a little early by the clock's reckoning (or this is an older poll's firing): wait out the rest.
            _pollTimer.Change(left + TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan);
        }
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>A held poll and its one wake-up.</summary>
    private sealed class Poll(long started)
    {
        private readonly TaskCompletionSource _woken = NewSignal();
        private volatile bool _superseded;

        /// <summary>When the poll arrived (TimeProvider timestamp).</summary>
        public long Started { get; } = started;

        public Task Woken => _woken.Task;

        public bool IsSuperseded => _superseded;

        public void Supersede()
        {
            _superseded = true;
            Ready();
        }

        /// <summary>Ends the wait; the poll goes on on the thread pool.</summary>
        public void Ready() => _woken.TrySetResult();
    }
}
