using System.Runtime.CompilerServices;
using System.Security.Claims;
using System.Security.Cryptography;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PushKit.Connections;
using PushKit.Delivery;

namespace PushKit.Server.Sessions;

/// <summary>One client's session on the server: its delivery engine, its connection and its lifetime.</summary>
internal sealed partial class PushSession : IPushSession
{
    private static readonly TimeSpan s_supersedeWait = TimeSpan.FromSeconds(1);

    // How long an ended session's connection may take to deliver its close before it is cut (protocol 5.6: about 2 s).
    private static readonly TimeSpan s_endCut = TimeSpan.FromSeconds(3);

    private readonly PushSessionManager _manager;
    private readonly byte[] _secretHash;
    private readonly SemaphoreSlim _connectionLock = new(1, 1);
    private SessionReadQueue? _inbound;
    private readonly bool _readable;
    private readonly ILogger _logger;
    private readonly object _stateGate = new();
    private Task<ConnectionEnd>? _run;
    private int _attaching;
    private ClaimsPrincipal? _user;
    private PushChannelState _state = PushChannelState.Disconnected;
    private long _disconnectedAt;
    private string? _transport;
    private System.Collections.Concurrent.ConcurrentDictionary<object, object?>? _items;
    private int _startNotified;

    // Set while the start handlers run: the connection already carries the session (the handlers' own sends go out
    // and are acknowledged), but the client's messages wait until they have returned.
    private StartGate? _startGate;

    // Set when the server application closed the session: the session stays findable, holding
    // only its close, for a client that comes back within the resume window. Without it, that client would find no
    // session and quietly start a new one, as if the server had never ended this one. (A bool fits the padding after
    // the ints above: it costs an idle connection nothing.)
    private bool _holdsClose;
    private IPushTransportConnection? _connection;
    private Connections.HttpServerConnection? _httpConnection;

    public PushSession(PushSessionManager manager, string sessionId, byte[] secretHash, ClaimsPrincipal? user, string? userId, long createdAt, int peerMaxMessageBytes, ILogger logger)
    {
        _manager = manager;
        SessionId = sessionId;
        _secretHash = secretHash;
        _user = user;
        UserId = userId;
        _disconnectedAt = createdAt;
        _logger = logger;
        var options = manager.Options;
        // Without handlers the application reads the session (ReadAllAsync); its queue is made when first needed.
        _readable = !manager.HasHandlers;

        Engine = new DeliveryEngine(this, peerMaxMessageBytes, DeliverAsync, logger)
        {
            Heartbeat = manager.Heartbeat,
            Limits = manager.BufferLimits,
            Metrics = manager.Metrics,
            OnMessagesDropped = MessagesDroppedAsync,
        };
    }

    public event EventHandler<PushChannelStateChangedEventArgs>? StateChanged;

    public event EventHandler<PushMessagesDroppedEventArgs>? MessagesDropped;

    public string SessionId { get; }

    string? IPushChannel.SessionId => SessionId;

    public string? UserId { get; }

    /// <remarks>An anonymous session's (empty) principal is made on first use.</remarks>
    public ClaimsPrincipal User => _user ?? LazyInitializer.EnsureInitialized(ref _user, static () => new ClaimsPrincipal(new ClaimsIdentity()));

    public string? Transport
    {
        get
        {
            lock (_stateGate)
            {
                return _transport;
            }
        }
    }

    public IDictionary<object, object?> Items => LazyInitializer.EnsureInitialized(ref _items);

    public PushChannelState State
    {
        get
        {
            lock (_stateGate)
            {
                return _state;
            }
        }
    }

    internal DeliveryEngine Engine { get; }

    /// <summary>The run of the live connection, if there is one: it completes when that connection has ended.</summary>
    internal Task? CurrentRun
    {
        get
        {
            lock (_stateGate)
            {
                return _run;
            }
        }
    }

    /// <summary>Messages from the client waiting for <see cref="ReadAllAsync"/> (no handlers registered); made on first use.</summary>
    private SessionReadQueue Inbound
    {
        get
        {
            if (Volatile.Read(ref _inbound) is { } existing)
            {
                return existing;
            }

            lock (_stateGate)
            {
                if (_inbound is null)
                {
                    var inbound = new SessionReadQueue(_manager.Options.InboundQueueCapacity, _manager.Options.MaxBufferedBytesPerSession);
                    if (_state == PushChannelState.Closed)
                    {
                        inbound.Complete();
                    }

                    Volatile.Write(ref _inbound, inbound);
                }

                return _inbound;
            }
        }
    }

