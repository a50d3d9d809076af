using System.Buffers;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PushKit.Connections;
using PushKit.Protocol;

namespace PushKit.Delivery;

/// <summary>
/// The acknowledged-delivery machine of one session end, written once and used by client and server alike.
/// Outbound: every message gets the next sequence number and stays in an unacknowledged buffer until the peer's
/// cumulative ack covers it; a new connection replays everything unacknowledged. Inbound: messages are delivered
/// in sequence order, duplicates (sequence numbers already delivered) are dropped, and the highest delivered
/// sequence number is acknowledged cumulatively.
/// </summary>
/// <remarks>
/// The engine outlives connections: <see cref="RunAsync"/> drives one connection at a time and returns how it
/// ended; the owner decides whether another connection follows.
/// </remarks>
internal sealed partial class DeliveryEngine
{
    private const int BatchTargetBytes = 64 * 1024;

    // The largest control frame with its line feed: an error frame naming an unknown type of 64 characters, each escaped
    // as \uXXXX, is under 500 bytes; a pong or ping is 16.
    private const int MaxControlFrameBytes = 512;

    // A skip or ack frame at the largest sequence number, with its line feed.
    private const int MaxSequenceFrameBytes = 42;
    private static readonly TimeSpan s_closeGrace = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan s_drainTimeout = TimeSpan.FromSeconds(5);

    /// <summary>
    /// How many received messages may wait for the application before reading pauses, while no sender on this side
    /// awaits the peer's ack (beyond that the peer is slowed down; see <see cref="MustPauseReading"/>).
    /// </summary>
    internal const int ReadAheadMessages = 64;

    // The bounds of what waits for the application when the engine has no Limits (its count while this side awaits an
    // ack; its bytes at all times); and the most a message frame adds to its encoded body ({"type":"msg","seq":N, and an
    // ackNow flag), so that the peer's buffer, which counts encoded bodies, fits in ours, which counts frames.
    private const int DefaultInboundMaxMessages = 10_000;
    private const long DefaultInboundMaxBytes = 16 * 1024 * 1024;
    private const int MessageFrameEnvelopeBytes = 64;

    private static readonly Func<Run, CancellationToken, Task> s_deliverLoop = static (run, token) => run.Engine.DeliverLoopAsync(run, token);

    private readonly object _gate = new();
    private readonly Func<PushMessage, CancellationToken, ValueTask> _deliver;
    private readonly ILogger _logger;
    // Formatted only when a log line is written: a server holds one engine per session.
    private readonly object _name;

    // Unacknowledged outbound messages, oldest first; _ring[_head] has sequence number _lastAcked + 1.
    private Entry[] _ring = [];
    private int _head;
    private int _count;
    private long _lastAssigned;
    private long _lastAcked;
    private long _sendCursor = 1;
    private long _highestSent;

    // Inbound: the highest sequence number delivered to the application, and whether the peer still needs to hear it.
    // Written (never by two at once) by the read loop's fast path or the delivery loop, read by the write loop: kept
    // without the lock so that the read and write loops do not contend on it for every batch.
    private long _lastDelivered;
    private int _ackDue;

    // The highest delivered message that asked for its ack at once ("ackNow"), and the last ack written on the current
    // connection: while the first is above the second, an ack is not held back (protocol A2).
    private long _ackNowThrough;
    private long _ackSent;

    /// <summary>
    /// How many delivered messages an ack may leave unacknowledged while it is held back (<see cref="IAckCoalescing"/>):
    /// beyond that it goes at once. At 5 ms a steady trickle cost a wake-up for every third message; at 100 ms with no
    /// count, a stream of a million messages a second sat in the sender's buffer a tenth of a second at a time.
    /// </summary>
    internal const long AckHoldMaxMessages = 1024;

    private Run? _current;
    private Exception? _terminal;
    private FinalClose? _finalClose;
    private long _bufferedBytes;
    private long _skipThrough;
    private TaskCompletionSource? _space;
    private int _peerMaxMessageBytes;

    // How many unacknowledged outbound messages have a completion (a sender may await their ack); written under the
    // lock, read without it by the read loop (MustPauseReading).
    private int _awaitedAcks;

    public DeliveryEngine(object name, int peerMaxMessageBytes, Func<PushMessage, CancellationToken, ValueTask> deliver, ILogger logger)
    {
        _name = name;
        _peerMaxMessageBytes = peerMaxMessageBytes;
        _deliver = deliver;
        _logger = logger;
    }

    /// <summary>The largest frame or batch the peer accepts; sends above it fail with <see cref="PushMessageTooLargeException"/>.</summary>
    public int PeerMaxMessageBytes
    {
        get => Volatile.Read(ref _peerMaxMessageBytes);
        set => Volatile.Write(ref _peerMaxMessageBytes, value);
    }

    /// <summary>Bounds of the unacknowledged outbound buffer and what happens when it is full; null for unbounded.</summary>
    public BufferLimits? Limits { get; set; }

    /// <summary>
    /// Called (from the delivery loop, in order with the messages) when the peer says it dropped messages this side
    /// lacks, and awaited like a delivery. It must not throw for the application's sake: a failure ends the connection.
    /// </summary>
    public Func<long, CancellationToken, ValueTask>? OnMessagesDropped { get; set; }

    /// <summary>Counts acknowledged, replayed and dropped outbound messages; null to count nothing.</summary>
    public IDeliveryMetrics? Metrics { get; init; }

    /// <summary>
    /// Hands an inbound message to the application synchronously when it can take it at once (returns false
    /// otherwise, and the message goes through the delivery loop instead); null to always use the loop. Called only
    /// when nothing is queued or being delivered ahead of the message, so order is kept.
    /// </summary>
    public Func<PushMessage, bool>? TryDeliverInline { get; set; }

    /// <summary>Heartbeat settings for every connection run from now on; null for none.</summary>
    public HeartbeatSettings? Heartbeat { get; set; }

    /// <summary>The number of outbound messages not yet acknowledged by the peer.</summary>
    public int UnacknowledgedCount
    {
        get
        {
            lock (_gate)
            {
                return _count;
            }
        }
    }

    /// <summary>The highest inbound sequence number delivered to the application.</summary>
    public long LastDelivered => Volatile.Read(ref _lastDelivered);

    public bool IsConnected => Volatile.Read(ref _current) is not null;

    /// <summary>The highest outbound sequence number written to a connection so far (for tests).</summary>
    internal long SentThrough
    {
        get
        {
            lock (_gate)
            {
                return _highestSent;
            }
        }
    }

    /// <summary>The highest inbound sequence number the current connection's read loop has taken in (for tests).</summary>
    internal long ReceivedThrough => Volatile.Read(ref _current)?.LastQueued ?? 0;

    /// <summary>Whether reading on the current connection is paused because the application is behind.</summary>
    internal bool IsReadPaused => Volatile.Read(ref _current)?.ReadPaused == true;

    /// <summary>
    /// Queues <paramref name="message"/> for delivery and returns a task that completes when the peer acknowledges it
    /// (null when <paramref name="trackAck"/> is false: the message is still delivered, nobody waits for it).
    /// Ignores <see cref="Limits"/>: the client and server send paths use <see cref="EnqueueAsync"/>; this is for
    /// callers that need no bound (the engine's own tests).
    /// </summary>
    /// <exception cref="PushMessageTooLargeException">The message's frame exceeds the peer's limit.</exception>
    /// <exception cref="PushChannelClosedException">The engine is closed.</exception>
    public Task? Enqueue(PushMessage message, bool trackAck)
    {
        var (completion, _, _) = TryEnqueue(message, trackAck, enforceLimits: false);
        return completion;
    }

    /// <summary>
    /// Queues <paramref name="message"/> within <see cref="Limits"/>: when the buffer is full, waits for room
    /// (<see cref="PushBufferFullPolicy.Wait"/>), drops the oldest messages (<see cref="PushBufferFullPolicy.DropOldest"/>),
    /// or throws <see cref="PushBufferFullException"/> (<see cref="PushBufferFullPolicy.Disconnect"/>).
    /// </summary>
    /// <returns>The acknowledgement task (null when <paramref name="trackAck"/> is false).</returns>
    public async ValueTask<Task?> EnqueueAsync(PushMessage message, bool trackAck, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            var (completion, added, space) = TryEnqueue(message, trackAck, enforceLimits: true);
            if (added)
            {
                return completion;
            }

            await space!.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Queues <paramref name="message"/> (no acknowledgement awaited) when <see cref="Limits"/> allow it now; false when
    /// the buffer is full under <see cref="PushBufferFullPolicy.Wait"/> (then <see cref="EnqueueAsync"/> waits).
    /// The synchronous path of a broadcast: no state machine per recipient.
    /// </summary>
    /// <exception cref="PushBufferFullException">The buffer is full and the policy is <see cref="PushBufferFullPolicy.Disconnect"/>.</exception>
    public bool TryEnqueueNow(PushMessage message) => TryEnqueue(message, trackAck: false, enforceLimits: true).Added;

    private (Task? Completion, bool Added, Task? Space) TryEnqueue(PushMessage message, bool trackAck, bool enforceLimits)
    {
        ArgumentNullException.ThrowIfNull(message);
        var frameLength = FrameCodec.MaxMessageFrameLength(message);
        var limit = PeerMaxMessageBytes;
        if (frameLength > limit)
        {
            throw new PushMessageTooLargeException(frameLength, limit);
        }

        var bytes = message.EncodedBody.Length;
        List<TaskCompletionSource>? dropped = null;
        long droppedCount = 0;
        Run? run;
        TaskCompletionSource? completion;
        bool firstAwaited;
        lock (_gate)
        {
            if (_terminal is not null)
            {
                // The code the channel closed with travels on the exception callers catch, not only on its inner one.
                var code = (_terminal as PushChannelClosedException)?.CloseCode ?? _finalClose?.Code;
                throw new PushChannelClosedException($"The push channel is closed; the message was not sent. {_terminal.Message}", code, _terminal);
            }

            if (enforceLimits && Limits is { } limits && _count > 0 && (_count >= limits.MaxMessages || _bufferedBytes + bytes > limits.MaxBytes))
            {
                switch (limits.Policy)
                {
                    case PushBufferFullPolicy.Wait:
                        if (_space is null)
                        {
                            // A sender now waits for acks to make room: a paused read loop may read on to reach them.
                            // (Waking takes no lock and runs nothing inline, so it may happen under this one.)
                            _space = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                            WakeReaderForAck(_current);
                        }

                        return (null, false, _space.Task);
                    case PushBufferFullPolicy.Disconnect:
                        throw new PushBufferFullException(
                            $"The session's buffer of unacknowledged messages is full ({_count} messages, {_bufferedBytes} bytes; limits {limits.MaxMessages} and {limits.MaxBytes}).");
                    default:
                        var before = _lastAcked;
                        dropped = DropOldest(limits, bytes);
                        droppedCount = _lastAcked - before;
                        break;
                }
            }

            if (_count == _ring.Length)
            {
                Grow();
            }

            completion = trackAck ? new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) : null;
            _ring[(_head + _count) % _ring.Length] = new Entry(message, completion);
            firstAwaited = completion is not null && _awaitedAcks++ == 0;
            _count++;
            _bufferedBytes += bytes;
            _lastAssigned++;
            run = _current;
        }

        if (droppedCount > 0)
        {
            Metrics?.Dropped(droppedCount);
        }

        if (dropped is not null)
        {
            foreach (var waiting in dropped)
            {
                waiting.TrySetException(new PushMessageDroppedException());
            }
        }

        run?.Ring();
        if (firstAwaited)
        {
            WakeReaderForAck(run);
        }

        return (completion?.Task, true, null);
    }

    /// <summary>
    /// Something of this side's now awaits the peer's ack, which may come behind messages a paused read loop has left
    /// unread: it may read on (<see cref="MustPauseReading"/>). Called after the state that says so was written under
    /// the lock, which does not order that write before this read of the pause flag; the barrier does (the read loop
    /// raises the flag before it reads the state).
    /// </summary>
    private static void WakeReaderForAck(Run? run)
    {
        if (run is not null)
        {
            Interlocked.MemoryBarrier();
            run.WakeReader();
        }
    }

    /// <summary>Drops the oldest unacknowledged messages until <paramref name="incoming"/> bytes fit (under the lock).</summary>
    private List<TaskCompletionSource> DropOldest(BufferLimits limits, int incoming)
    {
        var dropped = new List<TaskCompletionSource>();
        while (_count > 0 && (_count >= limits.MaxMessages || _bufferedBytes + incoming > limits.MaxBytes))
        {
            ref var entry = ref _ring[_head];
            _bufferedBytes -= entry.Message!.EncodedBody.Length;
            if (entry.Completion is not null)
            {
                dropped.Add(entry.Completion);
                _awaitedAcks--;
            }

            entry = default;
            _head = (_head + 1) % _ring.Length;
            _count--;
            _lastAcked++;
        }

        // The receiver learns through a skip frame that everything up to here that it lacks will not come.
        _skipThrough = _lastAcked;
        _highestSent = Math.Max(_highestSent, _skipThrough);
        _sendCursor = Math.Max(_sendCursor, _lastAcked + 1);
        return dropped;
    }