    /// <summary>The recent message ids of an anonymous session (authenticated users share theirs across sessions).</summary>
    internal RecentMessageIds? AnonymousRecentIds { get; set; }

    /// <summary>The timestamp (<see cref="TimeProvider.GetTimestamp"/>) since which the session has had no connection; 0 while connected.</summary>
    internal long DisconnectedAt
    {
        get
        {
            lock (_stateGate)
            {
                return _state == PushChannelState.Connected ? 0 : _disconnectedAt;
            }
        }
    }

    /// <summary>
    /// Whether the server application closed the session and it is kept, for the rest of the resume window, so that a
    /// client coming back hears the 1000 it missed instead of 404.
    /// </summary>
    internal bool HoldsClose => Volatile.Read(ref _holdsClose);

    /// <summary>
    /// Whether a new connection may carry the session: it is live, or it ended and holds its close for the returning
    /// client (<see cref="HoldsClose"/>). Checked by every WebSocket handshake, through the HTTP endpoint or directly.
    /// </summary>
    internal bool TakesNewConnection => State != PushChannelState.Closed || HoldsClose;

    /// <summary>Whether the session has ended: a hint without a lock, for a broadcast to skip it cheaply.</summary>
    internal bool HasEnded => Volatile.Read(ref Unsafe.As<PushChannelState, int>(ref _state)) == (int)PushChannelState.Closed;

    /// <summary>The session's latest SSE or long-polling connection, which POSTs to <c>{base}/send</c> feed.</summary>
    internal Connections.HttpServerConnection? HttpConnection => Volatile.Read(ref _httpConnection);

    internal void SetHttpConnection(Connections.HttpServerConnection connection) => Volatile.Write(ref _httpConnection, connection);

    /// <summary>
    /// An SSE stream's request is over: if it still holds the session's POSTs but another connection carries the
    /// session, that connection gets them back. A stream whose client went away before it could take over (during its
    /// <c>open</c> event, or while it waited to take over) would otherwise leave every POST refused with 409 until
    /// the live stream's heartbeat timed out.
    /// </summary>
    internal void ReleaseHttpConnection(Connections.HttpServerConnection ended)
    {
        lock (_stateGate)
        {
            if (ReferenceEquals(_httpConnection, ended)
                && Volatile.Read(ref _connection) is Connections.HttpServerConnection { IsDead: false } live
                && !ReferenceEquals(live, ended))
            {
                _httpConnection = live;
            }
        }
    }

    /// <summary>Returns the live long-polling connection, or attaches <paramref name="created"/> when there is none.</summary>
    /// <param name="create">Creates the connection.</param>
    /// <param name="forceNew">The client opens a new connection (after a loss): the previous one is ended so that the new one replays.</param>
    /// <param name="created">
    /// Whether a new connection was attached. It counts as being attached from here on (the session is not removed
    /// under it), and must be run with <see cref="RunConnectionAsync"/> with <c>attachCounted</c> set.
    /// </param>
    /// <returns>The connection; null when the session has ended and has no live connection to reuse.</returns>
    internal Connections.LongPollingServerConnection? AttachLongPolling(Func<Connections.LongPollingServerConnection> create, bool forceNew, out bool created)
    {
        Connections.LongPollingServerConnection? replaced = null;
        lock (_stateGate)
        {
            if (_httpConnection is Connections.LongPollingServerConnection { IsDead: false } live)
            {
                if (!forceNew)
                {
                    created = false;
                    return live;
                }

                replaced = live;
            }

            if (_state == PushChannelState.Closed && !_holdsClose)
            {
                // Ended since the poll looked: a new connection would have nothing to carry but a close, and nothing
                // would keep the session findable for the poll that collects it. (A session that holds its close for
                // a returning client is kept until the client has answered it or the resume window has passed.)
                created = false;
                return null;
            }

            var connection = create();
            _httpConnection = connection;
            created = true;
            _attaching++;
            replaced?.Abort();
            return connection;
        }
    }