    /// <summary>Whether <see cref="Shutdown"/> or <see cref="Detach"/> has closed the engine for good.</summary>
    public bool IsClosed
    {
        get
        {
            lock (_gate)
            {
                return _terminal is not null;
            }
        }
    }

    /// <summary>
    /// Asks the current connection, if any, to close with <paramref name="code"/>: pending frames are flushed, a close
    /// frame is sent, then the transport closes. The session itself stays open.
    /// </summary>
    public void CloseConnection(PushCloseCode code, string? reason, int? retryAfterMs = null)
    {
        Run? run;
        lock (_gate)
        {
            run = _current;
        }

        run?.RequestClose(code, reason, retryAfterMs, sendFrame: true);
    }

    /// <summary>
    /// Closes the engine for good: unacknowledged sends fail with <paramref name="error"/>, later sends are refused,
    /// and the current connection (if any) is closed with <paramref name="code"/>.
    /// </summary>
    public void Shutdown(PushCloseCode code, string? reason, Exception error, int? retryAfterMs = null)
    {
        List<TaskCompletionSource>? pending = null;
        Run? run;
        lock (_gate)
        {
            if (_terminal is not null)
            {
                return;
            }

            _terminal = error;
            _finalClose = new FinalClose(code, reason, retryAfterMs);
            for (var i = 0; i < _count; i++)
            {
                ref var entry = ref _ring[(_head + i) % _ring.Length];
                if (entry.Completion is not null)
                {
                    (pending ??= []).Add(entry.Completion);
                }

                entry = default;
            }

            // Nothing is left to send: the queued messages failed with the error above.
            _count = 0;
            _awaitedAcks = 0;
            _head = 0;
            _bufferedBytes = 0;
            _space?.TrySetResult();
            _space = null;
            _lastAcked = _lastAssigned;
            _sendCursor = _lastAssigned + 1;
            run = _current;
        }

        run?.RequestClose(code, reason, retryAfterMs, sendFrame: true);
        if (pending is not null)
        {
            foreach (var completion in pending)
            {
                completion.TrySetException(error);
            }
        }
    }

    /// <summary>
    /// Closes the engine for good like <see cref="Shutdown"/>, but hands back the unacknowledged outbound messages,
    /// oldest first, with their pending completions, instead of failing them: a new session adopts them.
    /// </summary>
    public IReadOnlyList<(PushMessage Message, TaskCompletionSource? Completion)> Detach(Exception error)
    {
        var detached = new List<(PushMessage, TaskCompletionSource?)>();
        lock (_gate)
        {
            if (_terminal is not null)
            {
                return detached;
            }

            _terminal = error;
            for (var i = 0; i < _count; i++)
            {
                ref var entry = ref _ring[(_head + i) % _ring.Length];
                detached.Add((entry.Message!, entry.Completion));
                entry = default;
            }

            _count = 0;
            _awaitedAcks = 0;
            _head = 0;
            _bufferedBytes = 0;
            _lastAcked = _lastAssigned;
            _sendCursor = _lastAssigned + 1;
            _space?.TrySetResult();
            _space = null;
        }

        return detached;
    }

    /// <summary>Queues messages detached from a previous session, keeping their pending completions.</summary>
    public void Adopt(IEnumerable<(PushMessage Message, TaskCompletionSource? Completion)> messages)
    {
        Run? run;
        lock (_gate)
        {
            foreach (var (message, completion) in messages)
            {
                if (_count == _ring.Length)
                {
                    Grow();
                }

                _ring[(_head + _count) % _ring.Length] = new Entry(message, completion);
                _count++;
                _awaitedAcks += completion is null ? 0 : 1;
                _bufferedBytes += message.EncodedBody.Length;
                _lastAssigned++;
            }

            run = _current;
        }

        run?.Ring();
    }

    /// <summary>
    /// Carries the session over <paramref name="connection"/> until it ends, replaying every unacknowledged outbound
    /// message first. Returns how the connection ended; never throws for connection failures.
    /// </summary>
    public async Task<ConnectionEnd> RunAsync(IPushTransportConnection connection, CancellationToken cancellationToken = default)
    {
        var run = new Run(this, connection, cancellationToken);
        if (connection is IAcksInRequests carrier)
        {
            carrier.TakeDueAck = TakeDueAck;
        }

        var terminal = false;
        FinalClose? finalClose = null;
        long replayed = 0;
        lock (_gate)
        {
            if (_terminal is not null)
            {
                // Checked first: a shut-down engine may still be closing its last connection when another arrives.
                terminal = true;
                finalClose = _finalClose;
            }
            else if (_current is not null)
            {
                throw new InvalidOperationException("The session already has a live connection.");
            }
            else
            {
                _current = run;
                _sendCursor = _lastAcked + 1;

                // What an earlier connection sent and the peer has not acknowledged goes again.
                replayed = Math.Max(0, _highestSent - _lastAcked);

                // Acks written on an earlier connection may never have arrived.
                Volatile.Write(ref _ackSent, 0);
                run.LastQueued = Volatile.Read(ref _lastDelivered);
            }
        }

        if (terminal)
        {
            run.Dispose();
            if (finalClose is null)
            {
                // Detached: the messages moved to another engine, and this one has nothing to say.
                return new ConnectionEnd(ConnectionEndKind.ClosedLocally, PushCloseCode.Normal, "The session is closed.");
            }

            // Shut down while this connection was being set up: the peer hears why, as a connection that was live at
            // the time did, rather than finding the session gone when it comes back.
            await SendFinalCloseAsync(connection, finalClose, cancellationToken).ConfigureAwait(false);
            var answered = false;
            if (connection is WebSocketTransportConnection)
            {
                // Let the peer answer before the connection is dropped: torn down at once, with the peer's data unread,
                // the TCP connection can be reset and the close frame lost on the way (the peer then sees a lost
                // connection and keeps the session).
                // Socket-level grace: real time, whatever clock the session runs on.
                using var grace = new CancellationTokenSource(s_closeGrace, TimeProvider.System);
                using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, grace.Token);
                answered = await DrainAsync(connection, linked.Token).ConfigureAwait(false);
            }

            return new ConnectionEnd(ConnectionEndKind.ClosedLocally, finalClose.Code, finalClose.Reason, finalClose.RetryAfterMs, CloseAnswered: answered);
        }

        if (replayed > 0)
        {
            Metrics?.Replayed(replayed);
        }