    /// <summary>How logs name the session.</summary>
    public override string ToString() => "session " + SessionId;

    /// <summary>Whether <paramref name="secret"/> is the session's resume secret (compared by hash, in constant time).</summary>
    public bool VerifySecret(ReadOnlySpan<char> secret)
    {
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        return PushSessionManager.TryHashSecret(secret, hash) && CryptographicOperations.FixedTimeEquals(_secretHash, hash);
    }

    public Task ConnectAsync(CancellationToken cancellationToken = default) =>
        State == PushChannelState.Closed
            ? Task.FromException(new PushChannelClosedException("The session is closed.", PushCloseCode.SessionNotFound))
            : Task.CompletedTask;

    public async ValueTask SendAsync(PushMessage message, CancellationToken cancellationToken = default)
    {
        var acknowledged = (await EnqueueAsync(message, trackAck: true, cancellationToken).ConfigureAwait(false))!;
        _manager.Metrics.MessagesSent(1);
        try
        {
            await acknowledged.WaitAsync(_manager.Options.AckTimeout, _manager.TimeProvider, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException ex)
        {
            AckWait.ObserveLateFailure(acknowledged);
            throw new PushAckTimeoutException(
                $"Session {SessionId} did not acknowledge the message within {_manager.Options.AckTimeout}. It stays queued and may still be delivered.", ex);
        }
        catch (OperationCanceledException)
        {
            AckWait.ObserveLateFailure(acknowledged);
            throw;
        }
    }

    /// <summary>
    /// Queues a message within the session's buffer limits; under <see cref="PushBufferFullPolicy.Disconnect"/> a full
    /// buffer ends the session (4429) and the send fails with <see cref="PushChannelClosedException"/>.
    /// </summary>
    internal async ValueTask<Task?> EnqueueAsync(PushMessage message, bool trackAck, CancellationToken cancellationToken)
    {
        try
        {
            return await Engine.EnqueueAsync(message, trackAck, cancellationToken).ConfigureAwait(false);
        }
        catch (PushBufferFullException ex)
        {
            throw EndAsSlowConsumer(ex);
        }
    }

    /// <summary>
    /// Queues a message (no acknowledgement awaited) when the buffer has room now; false when it is full under
    /// <see cref="PushBufferFullPolicy.Wait"/>, and <see cref="EnqueueAsync"/> must wait.
    /// </summary>
    internal bool TryEnqueueNow(PushMessage message)
    {
        try
        {
            return Engine.TryEnqueueNow(message);
        }
        catch (PushBufferFullException ex)
        {
            throw EndAsSlowConsumer(ex);
        }
    }

    private PushChannelClosedException EndAsSlowConsumer(PushBufferFullException ex)
    {
        Log.SlowConsumer(_logger, SessionId, ex.Message);
        // Not held: a client that comes back must start a new session anyway, and on SSE and long-polling, where no
        // answer to the close comes, a held 4429 would meet every resume attempt until the window passed.
        End(PushCloseCode.Overloaded, "The client does not keep up: its buffer of unacknowledged messages is full.");
        return new PushChannelClosedException($"Session {SessionId} was ended: {ex.Message}", PushCloseCode.Overloaded, ex);
    }

    public async IAsyncEnumerable<PushMessage> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        if (!_readable)
        {
            throw new InvalidOperationException(
                "Messages from this session are dispatched to the registered PushHandler(s); ReadAllAsync is available only when no handler is registered.");
        }

        var inbound = Inbound;
        while (await inbound.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            while (inbound.TryRead(out var message))
            {
                yield return message;
            }
        }
    }

    public Task CloseAsync(CancellationToken cancellationToken = default)
    {
        End(PushCloseCode.Normal, "The server closed the session.", holdClose: true);
        return Task.CompletedTask;
    }

    // The session belongs to PushKit, not to whoever found it in the registry: disposing it ends nothing (see IPushSession).
    public ValueTask DisposeAsync() => default;

    /// <summary>
    /// Carries the session over <paramref name="connection"/> until it ends. A live older connection is superseded
    /// first: it is closed with <see cref="PushCloseCode.Superseded"/>.
    /// </summary>
    /// <param name="connection">The connection.</param>
    /// <param name="cancellationToken">Ends the run (the request was aborted).</param>
    /// <param name="attachCounted">The connection already counts as being attached (<see cref="AttachLongPolling"/>).</param>
    public async Task<ConnectionEnd> RunConnectionAsync(IPushTransportConnection connection, CancellationToken cancellationToken, bool attachCounted = false)
    {
        // While a connection is being attached, an End that finds no run yet must not remove the session: the
        // connection is about to tell its client why the session ended, and a long-poll collects that from here.
        // (One method, not two: every idle connection keeps this state machine alive, and its memory is a target.)
        if (!attachCounted)
        {
            lock (_stateGate)
            {
                _attaching++;
            }
        }

        // Set once the connection carries the session (counted in the metrics until it ends).
        var counted = false;
        long connectedAt = 0;

        // Whether this connection's client is known to have heard that the session ended: it answered the close (a
        // WebSocket's close handshake). A session that holds its close keeps it until then, or for the resume window:
        // on SSE and long-polling, and on a connection cut before the answer, the close may have been lost.
        var carriedClose = false;

        // Set when this connection is the session's first, and the application's start handlers run on it.
        var notifyStart = false;
        try
        {
            Task<ConnectionEnd> run;

            await _connectionLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (connection is Connections.HttpServerConnection { IsDead: true })
                {
                    // Replaced before it could take over (a second open=1 poll, a stream whose client left): the
                    // newer connection may have taken the lock first, and this older one must not supersede it.
                    return new ConnectionEnd(ConnectionEndKind.Lost, null, "Replaced by a newer connection before it took over.");
                }

                if (State == PushChannelState.Closed)
                {
                    // The session ended while this connection was being set up, or before it came and the session
                    // held its close for it (HoldsClose). Its engine is shut down (or is about to be, and then closes
                    // this connection itself): it sends the close the session ended with, so the client hears 1000
                    // after an application close, not that its session has vanished. In the moment
                    // before the engine is shut down, a previous connection may still be live: it is about to be
                    // closed, so wait for that first (the engine takes one live connection at a time).
                    Task<ConnectionEnd>? previous;
                    lock (_stateGate)
                    {
                        previous = _run;
                    }

                    if (previous is not null && !Engine.IsClosed)
                    {
                        await WaitForEndAsync(previous, Timeout.InfiniteTimeSpan, cancellationToken).ConfigureAwait(false);
                    }

                    run = Engine.RunAsync(connection, cancellationToken);
                    connectedAt = _manager.Metrics.ConnectionStarted(connection.TransportName);
                    counted = true;
                }
                else
                {
                    Task<ConnectionEnd>? previous;
                    lock (_stateGate)
                    {
                        previous = _run;
                    }

                    if (previous is not null)
                    {
                        Log.Superseded(_logger, SessionId);
                        Engine.CloseConnection(PushCloseCode.Superseded, "Another connection took over this session.");
                        try
                        {
                            await WaitForEndAsync(previous, s_supersedeWait, cancellationToken).ConfigureAwait(false);
                        }
                        catch (TimeoutException)
                        {
                            // The old connection is not closing in time (a dead peer, a long-poll nobody collects):
                            // cut it, and wait a little more for its run to end.
                            Volatile.Read(ref _connection)?.Abort();
                            try
                            {
                                await WaitForEndAsync(previous, s_supersedeWait, cancellationToken).ConfigureAwait(false);
                            }
                            catch (TimeoutException) when (connection is Connections.LongPollingServerConnection)
                            {
                                // A handler is still busy (C1.2), but a long-polling connection is not dropped: its
                                // client cannot tell (a poll answered empty, and the next poll would silently open a
                                // new connection, losing what was POSTed to this one). Its polls are answered empty
                                // meanwhile, so it is not left hanging either; it takes over when the handler returns.
                                await WaitForEndAsync(previous, Timeout.InfiniteTimeSpan, cancellationToken).ConfigureAwait(false);
                            }
                            catch (TimeoutException)
                            {
                                // A handler is still busy with one of its messages (C1.2): drop the new connection
                                // rather than leave it open with nothing on it; its client retries like any lost one.
                                Log.SupersedeTimedOut(_logger, SessionId);
                                connection.Abort();
                                return new ConnectionEnd(ConnectionEndKind.Lost, null, "The previous connection did not end in time (a handler is still busy); dropped, to be retried.");
                            }
                        }
                    }

                    Volatile.Write(ref _connection, connection);
                    if (connection is Connections.SseServerConnection stream)
                    {
                        // The stream that carries the session takes its POSTs: a stream that arrived after it and was
                        // abandoned before it could take over must not keep them (they would be refused with 409).
                        Volatile.Write(ref _httpConnection, stream);
                    }
                    else if (connection is not Connections.HttpServerConnection)
                    {
                        // A WebSocket took over: a long-polling connection it replaced is no one's to poll any more.
                        // Kept, it would hand its stale frames (and a 4409) to a client returning after the session
                        // ended, instead of the close it missed, and hold its unsent frames for the session's life.
                        lock (_stateGate)
                        {
                            if (_httpConnection is Connections.LongPollingServerConnection)
                            {
                                _httpConnection = null;
                            }
                        }
                    }

                    // The first connection to carry the session tells the application (below, after the lock). Its
                    // gate is shut before the run starts, so that no client message is handled before the handler
                    // has returned.
                    if (Interlocked.Exchange(ref _startNotified, 1) == 0 && _manager.HasHandlers)
                    {
                        notifyStart = true;
                        Volatile.Write(ref _startGate, new StartGate());
                    }

                    run = Engine.RunAsync(connection, cancellationToken);
                    connectedAt = _manager.Metrics.ConnectionStarted(connection.TransportName);
                    counted = true;
                    lock (_stateGate)
                    {
                        _run = run;
                        _transport = connection.TransportName;
                    }

                    SetState(PushChannelState.Connected, null, null);
                    if (_manager.IsGoingAway)
                    {
                        // Attached while the host is stopping (after, or while, its connections were told to go away):
                        // told the same, rather than held open until the web server cuts it.
                        Engine.CloseConnection(PushCloseCode.GoingAway, PushSessionManager.GoingAwayReason, PushSessionManager.GoingAwayRetryAfterMs);
                    }
                }
            }
            finally
            {
                _connectionLock.Release();
            }

            if (notifyStart)
            {
                // Beside the connection's run, not before it: the handler may await an acknowledged send to this
                // session (a welcome, the history), and a newer connection may take over meanwhile. (Not awaited here:
                // an await would grow the state machine that every idle connection keeps.)
                _ = NotifyStartedAsync();
            }

            ConnectionEnd end;
            try
            {
                end = await run.ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                // Not expected (the engine ends a connection with a ConnectionEnd), but a run that failed is over all
                // the same: the session must go on to its next connection, not stay Connected to this one for good.
                Log.RunFailed(_logger, SessionId, ex);
                end = new ConnectionEnd(ConnectionEndKind.Lost, null, ex.Message, Error: ex);
            }

            counted = false;
            carriedClose = end.CloseAnswered && Engine.IsClosed;
            _manager.Metrics.ConnectionEnded(connection.TransportName, connectedAt, end.Kind);
            var stillCurrent = false;
            lock (_stateGate)
            {
                if (ReferenceEquals(_run, run))
                {
                    _run = null;
                    _transport = null;
                    stillCurrent = true;
                }
            }

            if (stillCurrent)
            {
                if (end is { Kind: ConnectionEndKind.ClosedByPeer, Code: PushCloseCode.Normal, FromFrame: true })
                {
                    // The client closed its channel: the session is over, nothing will resume it.
                    End(PushCloseCode.Normal, end.Reason ?? "The client closed the session.");
                }
                else
                {
                    // Checked again under the lock: a newer connection may have taken the session over since this
                    // run was cleared, and its Connected must not be overwritten (nor its session expire under it).
                    var disconnected = false;
                    lock (_stateGate)
                    {
                        if (_run is null && _state == PushChannelState.Connected)
                        {
                            _state = PushChannelState.Disconnected;
                            _disconnectedAt = _manager.TimeProvider.GetTimestamp();
                            disconnected = true;
                        }
                    }

                    if (disconnected)
                    {
                        RaiseStateChanged(new PushChannelStateChangedEventArgs(PushChannelState.Connected, PushChannelState.Disconnected, end.Code, end.Reason));
                    }
                }
            }

            Log.ConnectionEnded(_logger, SessionId, end.Kind, end.Code, end.Reason);
            return end;
        }
        finally
        {
            if (counted)
            {
                _manager.Metrics.ConnectionEnded(connection.TransportName, connectedAt, kind: null);
            }

            bool remove;
            lock (_stateGate)
            {
                _attaching--;
                remove = _state == PushChannelState.Closed && _run is null && _attaching == 0 && (carriedClose || !_holdsClose);
                if (_state == PushChannelState.Closed && _holdsClose && !carriedClose)
                {
                    // The close may not have reached the client: keep it for a whole resume window from now.
                    _disconnectedAt = _manager.TimeProvider.GetTimestamp();
                }

                if (_run is null)
                {
                    // No connection carries the session (this one never became its run, or has ended).
                    _transport = null;
                }
            }

            if (remove)
            {
                // An ended session stays findable while its last connection delivers the close (a long-poll
                // collects it).
                _manager.Remove(this);
            }
        }
    }

    /// <summary>Ends the session for good: fails unacknowledged sends, closes the connection, removes the session.</summary>
    /// <param name="code">Why, as the client hears it.</param>
    /// <param name="reason">Why, in words.</param>
    /// <param name="holdClose">
    /// The server application closed the session: keep it, holding only its close, until the client has answered that
    /// close (a WebSocket close handshake) or the resume window has passed (<see cref="ForgetIfDue"/>).
    /// </param>
    public void End(PushCloseCode code, string reason, bool holdClose = false)
    {
        PushChannelState previous;
        lock (_stateGate)
        {
            previous = _state;
            if (previous == PushChannelState.Closed)
            {
                return;
            }

            _state = PushChannelState.Closed;
            if (holdClose)
            {
                Volatile.Write(ref _holdsClose, true);
                _disconnectedAt = _manager.TimeProvider.GetTimestamp();
            }
        }

        RaiseStateChanged(new PushChannelStateChangedEventArgs(previous, PushChannelState.Closed, code, reason));

        // An overloaded session's client is asked to wait a little before it comes back with a new one.
        int? retryAfterMs = code == PushCloseCode.Overloaded ? 5_000 : null;
        Engine.Shutdown(code, reason, new PushChannelClosedException($"Session {SessionId} ended: {reason}", code), retryAfterMs);
        Volatile.Read(ref _inbound)?.Complete();
        if (Volatile.Read(ref _startGate) is { } startGate)
        {
            // Start handlers still running stop their work; cancelled asynchronously, so that no handler code runs here,
            // on the thread that ended the session.
            var cancelled = startGate.SessionEnded.CancelAsync();
            if (!cancelled.IsCompletedSuccessfully)
            {
                // A callback the application registered on a start handler's token threw: logged, not left unobserved.
                _ = cancelled.ContinueWith(
                    static (task, state) => Log.StartTokenCallbackFailed(((PushSession)state!)._logger, ((PushSession)state!).SessionId, task.Exception!),
                    this,
                    CancellationToken.None,
                    TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously,
                    TaskScheduler.Default);
            }
        }

        bool connected;
        Task<ConnectionEnd>? live;
        lock (_stateGate)
        {
            // A connection being attached removes the session when it has delivered the close (RunConnectionAsync).
            connected = _run is not null || _attaching > 0;
            live = _run;
        }

        if (live is not null && Volatile.Read(ref _connection) is { } connection and not Connections.LongPollingServerConnection)
        {
            // A client that does not read blocks the write loop, so the close frame never goes out, and if it keeps
            // sending (pings) its connection never times out either: cut it when the close does not finish in time.
            // (A long-polling connection waits for a poll to collect the close and has its own abandonment watchdog.)
            _ = CutIfStuckAsync(live, connection);
        }

        _manager.OnSessionEnded(this, code, remove: !connected && !holdClose);
    }

    /// <summary>
    /// Removes a session that holds its close (<see cref="HoldsClose"/>) once no connection is carrying it and the
    /// resume window has passed since it ended or since its last connection did: a client that has not come back by
    /// then treats its session as gone anyway.
    /// </summary>
    /// <returns>Whether the session was removed.</returns>
    internal bool ForgetIfDue(TimeSpan resumeWindow)
    {
        lock (_stateGate)
        {
            if (_state != PushChannelState.Closed || !_holdsClose || _run is not null || _attaching > 0
                || _manager.TimeProvider.GetElapsedTime(_disconnectedAt) <= resumeWindow)
            {
                return false;
            }
        }

        _manager.Remove(this);
        return true;
    }

    private static async Task CutIfStuckAsync(Task<ConnectionEnd> run, IPushTransportConnection connection)
    {
        try
        {
            await run.WaitAsync(s_endCut, TimeProvider.System, CancellationToken.None).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            connection.Abort();
        }
    }

    /// <summary>Runs the application's start handlers, then lets the client's messages through.</summary>
    private async Task NotifyStartedAsync()
    {
        // Off the attaching request's thread: the handlers' synchronous part must not delay the connection.
        await Task.Yield();
        var cancellationToken = Volatile.Read(ref _startGate)?.SessionEnded.Token ?? CancellationToken.None;
        try
        {
            // Ended already (in the moment since the connection attached): the application is told of the end, not of
            // a start that came after it.
            if (!HasEnded)
            {
                await _manager.OnSessionStartedAsync(this, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The session ended during the handler.
        }
        catch (ObjectDisposedException)
        {
            // The host is shutting down and its services are gone.
        }
        catch (Exception ex)
        {
            // Neither a handler's own exception nor a failure to create the handlers (events 23 and 26, logged where
            // they happen): something unforeseen. Nobody awaits this task, so it is logged here, not left unobserved.
            Log.StartHandlersFailed(_logger, SessionId, ex);
        }
        finally
        {
            Interlocked.Exchange(ref _startGate, null)?.TrySetResult();
        }
    }

    /// <summary>
    /// The gate client messages wait at while the start handlers run, and the token those handlers get: cancelled when
    /// the session ends (a connection that is lost or superseded meanwhile does not end their work: the session goes
    /// on, and what they send reaches the next connection).
    /// </summary>
    private sealed class StartGate() : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        public CancellationTokenSource SessionEnded { get; } = new();
    }

    /// <summary>Waits, when the start handlers still run, until they have finished: client input is handled after them.</summary>
    private async ValueTask WaitForStartAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _startGate) is { } startGate)
        {
            await startGate.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            if (HasEnded)
            {
                // The handler turned the client away (or the session ended meanwhile): what the client sent is not
                // handed over, as for any message still waiting when a session ends.
                throw new PushChannelClosedException($"Session {SessionId} ended during its start handler.", PushCloseCode.Normal);
            }
        }
    }

    /// <summary>
    /// Waits for a superseded connection's run to end; a run that failed has ended too (its own connection reports the
    /// failure). Throws <see cref="TimeoutException"/> when it does not end within <paramref name="timeout"/>.
    /// </summary>
    private static async Task WaitForEndAsync(Task<ConnectionEnd> previous, TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            await previous.WaitAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception) when (previous.IsFaulted)
        {
        }
    }

    /// <summary>
    /// A <c>skip</c> from the client, told to the application like a message: after the start handlers (which is where
    /// an application subscribes), and a subscriber that throws is logged, not allowed to stop the session's input.
    /// </summary>
    private async ValueTask MessagesDroppedAsync(long count, CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _startGate) is not null)
        {
            await WaitForStartAsync(cancellationToken).ConfigureAwait(false);
        }

        // Each subscriber on its own: one that throws must not keep the gap from the others.
        EventHandlers.RaiseEach(MessagesDropped, this, new PushMessagesDroppedEventArgs(count), ex => Log.MessagesDroppedHandlerFailed(_logger, SessionId, count, ex));
    }

    private async ValueTask DeliverAsync(PushMessage message, CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _startGate) is not null)
        {
            // The start handler is still running: it has finished before the first client message is handled.
            await WaitForStartAsync(cancellationToken).ConfigureAwait(false);
        }
        else if (HasEnded)
        {
            // The session ended after the engine took this message from its queue but before it got here (and the
            // start handler, if any, returned meanwhile, so the gate above is gone): it is not handed over, as no
            // message still waiting when a session ends is. (Seen once in CI, on SSE: a start handler that closed the
            // session, its message delivered after all.)
            throw new PushChannelClosedException($"Session {SessionId} has ended: a client message still waiting is not handed over.", PushCloseCode.Normal);
        }

        // Idempotent sends: a message id applied before in this scope is acknowledged but not applied again. The id
        // is recorded only once the message was handed over: if that is interrupted, the replay must still count. A
        // copy that arrives while another session of the scope is applying the same id (two devices of one user)
        // waits for that one to finish, then looks again.
        var recent = message.Id is null ? null : _manager.RecentIds(this);
        if (recent is not null)
        {
            while (true)
            {
                var claim = recent.Begin(message.Id!, out var busy);
                if (claim == IdClaim.Claimed)
                {
                    break;
                }

                if (claim == IdClaim.Applied)
                {
                    Log.DuplicateMessageId(_logger, SessionId, message.Id!);
                    return;
                }

                await busy!.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
        }

        var applied = false;
        try
        {
            if (_readable)
            {
                await Inbound.WriteAsync(message, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await _manager.DispatchAsync(this, message, cancellationToken).ConfigureAwait(false);
            }

            applied = true;
        }
        finally
        {
            recent?.End(message.Id!, applied);
        }

        _manager.Metrics.MessageReceived();
    }

    private bool SetState(PushChannelState state, PushCloseCode? code, string? reason)
    {
        PushChannelState previous;
        lock (_stateGate)
        {
            previous = _state;
            if (previous == state || previous == PushChannelState.Closed)
            {
                return false;
            }

            _state = state;
        }

        RaiseStateChanged(new PushChannelStateChangedEventArgs(previous, state, code, reason));
        return true;
    }

    private void RaiseStateChanged(PushChannelStateChangedEventArgs change)
    {
        try
        {
            StateChanged?.Invoke(this, change);
        }
        catch (Exception ex)
        {
            // The application's handler: its failure must not stop the session's end (nor the sweep that ends it,
            // whose failure stops the host), nor leave a connection attached with nobody to await its run.
            Log.StateChangedHandlerFailed(_logger, SessionId, ex);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(24, LogLevel.Error, "Session {SessionId}: a connection's run failed; the session goes on to its next connection")]
        public static partial void RunFailed(ILogger logger, string sessionId, Exception exception);

        [LoggerMessage(25, LogLevel.Error, "Session {SessionId}: a callback registered on a start handler's cancellation token threw when the session ended")]
        public static partial void StartTokenCallbackFailed(ILogger logger, string sessionId, Exception exception);

        [LoggerMessage(10, LogLevel.Debug, "Session {SessionId}: a new connection supersedes the live one")]
        public static partial void Superseded(ILogger logger, string sessionId);

        [LoggerMessage(12, LogLevel.Debug, "Session {SessionId}: message id {MessageId} was applied before; acknowledged, not applied again")]
        public static partial void DuplicateMessageId(ILogger logger, string sessionId, string messageId);

        [LoggerMessage(13, LogLevel.Warning, "Session {SessionId} ended as a slow consumer: {Detail}")]
        public static partial void SlowConsumer(ILogger logger, string sessionId, string detail);

        [LoggerMessage(15, LogLevel.Error, "Session {SessionId}: the start handlers could not run")]
        public static partial void StartHandlersFailed(ILogger logger, string sessionId, Exception exception);

        [LoggerMessage(14, LogLevel.Error, "Session {SessionId}: a StateChanged handler threw")]
        public static partial void StateChangedHandlerFailed(ILogger logger, string sessionId, Exception exception);

        [LoggerMessage(17, LogLevel.Error, "Session {SessionId}: a MessagesDropped handler threw (for {Count} missing messages); the session carries on")]
        public static partial void MessagesDroppedHandlerFailed(ILogger logger, string sessionId, long count, Exception exception);

        [LoggerMessage(18, LogLevel.Warning, "Session {SessionId}: the connection it replaces did not end within 2 s (a handler is still busy with one of its messages); the new connection was dropped, for its client to retry")]
        public static partial void SupersedeTimedOut(ILogger logger, string sessionId);

        [LoggerMessage(11, LogLevel.Debug, "Session {SessionId}: connection ended ({Kind}, {CloseCode}, {Reason})")]
        public static partial void ConnectionEnded(ILogger logger, string sessionId, ConnectionEndKind kind, PushCloseCode? closeCode, string? reason);
    }
}