        // Something may be waiting already: replay, an ack owed, or messages queued while disconnected.
        run.Ring();
        var writer = WriteLoopAsync(run);
        var heartbeat = Heartbeat;
        if (heartbeat is not null)
        {
            run.MarkReceived(heartbeat);
            run.MarkSent(heartbeat.TimeProvider);
            heartbeat.Register(run);
        }

        ConnectionEnd end;
        var drain = false;
        try
        {
            end = await ReadLoopAsync(run).ConfigureAwait(false);
        }
        catch (PushProtocolException ex)
        {
            Log.ProtocolViolation(_logger, _name, ex.CloseCode, ex.Message);
            end = new ConnectionEnd(ConnectionEndKind.ClosedLocally, ex.CloseCode, ex.Message, Error: ex);
            run.RequestClose(ex.CloseCode, ex.Message, retryAfterMs: null, sendFrame: true);
            drain = true;
        }
        catch (Exception ex) when (run.LocalClose is { Code: PushCloseCode.HeartbeatTimeout } timedOut)
        {
            // Nothing arrived for too long: the connection is half-open or dead. Lost, whatever the transport says.
            _ = ex;
            end = new ConnectionEnd(ConnectionEndKind.Lost, timedOut.Code, timedOut.Reason);
        }
        catch (Exception ex) when (run.LocalClose is { } local)
        {
            // The read loop was stopped because this side closed the connection.
            _ = ex;
            end = new ConnectionEnd(ConnectionEndKind.ClosedLocally, local.Code, local.Reason, local.RetryAfterMs);
        }
        catch (Exception ex)
        {
            // Stopped because the write side failed: that failure is the cause, not the read side's cancellation.
            var cause = ex is OperationCanceledException && run.WriteFailure is { } writeFailure ? writeFailure : ex;
            end = new ConnectionEnd(ConnectionEndKind.Lost, null, cause.Message, Error: cause);
        }

        // The read side is done: heartbeats have nothing left to watch.
        heartbeat?.Unregister(run);

        if (end.Kind == ConnectionEndKind.ClosedByPeer && run.LocalClose is { SendFrame: true } initiated)
        {
            // This side started the close; the peer's close is only its answer.
            end = new ConnectionEnd(ConnectionEndKind.ClosedLocally, initiated.Code, initiated.Reason, initiated.RetryAfterMs, CloseAnswered: true);
        }

        try
        {
            // Messages already received are still handed to the application: after an orderly close from the peer the
            // queue is drained (they were sent for good); otherwise delivery stops and the unacknowledged rest is
            // replayed by the peer on its next connection.
            run.Deliveries?.Writer.TryComplete();
            if (end.Kind != ConnectionEndKind.ClosedByPeer)
            {
                await StopDeliveryAsync(run).ConfigureAwait(false);
            }

            if (run.Delivery is { } delivery)
            {
                try
                {
                    await delivery.WaitAsync(s_closeGrace + s_closeGrace, CancellationToken.None).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    await StopDeliveryAsync(run).ConfigureAwait(false);
                    await delivery.ConfigureAwait(false);
                }
            }

            if (end.Kind == ConnectionEndKind.ClosedByPeer && run.LocalClose is null)
            {
                // Answer the peer's close, now that what arrived before it has been handed over: the write loop sends the
                // acks that are due first, then the transport's close. (Answering before the hand-over closed the
                // connection ahead of the last message's ack.)
                run.RequestClose(end.Code ?? PushCloseCode.Normal, null, retryAfterMs: null, sendFrame: false);

                // After a close frame the peer's WebSocket Close is still to come: read until it arrives (bounded by the
                // close grace), so the connection ends with a close handshake rather than a reset.
                drain = end.FromFrame && run.Connection is WebSocketTransportConnection;
            }

            if (run.LocalClose is null)
            {
                run.Cancel();
            }

            try
            {
                await writer.WaitAsync(s_closeGrace + s_closeGrace, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                Log.WriteLoopEnded(_logger, _name, ex.Message);
            }

            if (drain)
            {
                await DrainAsync(run.Connection, run.Token).ConfigureAwait(false);
            }
        }
        finally
        {
            // Whatever happened above, the connection is over: a run left current would make every later connection of
            // the session wait for it.
            lock (_gate)
            {
                _current = null;
            }

            run.Cancel();
            connection.Abort();
            run.Dispose();
        }

        Log.ConnectionEnded(_logger, _name, connection.TransportName, end.Kind, end.Code, end.Reason);
        return end;
    }

    /// <summary>
    /// Stops delivery at once. The token handed to the application's handlers is cancelled, and a callback the
    /// application registered on it that throws is logged: it must not stop the connection's end.
    /// </summary>
    private async Task StopDeliveryAsync(Run run)
    {
        try
        {
            await run.StopDeliveryAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            Log.CancellationCallbackFailed(_logger, _name, ex);
        }
    }

    /// <summary>
    /// After sending a close, reads and discards until the peer answers it (or <paramref name="token"/> ends the wait:
    /// the grace period), so that the close frame is not lost to a connection reset.
    /// </summary>
    /// <returns>Whether the peer closed the connection (answered a close), rather than the wait ending otherwise.</returns>
    private static async Task<bool> DrainAsync(IPushTransportConnection connection, CancellationToken token)
    {
        var scratch = new ArrayBufferWriter<byte>(4096);
        try
        {
            while (!(await connection.ReceiveAsync(scratch, token).ConfigureAwait(false)).IsClosed)
            {
                scratch.ResetWrittenCount();
            }

            return true;
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // Cancelled by the grace period, reset by the peer, or more oversize data: the connection is done either way.
            return false;
        }
    }

    private async Task<ConnectionEnd> ReadLoopAsync(Run run)
    {
        // The buffer is rented when a batch arrives and returned once the connection goes idle, so an idle connection
        // holds none: a WebSocket connection returns it itself when its zero-byte read finds nothing to read, and
        // keeps it while data keeps coming (IReleasesIdleBuffer); other connections return it after every batch.
        var buffer = new PooledBufferWriter();
        var keepWhileBusy = run.Connection is IReleasesIdleBuffer;
        var token = run.Token;
        try
        {
            while (true)
            {
                if (keepWhileBusy)
                {
                    buffer.Reset();
                }
                else
                {
                    buffer.Release();
                }

                var result = await run.Connection.ReceiveAsync(buffer, token).ConfigureAwait(false);
                run.MarkReceived(Heartbeat);
                if (result.IsClosed)
                {
                    return new ConnectionEnd(ConnectionEndKind.ClosedByPeer, result.CloseCode, result.CloseReason);
                }

                var reportedUnknown = false;
                var reportedError = false;
                foreach (var line in FrameCodec.SplitBatch(buffer.WrittenMemory))
                {
                    var status = FrameCodec.TryParse(line.Span, out var frame, out var error);
                    if (status == FrameParseStatus.Malformed)
                    {
                        throw new PushProtocolException(PushCloseCode.ProtocolError, $"Malformed frame: {error}");
                    }

                    if (status == FrameParseStatus.UnknownType)
                    {
                        // One error frame per batch at most, so that a flood of unknown frames cannot amplify into replies.
                        if (!reportedUnknown)
                        {
                            reportedUnknown = true;
                            Log.UnknownFrameType(_logger, _name, ForLog(error));
                            run.EnqueueControl(Control.Error(PushErrorCodes.UnknownFrameType, $"Unknown frame type '{Truncate(error, 64)}'; the frame was ignored."));
                        }

                        continue;
                    }

                    switch (frame.Type)
                    {
                        case FrameType.Message:
                            await ReceiveMessageAsync(run, frame, line.Length).ConfigureAwait(false);
                            break;
                        case FrameType.Ack:
                            Acknowledge(frame.Sequence);
                            break;
                        case FrameType.Ping:
                            run.EnqueueControl(Control.Pong);
                            break;
                        case FrameType.Pong:
                            break;
                        case FrameType.Skip:
                            await ReceiveSkipAsync(run, frame, line.Length).ConfigureAwait(false);
                            break;
                        case FrameType.Close:
                            // The reason is the peer's text and goes into state changes, exceptions and logs: bounded,
                            // and on one line.
                            return new ConnectionEnd(ConnectionEndKind.ClosedByPeer, frame.CloseCode, Sanitize(frame.Text, MaxPeerReasonLength), frame.RetryAfterMs, FromFrame: true);
                        case FrameType.Error:
                            // One log line per batch at most, shortened and on one line: the text is the peer's, and a
                            // batch of error frames must not flood the log.
                            if (!reportedError)
                            {
                                reportedError = true;
                                Log.PeerError(_logger, _name, ForLog(frame.ErrorCode), ForLog(frame.Text));
                            }

                            break;
                    }
                }

                // What the fast path handed over in this batch is recorded once for the batch.
                CommitInlineDeliveries(run);
                if (Volatile.Read(ref _ackDue) != 0)
                {
                    run.RingForAck(urgent: AckIsUrgent());
                }
            }
        }
        finally
        {
            CommitInlineDeliveries(run);
            buffer.Release();
        }
    }

    /// <summary>
    /// Queues an inbound message for the delivery loop. Delivery runs apart from the read loop so that acks keep
    /// flowing while the application handles a message (a handler may itself await an acknowledged send).
    /// </summary>
    private async ValueTask ReceiveMessageAsync(Run run, Frame frame, int bytes)
    {
        if (frame.Sequence <= run.LastQueued)
        {
            // A replay of something delivered already: drop it, but make sure the peer learns that.
            // (Queued but not yet delivered: its ack follows its delivery.)
            if (frame.Sequence <= Math.Max(Volatile.Read(ref _lastDelivered), run.InlineDelivered))
            {
                if (frame.AckNow)
                {
                    RaiseAckNowThrough(frame.Sequence);
                }

                Volatile.Write(ref _ackDue, 1);
            }

            return;
        }

        if (run.LocalClose is not null)
        {
            // This side is closing: what arrives now is not taken (nor acknowledged); the peer replays it later.
            return;
        }

        if (frame.Sequence > run.LastQueued + 1)
        {
            throw new PushProtocolException(
                PushCloseCode.ProtocolError,
                $"Sequence gap: expected message {run.LastQueued + 1}, received {frame.Sequence}.");
        }

        run.LastQueued = frame.Sequence;
        await QueueForDeliveryAsync(run, frame, bytes).ConfigureAwait(false);
    }

    private async ValueTask QueueForDeliveryAsync(Run run, Frame frame, int bytes)
    {
        // Fast path: with nothing queued or being delivered ahead of it, a message the application can take at once
        // is handed over right here, without a trip through the delivery queue and loop. (The queue count is read
        // before the Delivering flag: the loop raises the flag before it takes a frame off the queue.)
        if (frame.Type == FrameType.Message
            && TryDeliverInline is { } inline
            && (run.Deliveries is not { } waiting || waiting.Count == 0)
            && !run.Delivering
            && inline(frame.Message!))
        {
            // Recorded as delivered at the end of the batch (CommitInlineDeliveries), not under the lock per message.
            run.InlineDelivered = frame.Sequence;
            run.InlineAckNow |= frame.AckNow;
            return;
        }

        // What the fast path handed over goes on record before anything is queued behind it.
        CommitInlineDeliveries(run);
        var deliveries = run.Deliveries ?? run.StartDeliveries(InboundMaxMessages(), s_deliverLoop);
        var queued = new Queued(frame, bytes);
        if (!deliveries.Writer.TryWrite(queued))
        {
            // The queue is at its bound: the application is behind, and reading waits for room.
            WarnIfStoppedAtBound(deliveries);
            run.ReadPaused = true;
            try
            {
                await deliveries.Writer.WriteAsync(queued, run.Token).ConfigureAwait(false);
            }
            finally
            {
                // Marked before the flag is lowered: the heartbeat, which reads the flag first, then sees the mark.
                run.MarkReceived(Heartbeat);
                run.ReadPaused = false;
            }
        }

        deliveries.Added(bytes);
        if (MustPauseReading(deliveries))
        {
            WarnIfStoppedAtBound(deliveries);
            await PauseReadingAsync(run, deliveries).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Logs, once per connection, that reading stops at the bound while a sender awaits the peer's ack: that ack may be
    /// among what is left unread, and the send then times out (a peer under <c>DropOldest</c>, or with larger buffer
    /// limits than this side's). Read loop only.
    /// </summary>
    private void WarnIfStoppedAtBound(Inbound deliveries)
    {
        if (AwaitsAck() && !deliveries.WarnedAtBound)
        {
            deliveries.WarnedAtBound = true;
            Log.ReadStoppedAtBound(_logger, _name, deliveries.Count, deliveries.Bytes);
        }
    }

    /// <summary>Whether a sender on this side may be waiting for the peer's ack: a send with a completion, or one waiting for room.</summary>
    private bool AwaitsAck() => Volatile.Read(ref _awaitedAcks) != 0 || Volatile.Read(ref _space) is not null;

    /// <summary>
    /// Whether the read loop is to stop reading because the application is behind (the peer is then slowed down, and
    /// that is not a dead connection). Up to <see cref="ReadAheadMessages"/> messages wait for the application. Beyond
    /// that reading goes on only while a sender on this side awaits the peer's ack (an acknowledged send, or a send
    /// waiting for room in a full buffer), since that ack arrives behind the peer's messages: an application that
    /// awaits it while handling a message would otherwise wait until its timeout. Either way, what waits is bounded
    /// like this side's own buffer (<see cref="Limits"/>, counting each frame's envelope too), which an honest peer
    /// with the same bounds and the <c>Wait</c> or <c>Disconnect</c> policy never exceeds: it stops sending when that
    /// much of its own is unacknowledged.
    /// </summary>
    private bool MustPauseReading(Inbound deliveries)
    {
        var maxBytes = Limits?.MaxBytes ?? DefaultInboundMaxBytes;
        var envelopes = (long)InboundMaxMessages() * MessageFrameEnvelopeBytes;
        if (deliveries.Bytes >= (maxBytes > long.MaxValue - envelopes ? long.MaxValue : maxBytes + envelopes))
        {
            return true;
        }

        return deliveries.Count > ReadAheadMessages && !AwaitsAck();
    }

    /// <summary>The most received messages that wait for the application (the delivery queue's bound).</summary>
    private int InboundMaxMessages() => Math.Max(ReadAheadMessages + 1, Limits?.MaxMessages ?? DefaultInboundMaxMessages);

    /// <summary>Waits until <see cref="MustPauseReading"/> no longer holds (read loop only).</summary>
    private async ValueTask PauseReadingAsync(Run run, Inbound deliveries)
    {
        // The flag is raised (with a full barrier) before the condition is read: a delivery or a send that changes the
        // condition after that sees the flag and wakes this loop.
        run.ReadPaused = true;
        Interlocked.MemoryBarrier();
        try
        {
            while (MustPauseReading(deliveries))
            {
                await deliveries.Room.WaitAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            run.MarkReceived(Heartbeat);
            run.ReadPaused = false;
        }
    }

    /// <summary>
    /// Records that everything up to <paramref name="sequence"/> was handed to the application: an ack is owed, at once
    /// when <paramref name="ackNow"/> (the sender waits for it).
    /// </summary>
    private void RecordDelivered(long sequence, bool ackNow)
    {
        Volatile.Write(ref _lastDelivered, sequence);
        if (ackNow)
        {
            RaiseAckNowThrough(sequence);
        }

        Volatile.Write(ref _ackDue, 1);
    }

    // Raised by the delivery loop and by the read loop (its fast path, and duplicates), which may run at once.
    private void RaiseAckNowThrough(long sequence)
    {
        var current = Volatile.Read(ref _ackNowThrough);
        while (current < sequence)
        {
            var seen = Interlocked.CompareExchange(ref _ackNowThrough, sequence, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }

    /// <summary>
    /// Takes the ack that is due, for the write loop's next batch or for a connection that carries it in a request of
    /// its own (<see cref="IAcksInRequests"/>): the last delivered sequence number, or 0 when none is due. Whoever takes
    /// it sends it, so it goes once.
    /// </summary>
    private long TakeDueAck()
    {
        // Taking the flag first and reading the sequence after acknowledges at least what set the flag.
        if (Interlocked.Exchange(ref _ackDue, 0) == 0)
        {
            return 0;
        }

        var delivered = Volatile.Read(ref _lastDelivered);
        Volatile.Write(ref _ackSent, delivered);
        return delivered;
    }

    /// <summary>
    /// Whether an ack must not be held back: a message that asked for its ack at once is not yet covered by an ack
    /// written on this connection, or <see cref="AckHoldMaxMessages"/> messages are (a fast stream is acknowledged by
    /// count, not only by time, so that the sender's buffer does not hold a whole <c>AckDelay</c> of it).
    /// </summary>
    private bool AckIsUrgent()
    {
        var sent = Volatile.Read(ref _ackSent);
        return Volatile.Read(ref _ackNowThrough) > sent || Volatile.Read(ref _lastDelivered) - sent >= AckHoldMaxMessages;
    }

    /// <summary>Records the messages the read loop's fast path handed over since the last commit (read loop only).</summary>
    private void CommitInlineDeliveries(Run run)
    {
        var delivered = run.InlineDelivered;
        if (delivered == 0)
        {
            return;
        }

        run.InlineDelivered = 0;
        RecordDelivered(delivered, run.InlineAckNow);
        run.InlineAckNow = false;
    }

    /// <summary>The peer dropped messages up to the frame's sequence number: what this side lacks of them is a gap.</summary>
    private async ValueTask ReceiveSkipAsync(Run run, Frame frame, int bytes)
    {
        if (frame.Sequence <= run.LastQueued)
        {
            return;
        }

        run.LastQueued = frame.Sequence;
        await QueueForDeliveryAsync(run, frame, bytes).ConfigureAwait(false);
    }

    /// <summary>Hands queued inbound messages to the application in order and owes the peer an ack after each.</summary>
    private async Task DeliverLoopAsync(Run run, CancellationToken token)
    {
        var inbound = run.Deliveries!;
        var reader = inbound.Reader;
        try
        {
            while (Volatile.Read(ref _terminal) is null && await reader.WaitToReadAsync(token).ConfigureAwait(false))
            {
                // Delivering is raised before a frame leaves the queue and lowered only after its delivery is
                // recorded: the read loop's inline fast path relies on that to never overtake this loop.
                run.Delivering = true;
                try
                {
                    // Stopped (the connection ended) or shut down (the session ended): what is still queued is not
                    // handed over, nor acknowledged; a handler that ignores its token must not be handed the rest of
                    // the queue after the connection, or the session, is over.
                    while (!token.IsCancellationRequested && Volatile.Read(ref _terminal) is null && reader.TryRead(out var queued))
                    {
                        var frame = queued.Frame;
                        // Taken with a full barrier before the pause flag is read (see PauseReadingAsync).
                        inbound.Taken(queued.Bytes);
                        run.WakeReader();
                        if (frame.Type == FrameType.Skip)
                        {
                            var missing = frame.Sequence - Volatile.Read(ref _lastDelivered);

                            Log.MessagesDropped(_logger, _name, missing);
                            if (OnMessagesDropped is { } dropped)
                            {
                                await dropped(missing, token).ConfigureAwait(false);
                            }
                        }
                        else
                        {
                            await _deliver(frame.Message!, token).ConfigureAwait(false);
                        }

                        RecordDelivered(frame.Sequence, frame.AckNow);

                        // Batch acks: ring once the queue is drained rather than once per message (and for every
                        // message while a close waits for the queue to drain, or while the ack is urgent: the sender
                        // waits for it, or it covers AckHoldMaxMessages).
                        var urgent = AckIsUrgent();
                        if (reader.Count == 0 || run.LocalClose is not null || urgent)
                        {
                            run.RingForAck(urgent);
                        }
                    }
                }
                finally
                {
                    run.Delivering = false;
                }
            }
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
        }
        catch (Exception ex) when (IsClosed)
        {
            // The session ended under a delivery that was waiting (a full queue of the application's, completed by
            // the end): nothing is replayed and nothing went wrong, so it is no error, and the connection is left to
            // deliver the close the session ended with rather than cut.
            Log.DeliveryEndedWithSession(_logger, _name, ex.Message);
        }
        catch (Exception ex)
        {
            Log.DeliveryFailed(_logger, _name, ex);
            run.Cancel();
        }
    }

    /// <summary>
    /// Counts as something received on the live connection: a long-poll arriving. A client that only polls (its acks
    /// ride on the polls) sends nothing upstream, yet it is plainly alive, and the heartbeat must not close it.
    /// </summary>
    /// <remarks>Called once per poll, so it takes no lock: a stale read only misses one mark.</remarks>
    public void MarkPeerActive() => Volatile.Read(ref _current)?.MarkReceived(Heartbeat);

    /// <summary>
    /// Applies an acknowledgement that arrived outside a frame (an SSE <c>Last-Event-ID</c>); values beyond what was
    /// sent are clamped rather than treated as a violation.
    /// </summary>
    public void AcknowledgeUpTo(long sequence)
    {
        long highest;
        lock (_gate)
        {
            highest = _highestSent;
        }

        Acknowledge(Math.Min(sequence, highest));
    }

    private void Acknowledge(long sequence)
    {
        List<TaskCompletionSource>? completed = null;
        TaskCompletionSource? space;
        long acknowledged;
        lock (_gate)
        {
            if (sequence > _highestSent)
            {
                throw new PushProtocolException(
                    PushCloseCode.ProtocolError,
                    $"Invalid ack: {sequence} acknowledges more than was sent ({_highestSent}).");
            }

            var before = _lastAcked;
            while (_lastAcked < sequence && _count > 0)
            {
                ref var entry = ref _ring[_head];
                _bufferedBytes -= entry.Message!.EncodedBody.Length;
                if (entry.Completion is not null)
                {
                    (completed ??= []).Add(entry.Completion);
                    _awaitedAcks--;
                }

                entry = default;
                _head = (_head + 1) % _ring.Length;
                _count--;
                _lastAcked++;
            }

            acknowledged = _lastAcked - before;
            if (_sendCursor <= _lastAcked)
            {
                _sendCursor = _lastAcked + 1;
            }

            space = _space;
            _space = null;
        }

        if (acknowledged > 0)
        {
            Metrics?.Acknowledged(acknowledged);
        }

        space?.TrySetResult();
        if (completed is not null)
        {
            foreach (var completion in completed)
            {
                completion.TrySetResult();
            }
        }
    }

    private async Task WriteLoopAsync(Run run)
    {
        // Rented while there is something to send and returned when the loop goes idle: idle connections hold none.
        var output = new PooledBufferWriter();
        var token = run.Token;
        var ackDelay = run.Connection is IAckCoalescing { AckDelay: var delay } && delay > TimeSpan.Zero ? delay : TimeSpan.Zero;
        try
        {
            while (true)
            {
                // The buffer is kept while there is more to send at once, and returned when the loop goes idle: a busy
                // connection does not rent it again for every wake, and an idle one holds none.
                var ring = run.Doorbell.WaitAsync();
                if (!ring.IsCompleted)
                {
                    output.Release();
                }

                await ring.ConfigureAwait(false);

                // Flush everything that is due, in batches.
                while (true)
                {
                    // Checked before every batch, not only after a wake: an ack that fell due while the previous batch
                    // was being sent (an SSE POST takes a round trip) is held like any other, not sent at once.
                    if (ackDelay > TimeSpan.Zero && OnlyAnAckIsDue(run))
                    {
                        await HoldAckAsync(run, ackDelay).ConfigureAwait(false);
                    }

                    output.Reset();
                    FillBatch(run, output);
                    if (output.WrittenCount == 0)
                    {
                        break;
                    }

                    await run.Connection.SendAsync(output.WrittenMemory, token).ConfigureAwait(false);
                    run.MarkSent(Heartbeat?.TimeProvider);
                }

                if (run.LocalClose is { } close)
                {
                    // Going away (shutdown): first finish handing over what has arrived, so its acks go out and the
                    // client need not replay it elsewhere; bounded by the drain timeout.
                    if (close.Code == PushCloseCode.GoingAway && run.HasUndelivered && !run.DrainExpired)
                    {
                        run.StartDrainTimer(s_drainTimeout);
                        continue;
                    }

                    if (close.SendFrame)
                    {
                        output.Reset();
                        FrameCodec.WriteClose(output, close.Code, close.Reason, close.RetryAfterMs);
                        await run.Connection.SendAsync(output.WrittenMemory, token).ConfigureAwait(false);
                    }

                    await run.Connection.CloseAsync(close.Code, close.Reason, token).ConfigureAwait(false);

                    // Give the peer a moment to answer the close, then stop reading regardless.
                    run.CancelAfter(s_closeGrace);
                    return;
                }
            }
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
        }
        catch (Exception ex)
        {
            // A failed send means the connection is gone: stop the read side too.
            Log.WriteLoopEnded(_logger, _name, ex.Message);
            run.FailWrites(ex);
        }
        finally
        {
            output.Release();
        }
    }

    /// <summary>Sends the close frame of a shut-down engine on a connection that arrived too late, and closes it.</summary>
    private async Task SendFinalCloseAsync(IPushTransportConnection connection, FinalClose close, CancellationToken cancellationToken)
    {
        var output = new ArrayBufferWriter<byte>(128);
        FrameCodec.WriteClose(output, close.Code, close.Reason, close.RetryAfterMs);
        try
        {
            await connection.SendAsync(output.WrittenMemory, cancellationToken).ConfigureAwait(false);
            await connection.CloseAsync(close.Code, close.Reason, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // The peer is gone already. Whatever the transport says of it (an HTTP transport throws
            // HttpRequestException), telling it was a courtesy: it must not fail the close of the side that ended.
            Log.WriteLoopEnded(_logger, _name, ex.Message);
        }
    }

    /// <summary>Why <see cref="Shutdown"/> closed the engine: what it tells a connection that arrives afterwards.</summary>
    private sealed record FinalClose(PushCloseCode Code, string? Reason, int? RetryAfterMs);

    /// <summary>
    /// Holds back an ack that has nothing else to travel with for up to <paramref name="delay"/>, so that one ack
    /// covers what arrives meanwhile; ends early when something else becomes due (a message, a control frame, a close,
    /// an ack the peer waits for), which then carries the ack. The connection's ack timer rings the doorbell when the
    /// delay is up, so the hold only ever waits on the doorbell.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask HoldAckAsync(Run run, TimeSpan delay)
    {
        // Acks that fall due meanwhile do not ring: only the timer or something else to send ends the hold.
        run.SetHoldingAck(true);
        run.StartAckTimer(Heartbeat?.TimeProvider ?? TimeProvider.System, delay);
        try
        {
            while (OnlyAnAckIsDue(run) && !run.AckTimerFired)
            {
                await run.Doorbell.WaitAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            run.StopAckTimer();
            run.SetHoldingAck(false);
        }
    }

    /// <summary>Whether the next batch would carry an ack and nothing else (a racy read: a wrong answer only delays or not).</summary>
    private bool OnlyAnAckIsDue(Run run) =>
        Volatile.Read(ref _ackDue) != 0
        && !AckIsUrgent()
        && run.LocalClose is null
        && !run.HasControl
        && Volatile.Read(ref _sendCursor) > Volatile.Read(ref _lastAssigned)
        && Volatile.Read(ref _skipThrough) <= run.SkipSent;

    /// <summary>One heartbeat check of <paramref name="run"/> (from the shared heartbeat timer).</summary>
    /// <returns>False once the connection was closed for silence: it needs no more checks.</returns>
    private bool CheckHeartbeat(Run run, HeartbeatSettings settings)
    {
        var time = settings.TimeProvider;
        if (run.Token.IsCancellationRequested)
        {
            return false;
        }

        if (!run.ReadPaused && settings.SilenceSince(run.LastReceived) > settings.Timeout)
        {
            Log.HeartbeatTimedOut(_logger, _name, settings.Timeout);
            run.RequestClose(PushCloseCode.HeartbeatTimeout, $"Nothing received for {settings.Timeout}.", retryAfterMs: null, sendFrame: true);

            // The read side may be stuck on a half-open connection: stop it now.
            run.Cancel();
            return false;
        }

        if (time.GetElapsedTime(run.LastSent) >= settings.Interval)
        {
            run.EnqueueControl(Control.Ping);
            run.MarkSent(time);
        }

        return true;
    }

    private void FillBatch(Run run, PooledBufferWriter output)
    {
        var limit = Math.Min(PeerMaxMessageBytes, BatchTargetBytes);

        // Control frames stop where the next one could overflow the batch (leaving room for a skip and an ack); the
        // rest go in the next batch. The first always fits: the peer's limit is at least 1024 bytes.
        while (output.WrittenCount + MaxControlFrameBytes + (2 * MaxSequenceFrameBytes) <= limit && run.TryDequeueControl(out var control))
        {
            control.Write(output);
            output.Write("\n"u8);
        }

        if (TakeDueAck() is var delivered and > 0)
        {
            FrameCodec.WriteAck(output, delivered);
            output.Write("\n"u8);
        }

        // Rented with the first message picked: most calls (the last of each flush, ack-only batches) pick none.
        Entry[]? picked = null;
        var count = 0;
        long first;
        bool filling;
        int size;
        lock (_gate)
        {
            // With the buffer of unacknowledged messages half full, every message asks for its ack at once, so that a
            // receiver coalescing acks (AckDelay) never holds this side at its limit.
            filling = Limits is { } limits && (_count * 2L >= limits.MaxMessages || _bufferedBytes * 2 >= limits.MaxBytes);
            if (_skipThrough > run.SkipSent)
            {
                FrameCodec.WriteSkip(output, _skipThrough);
                output.Write("\n"u8);
                run.SkipSent = _skipThrough;
            }

            // Under the lock only the messages are picked (references, in order); they are encoded after it is
            // released, so that senders queueing more for this session are not held up by the copying.
            first = _sendCursor;
            size = output.WrittenCount;
            while (_sendCursor <= _lastAssigned)
            {
                var offset = _sendCursor - (_lastAcked + 1);
                var entry = _ring[(int)((_head + offset) % _ring.Length)];
                var length = FrameCodec.MaxMessageFrameLength(entry.Message!) + 1;
                if (size > 0 && size + length > limit)
                {
                    break;
                }

                if (picked is null)
                {
                    picked = ArrayPool<Entry>.Shared.Rent(64);
                }
                else if (count == picked.Length)
                {
                    var larger = ArrayPool<Entry>.Shared.Rent(picked.Length * 2);
                    picked.AsSpan(0, count).CopyTo(larger);
                    ArrayPool<Entry>.Shared.Return(picked, clearArray: true);
                    picked = larger;
                }

                picked[count++] = entry;
                size += length;
                _sendCursor++;
            }

            if (_sendCursor - 1 > _highestSent)
            {
                _highestSent = _sendCursor - 1;
            }
        }

        if (picked is null)
        {
            return;
        }

        // The batch's size is known (an upper bound): one buffer of that size, rather than doubling up to it.
        output.EnsureCapacity(size);
        for (var i = 0; i < count; i++)
        {
            // A message someone awaits the acknowledgement of (SendAsync) asks for it at once.
            FrameCodec.WriteMessage(output, first + i, picked[i].Message!, ackNow: filling || picked[i].Completion is not null);
            output.Write("\n"u8);
        }

        ArrayPool<Entry>.Shared.Return(picked, clearArray: true);
    }

    private static string? Truncate(string? text, int length) =>
        text is null || text.Length <= length ? text : text[..length] + "…";

    /// <summary>The longest close reason from the peer that is kept (longer ones are shortened, ending in '…').</summary>
    internal const int MaxPeerReasonLength = 1024;

    /// <summary>Text from the peer, made safe to log: at most 200 characters, control characters (line breaks) as '?'.</summary>
    internal static string? ForLog(string? text) => Sanitize(text, 200);

    private static string? Sanitize(string? text, int maxLength)
    {
        var shortened = Truncate(text, maxLength);
        return shortened is null || !shortened.Any(char.IsControl)
            ? shortened
            : new string(shortened.Select(c => char.IsControl(c) ? '?' : c).ToArray());
    }

    private void Grow()
    {
        // Made on first use: a session that is never sent anything holds no ring.
        var larger = new Entry[Math.Max(4, _ring.Length * 2)];
        for (var i = 0; i < _count; i++)
        {
            larger[i] = _ring[(_head + i) % _ring.Length];
        }

        _ring = larger;
        _head = 0;
    }

    private readonly record struct Entry(PushMessage? Message, TaskCompletionSource? Completion);
}
