using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Polly;
using Polly.Retry;
using PushKit.Connections;
using PushKit.Delivery;
using PushKit.Protocol;

namespace PushKit.Client;

/// <summary>The client's <see cref="IPushChannel"/>: negotiates a session, opens a transport, runs the delivery engine.</summary>
internal sealed partial class PushChannel : IPushChannel, IDisposable
{
    private static readonly TimeSpan s_closeWait = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan s_shortLived = TimeSpan.FromSeconds(5);
    private const int MaxNegotiateResponseBytes = 64 * 1024;
    private const long MinHeartbeatIntervalMs = 100;
    private const long MaxHeartbeatIntervalMs = 3_600_000;

    /// <summary>The longest a close frame's <c>retryAfterMs</c> is honoured, unless <see cref="PushClientOptions.MaxReconnectDelay"/> is longer.</summary>
    internal static readonly TimeSpan MaxRetryAfter = TimeSpan.FromMinutes(5);

    private readonly PushClientOptions _options;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly HttpMessageHandler _handler;
    private readonly HttpClient _http;
    private readonly HttpMessageInvoker _invoker;
    // Completed when the channel goes Disconnected or Closed (its readers end); a later ConnectAsync replaces it with a
    // new queue that starts with what was left unread. Each session's engine delivers into the queue that was current
    // when the session started.
    private ReceiveQueue _inbound;
    private readonly object _gate = new();
    private PushChannelState _state = PushChannelState.Disconnected;
    private PushCloseCode _closedWith = PushCloseCode.Normal;
    private DeliveryEngine? _engine;
    private Task? _run;
    private string? _sessionId;
    private bool _connectStarted;
    private string? _transport;
    private NegotiateResponse? _session;

    // A session negotiated by an attempt that then could not open any transport: the next attempt tries it first, so
    // that a client that keeps failing to connect holds one session on the server, not one per attempt.
    private NegotiateResponse? _unconnected;
    private bool _pendingSessionReset;
    private int _disposed;
    private int _closeStarted;
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _disposeDone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // The channel whose event (StateChanged, MessagesDropped) this flow is raising, if any: a close or dispose called
    // from the handler (or from work it starts and waits for) cannot wait for the close, which goes on only once the
    // handler has returned. An async local, not a thread static: code that a handler resumes inline on its thread (a
    // continuation of other code) runs in its own context and waits as usual.
    private static readonly AsyncLocal<PushChannel?> s_raising = new();
    private readonly CancellationTokenSource _lifetime = new();

    // Taken once: usable after _lifetime is disposed (a connect that finishes after DisposeAsync still reads it).
    private readonly CancellationToken _lifetimeToken;

    // State changes not yet reported, in the order they happened (queued under _gate), and whether a thread is
    // reporting them: a handler that changes the state again (CloseAsync from a Connected handler) has its change
    // reported after the current one, to every subscriber, rather than nested inside it.
    private readonly Queue<PushChannelStateChangedEventArgs> _pendingChanges = new();
    private bool _reporting;
    private readonly ResiliencePipeline _reconnect;

    // Numbers the attempts of the reconnect under way, for the log (one run loop at a time uses it).
    private int _reconnectAttempt;

    public PushChannel(PushClientOptions options, ILoggerFactory loggerFactory)
    {
        // A snapshot: the builder (or the DI options) may go on being changed, or build other channels.
        options = options.Clone();
        options.Validate();
        _options = options;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger("PushKit.Client.PushChannel");
        _handler = options.HttpMessageHandlerFactory?.Invoke() ?? new SocketsHttpHandler();
        _http = new HttpClient(_handler, disposeHandler: false)
        {
            // SSE streams and long-polls are long-lived; every request has its own cancellation instead.
            Timeout = Timeout.InfiniteTimeSpan,
        };

        // The WebSocket handshake goes through the same connection pool, so it reuses the connection the negotiate
        // request left idle instead of opening a second one (and leaving the first idle on the server).
        _invoker = new HttpMessageInvoker(_handler, disposeHandler: false);
        _inbound = new ReceiveQueue(options.ReceiveQueueCapacity);
        _reconnect = options.ReconnectPipeline ?? CreateDefaultReconnectPipeline(options);
        _lifetimeToken = _lifetime.Token;
    }

    public event EventHandler<PushChannelStateChangedEventArgs>? StateChanged;

    /// <summary>The channel's own copy of its options (tests).</summary>
    internal PushClientOptions Options => _options;

    public event EventHandler<PushMessagesDroppedEventArgs>? MessagesDropped;

    public string? SessionId => Volatile.Read(ref _sessionId);

    public PushChannelState State
    {
        get
        {
            lock (_gate)
            {
                return _state;
            }
        }
    }

    public string? Transport
    {
        get
        {
            lock (_gate)
            {
                return _transport;
            }
        }
    }

    public async Task ConnectAsync(CancellationToken cancellationToken = default)
    {
        string? previous;
        PushChannelState before;
        lock (_gate)
        {
            if (_state == PushChannelState.Closed)
            {
                throw new PushChannelClosedException("The channel is closed; create a new one to connect again.", _closedWith);
            }

            if (_connectStarted)
            {
                throw new InvalidOperationException(
                    _state == PushChannelState.Connecting
                        ? "ConnectAsync is already in progress on this channel."
                        : $"ConnectAsync was called already and the channel is {_state}: it reconnects by itself. Call ConnectAsync again only once it is Disconnected.");
            }

            // Connecting from here, under the lock: a concurrent ConnectAsync sees it and is refused.
            _connectStarted = true;
            before = _state;
            _state = PushChannelState.Connecting;
            _pendingChanges.Enqueue(new PushChannelStateChangedEventArgs(before, PushChannelState.Connecting, null, null, null, false));
            previous = _session?.SessionId;

            if (_inbound.IsCompleted)
            {
                // The channel gave its session up and ReadAllAsync ended: the next session gets a new queue, which
                // starts with whatever the old one still held (received and acknowledged, but not yet read).
                var fresh = new ReceiveQueue(_options.ReceiveQueueCapacity);
                _inbound.MoveRemainingTo(fresh);
                Volatile.Write(ref _inbound, fresh);
            }
        }

        ReportStateChanges();
        IPushTransportConnection connection;
        string reason;
        try
        {
            // CloseAsync and DisposeAsync stop a connect in progress too.
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetimeToken);
            (connection, reason) = await OpenAttemptAsync(resume: false, linked.Token).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // The channel stays usable: ConnectAsync may be called again (a DI singleton must not be stuck).
            if ((ex is OperationCanceledException && cancellationToken.IsCancellationRequested) || State == PushChannelState.Closed)
            {
                Log.ConnectCancelled(_logger, _options.Url);
            }
            else
            {
                Log.ConnectFailed(_logger, _options.Url, ex.Message);
            }

            SetState(PushChannelState.Disconnected, null, ex.Message, ex, connectAgain: true);
            if (State == PushChannelState.Closed && !cancellationToken.IsCancellationRequested && ex is not PushChannelClosedException)
            {
                throw new PushChannelClosedException("The channel was closed while connecting.", PushCloseCode.Normal, ex);
            }

            throw;
        }

        // Connected before the connection's run starts: a connection that ends at once then moves the channel on from
        // Connected, rather than being overwritten by it.
        // The run is published first, so that a close made while Connected is reported (a Connected handler's) waits for it.
        var runStarted = new TaskCompletionSource<Task>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            _run = runStarted.Task.Unwrap();
        }

        bool connected;
        if (previous is null)
        {
            connected = SetState(PushChannelState.Connected, null, reason, null);
        }
        else
        {
            // The channel had given its session up (Disconnected): this is a new session, and the application must
            // know that what the old one had not delivered is gone.
            connected = SetState(
                PushChannelState.Connected,
                null,
                $"Not resumed: session {previous} was given up when the channel went Disconnected; started session {SessionId}. Messages sent to the old session and not yet received are lost. {reason}",
                null,
                sessionReset: true);
        }

        // Closed just as the connection opened: the run tells the server (the engine is shut down) and lets go of it.
        runStarted.SetResult(RunLoopAsync(connection));
        if (!connected)
        {
            throw new PushChannelClosedException("The channel was closed while connecting.", PushCloseCode.Normal);
        }
    }

    /// <summary>
    /// One attempt, bounded by <see cref="PushClientOptions.ConnectTimeout"/>, to open a connection: for the current
    /// session when <paramref name="resume"/> is set, falling back to a new session when the server no longer has it.
    /// </summary>
    private async Task<(IPushTransportConnection Connection, string Reason)> OpenAttemptAsync(bool resume, CancellationToken cancellationToken)
    {
        using var timeout = new CancellationTokenSource(_options.ConnectTimeout, _options.TimeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            if (resume && _session is { } session)
            {
                try
                {
                    var (connection, reason) = await OpenTransportsAsync(session, resume, linked.Token).ConfigureAwait(false);
                    return (connection, "Resumed: " + reason);
                }
                catch (PushConnectException ex) when (ex.ErrorCode == PushErrorCodes.SessionNotFound)
                {
                    // The server no longer has the session (expired, or the server restarted): start a new one.
                    Log.SessionNotResumed(_logger, session.SessionId, ex.Message);
                    var (connection, reason) = await StartNewSessionAsync(resume, linked.Token).ConfigureAwait(false);
                    _pendingSessionReset = true;
                    return (connection, $"Not resumed: session {session.SessionId} is gone on the server ({PushErrorCodes.SessionNotFound}); started session {SessionId}. Messages sent to the old session and not yet received are lost. {reason}");
                }
            }

            return await StartNewSessionAsync(resume, linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new PushConnectException($"Connecting to {_options.Url} did not complete within {_options.ConnectTimeout} (PushClientOptions.ConnectTimeout).", ex);
        }
        catch (OperationCanceledException ex) when (!linked.IsCancellationRequested)
        {
            // Not this attempt's cancellation (an HttpClient's own timeout, say): a failure like any other, so that a
            // reconnect retries it rather than taking it for the channel's cancellation and giving up.
            throw new PushConnectException($"Connecting to {_options.Url} failed: {ex.Message}", ex);
        }
    }

    /// <summary>Negotiates a new session, moves any unacknowledged sends over to it, and opens a transport.</summary>
    /// <param name="reconnecting">Part of a reconnect attempt, which logs its own failure (see <see cref="OpenTransportsAsync"/>).</param>
    /// <param name="cancellationToken">Ends the attempt.</param>
    private async Task<(IPushTransportConnection Connection, string Reason)> StartNewSessionAsync(bool reconnecting, CancellationToken cancellationToken)
    {
        if (State == PushChannelState.Closed)
        {
            throw new PushChannelClosedException("The channel was closed while connecting.", PushCloseCode.Normal);
        }

        var negotiated = Interlocked.Exchange(ref _unconnected, null);
        var reused = negotiated is not null;
        negotiated ??= await NegotiateAsync(cancellationToken).ConfigureAwait(false);

        // Closed while negotiating: the new session is not connected to (the server lets it expire unused).
        if (State == PushChannelState.Closed)
        {
            throw new PushChannelClosedException("The channel was closed while connecting.", PushCloseCode.Normal);
        }

        var inbound = Volatile.Read(ref _inbound);
        var engine = new DeliveryEngine("Session " + negotiated.SessionId, negotiated.Limits.MaxMessageBytes, inbound.WriteAsync, _logger)
        {
            Heartbeat = new HeartbeatSettings(
                TimeSpan.FromMilliseconds(HeartbeatIntervalMs(negotiated.Heartbeat)),
                TimeSpan.FromMilliseconds(HeartbeatTimeoutMs(negotiated.Heartbeat)),
                _options.TimeProvider,
                randomPhase: true),
            Limits = new BufferLimits(_options.MaxBufferedMessages, _options.MaxBufferedBytes, _options.BufferFullPolicy),
            OnMessagesDropped = RaiseMessagesDropped,

            // Received messages go straight into the receive queue while it has room.
            TryDeliverInline = inbound.TryWrite,
        };
        IPushTransportConnection connection;
        string reason;
        try
        {
            (connection, reason) = await OpenTransportsAsync(negotiated, reconnecting, cancellationToken).ConfigureAwait(false);
        }
        catch (PushConnectException ex) when (reused && ex.ErrorCode == PushErrorCodes.SessionNotFound)
        {
            // The session left from an earlier attempt has expired meanwhile: negotiate afresh, in this attempt.
            return await StartNewSessionAsync(reconnecting, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception) when (State != PushChannelState.Closed)
        {
            Volatile.Write(ref _unconnected, negotiated);
            throw;
        }

        DeliveryEngine? previous;
        bool closed;
        lock (_gate)
        {
            // Closed meanwhile: CloseAsync shut down the engine it found, so this one must not take its place.
            closed = _state == PushChannelState.Closed;
            previous = _engine;
            if (!closed)
            {
                _engine = engine;
                _session = negotiated;
            }
        }

        if (closed)
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw new PushChannelClosedException("The channel was closed while connecting.", PushCloseCode.Normal);
        }

        // Sends the old session never confirmed go to the new one, in order, with their message ids, so the server
        // can drop any it had already applied (see docs/reliability.md).
        if (previous is not null)
        {
            engine.Adopt(previous.Detach(new PushChannelClosedException("The session was replaced.")));
        }

        Volatile.Write(ref _sessionId, negotiated.SessionId);
        return (connection, reason);
    }

    /// <summary>Opens the first transport, in the client's order of preference, that the server offers and that works.</summary>
    /// <param name="session">The session to open a connection for.</param>
    /// <param name="reconnecting">
    /// Part of a reconnect attempt: each skipped transport is logged at Debug, because the attempt's failure is logged
    /// once, with every transport's reason (event 110); a server that stays away would otherwise add a line per
    /// transport per attempt at Information.
    /// </param>
    /// <param name="cancellationToken">Ends the attempt.</param>
    private async Task<(IPushTransportConnection Connection, string Reason)> OpenTransportsAsync(NegotiateResponse session, bool reconnecting, CancellationToken cancellationToken)
    {
        var skippedLevel = reconnecting ? LogLevel.Debug : LogLevel.Information;
        var context = new PushTransportContext
        {
            BaseUrl = _options.Url!,
            SessionId = session.SessionId,
            ResumeSecret = session.ResumeSecret,
            Options = _options,
            LoggerFactory = _loggerFactory,
            HttpClient = _http,
            Invoker = _invoker,
            AcksInPoll = session.LongPolling?.AcksInPoll == true,
        };

        var failures = new List<string>();
        var tried = 0;
        var notFound = 0;
        foreach (var transport in _options.Transports)
        {
            if (!session.Transports.Contains(transport.Name))
            {
                failures.Add($"{transport.Name}: not offered by the server");
                Log.TransportSkipped(_logger, skippedLevel, transport.Name, "not offered by the server");
                continue;
            }

            tried++;
            try
            {
                var connection = await transport.ConnectAsync(context, cancellationToken).ConfigureAwait(false);
                lock (_gate)
                {
                    _transport = transport.Name;
                }

                Log.Connected(_logger, session.SessionId, transport.Name);
                var reason = failures.Count == 0
                    ? $"Connected over {transport.Name}."
                    : $"Connected over {transport.Name}; skipped {string.Join("; ", failures)}.";
                return (connection, reason);
            }
            catch (Exception ex) when (ex is PushConnectException or HttpRequestException or IOException or System.Net.Sockets.SocketException or System.Net.WebSockets.WebSocketException or PushProtocolException)
            {
                if (ex is PushConnectException { ErrorCode: PushErrorCodes.SessionNotFound })
                {
                    notFound++;
                }

                failures.Add($"{transport.Name}: {ex.Message}");
                Log.TransportSkipped(_logger, skippedLevel, transport.Name, ex.Message);
            }
        }

        if (tried > 0 && notFound == tried)
        {
            // Every transport got the same answer from PushKit: say it once, not once per transport.
            throw new PushConnectException(
                $"The server at {_options.Url} no longer has session {session.SessionId}: every transport tried was refused with {PushErrorCodes.SessionNotFound}.",
                404,
                PushErrorCodes.SessionNotFound);
        }

        throw new PushConnectException(
            $"No transport could connect to {_options.Url}. Tried: {string.Join("; ", failures.Select(f => f.TrimEnd('.')))}. The server offers: {(session.Transports.Count == 0 ? "none" : string.Join(", ", session.Transports))}.",
            null,
            null);
    }

    private async Task<NegotiateResponse> NegotiateAsync(CancellationToken cancellationToken)
    {
        var url = new UriBuilder(_options.Url!);
        url.Scheme = url.Scheme switch { "ws" => "http", "wss" => "https", var s => s };
        url.Path = url.Path.TrimEnd('/') + "/negotiate";
        using var request = new HttpRequestMessage(HttpMethod.Post, url.Uri)
        {
            Content = new StringContent(
                $"{{\"protocolVersion\":{PushProtocol.Version},\"maxMessageBytes\":{_options.MaxMessageBytes}}}", Encoding.UTF8, "application/json"),
        };
        foreach (var (name, value) in _options.Headers)
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }

        if (await _options.GetAccessTokenAsync(cancellationToken).ConfigureAwait(false) is { } token)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }

        HttpResponseMessage response;
        try
        {
            // Headers first: the body is read below, bounded, whatever its status (a huge or endless body costs nothing).
            response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException ex)
        {
            throw new PushConnectException($"Negotiation with {url.Uri} failed: {ex.Message.TrimEnd('.')}.{NegotiateFailureHint(ex)}", ex);
        }

        using (response)
        {
            if (!response.IsSuccessStatusCode)
            {
                throw await Http.HttpTransportHelpers.ToExceptionAsync(response, $"Negotiation with {url.Uri}", cancellationToken).ConfigureAwait(false);
            }

            var body = await Http.HttpTransportHelpers.ReadAtMostAsync(response.Content, MaxNegotiateResponseBytes, cancellationToken).ConfigureAwait(false)
                ?? throw new PushConnectException($"The negotiate response from {url.Uri} is larger than {MaxNegotiateResponseBytes / 1024} KiB; a PushKit server's is under 1 KiB.", (int)response.StatusCode, null);

            NegotiateResponse? negotiated;
            try
            {
                negotiated = JsonSerializer.Deserialize(body, ProtocolJsonContext.Default.NegotiateResponse);
            }
            catch (JsonException ex)
            {
                throw new PushConnectException(NotNegotiate(url.Uri, response, $"it is not valid JSON ({ex.Message})"), (int)response.StatusCode, null, ex);
            }

            if (negotiated is null || string.IsNullOrEmpty(negotiated.SessionId) || string.IsNullOrEmpty(negotiated.ResumeSecret) || negotiated.Transports is null)
            {
                throw new PushConnectException(NotNegotiate(url.Uri, response, "it lacks a session id, a resume secret or the list of transports"), (int)response.StatusCode, null);
            }

            if (negotiated.ProtocolVersion != PushProtocol.Version)
            {
                throw new PushConnectException(
                    $"The server speaks protocol version {negotiated.ProtocolVersion}; this client speaks {PushProtocol.Version}.",
                    (int)response.StatusCode,
                    PushErrorCodes.UnsupportedProtocolVersion);
            }

            negotiated.Limits ??= new();
            negotiated.Heartbeat ??= new();
            negotiated.LongPolling ??= new();
            if (negotiated.Limits.MaxMessageBytes <= 0)
            {
                negotiated.Limits.MaxMessageBytes = PushProtocol.DefaultMaxMessageBytes;
            }

            return negotiated;
        }
    }

    // What a new user most often needs to hear after a failed negotiate request.
    private static string NegotiateFailureHint(HttpRequestException ex)
    {
        if (ex.InnerException is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.ConnectionRefused })
        {
            return " Is the server running, and listening at that address and port?";
        }

        var innermost = ex.GetBaseException();
        return innermost != ex && !ex.Message.Contains(innermost.Message, StringComparison.Ordinal) ? $" ({innermost.Message})" : "";
    }

    // Something other than PushKit answered with success: usually an app's catch-all route (a single-page app's
    // fallback page) at a path where MapPushKit is not.
    private static string NotNegotiate(Uri url, HttpResponseMessage response, string why) =>
        $"{url} answered HTTP {(int)response.StatusCode} {response.Content.Headers.ContentType?.MediaType ?? "without a content type"}, " +
        $"not a PushKit negotiate response: {why}. Check that the channel's URL has the path the server passes to MapPushKit (for example \"/push\").";

    /// <summary>
    /// Carries the session over one connection after another: when a connection is lost, reconnects through the
    /// reconnect pipeline (resuming the session, or starting a new one when the server lost it), until the channel
    /// is closed, the server ends the session, or the pipeline gives up.
    /// </summary>
    private async Task RunLoopAsync(IPushTransportConnection connection)
    {
        var lifetime = _lifetimeToken;
        var connectedAt = _options.TimeProvider.GetTimestamp();
        var shortLived = 0;
        while (true)
        {
            DeliveryEngine engine;
            lock (_gate)
            {
                engine = _engine!;
            }

            ConnectionEnd end;
            await using (connection.ConfigureAwait(false))
            {
                end = await engine.RunAsync(connection, lifetime).ConfigureAwait(false);
            }

            lock (_gate)
            {
                _transport = null;
            }

            Log.ConnectionEnded(_logger, SessionId, end.Kind, end.Code, end.Reason);
            if (lifetime.IsCancellationRequested || State == PushChannelState.Closed)
            {
                return;
            }

            var reason = end.Reason ?? end.Kind.ToString();
            var how = end.Code is { } code ? $"{end.Kind}, {code}" : end.Kind.ToString();
            if (IsFinal(end) || !_options.AutoReconnect)
            {
                var finalState = IsFinal(end) ? PushChannelState.Closed : PushChannelState.Disconnected;
                Finish(finalState, end.Code, reason, new PushChannelClosedException($"The connection ended ({how}): {reason}", end.Code, end.Error));
                return;
            }

            SetState(PushChannelState.Reconnecting, end.Code, $"Connection lost ({how}): {reason}", end.Error);

            // A connection that dies soon after opening, again and again, must not turn into a reconnect storm:
            // such losses back off too, before the pipeline's own (immediate) first attempt.
            shortLived = _options.TimeProvider.GetElapsedTime(connectedAt) < s_shortLived ? shortLived + 1 : 0;
            string openedReason;
            try
            {
                if (end.RetryAfterMs is { } retryAfter and > 0)
                {
                    // The server said when to come back (shutdown, overload): honour it before the first attempt, up to
                    // a ceiling, so that a server (or whatever answers in its place) cannot park the client for weeks.
                    var wait = Math.Min(retryAfter, Math.Max(_options.MaxReconnectDelay.TotalMilliseconds, MaxRetryAfter.TotalMilliseconds));
                    await Task.Delay(TimeSpan.FromMilliseconds(wait), _options.TimeProvider, lifetime).ConfigureAwait(false);
                }
                else if (shortLived > 1)
                {
                    await Task.Delay(ShortLivedBackoff(shortLived), _options.TimeProvider, lifetime).ConfigureAwait(false);
                }

                _reconnectAttempt = 0;
                (connection, openedReason) = await _reconnect.ExecuteAsync(
                    static async (state, token) => await state.ReconnectAttemptAsync(token).ConfigureAwait(false),
                    this,
                    lifetime).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (lifetime.IsCancellationRequested)
            {
                return;
            }
            catch (Exception) when (State == PushChannelState.Closed)
            {
                // Closed by the application while reconnecting: nothing gave up.
                return;
            }
            catch (Exception ex)
            {
                Log.ReconnectGaveUp(_logger, SessionId, ex.Message);
                Finish(PushChannelState.Disconnected, end.Code, $"Reconnecting gave up: {ex.Message}", ex);
                return;
            }

            connectedAt = _options.TimeProvider.GetTimestamp();
            var reset = _pendingSessionReset;
            _pendingSessionReset = false;
            SetState(PushChannelState.Connected, null, openedReason, null, reset);
        }
    }

    /// <summary>
    /// One attempt of the reconnect pipeline. Its failure is logged once, numbered, with every transport's reason: with
    /// any pipeline (the application's own included), a server that stays away shows as one line per attempt.
    /// </summary>
    private async Task<(IPushTransportConnection Connection, string Reason)> ReconnectAttemptAsync(CancellationToken cancellationToken)
    {
        var attempt = ++_reconnectAttempt;
        try
        {
            return await OpenAttemptAsync(resume: true, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (!cancellationToken.IsCancellationRequested && State != PushChannelState.Closed)
        {
            Log.ReconnectAttemptFailed(_logger, SessionId, attempt, ex.Message);
            throw;
        }
    }

    /// <summary>
    /// The server's heartbeat interval, kept between 100 ms and an hour: a tiny one made the client flood pings (or, below
    /// 2 ms, stopped its checks altogether), a huge one broke the timer.
    /// </summary>
    internal static long HeartbeatIntervalMs(NegotiateHeartbeat heartbeat) =>
        heartbeat.IntervalMs > 0 ? Math.Clamp(heartbeat.IntervalMs, MinHeartbeatIntervalMs, MaxHeartbeatIntervalMs) : 15_000;

    /// <summary>The server's heartbeat timeout, at most two hours and always more than 1.5 intervals (as the server requires).</summary>
    internal static long HeartbeatTimeoutMs(NegotiateHeartbeat heartbeat)
    {
        var interval = HeartbeatIntervalMs(heartbeat);
        var timeout = heartbeat.TimeoutMs > 0 ? Math.Min(heartbeat.TimeoutMs, 2 * MaxHeartbeatIntervalMs) : 30_000;
        return timeout > interval + (interval / 2) ? timeout : 2 * interval;
    }

    /// <summary>Exponential, jittered delay for the n-th connection in a row that died young.</summary>
    private TimeSpan ShortLivedBackoff(int count)
    {
        var ceiling = Math.Min(_options.MaxReconnectDelay.TotalMilliseconds, _options.ReconnectDelay.TotalMilliseconds * Math.Pow(2, Math.Min(count - 1, 16)));
        return TimeSpan.FromMilliseconds(ceiling * (0.5 + (Random.Shared.NextDouble() / 2)));
    }

    /// <summary>
    /// Whether a connection's end also ends the channel: the server closed the session (a <c>close</c> frame with 1000),
    /// or another client took it (4409, also the long-polling 409). A bare WebSocket Close 1000 without the frame, as
    /// a proxy or load balancer closing an idle socket sends, is a lost connection (protocol §9.1): the client resumes.
    /// </summary>
    private static bool IsFinal(ConnectionEnd end) =>
        end.Kind == ConnectionEndKind.ClosedByPeer
        && (end.Code is PushCloseCode.Superseded or PushCloseCode.Unauthorized || (end.Code == PushCloseCode.Normal && end.FromFrame));

    /// <summary>
    /// Ends the session for this channel: sends still waiting fail, <see cref="ReadAllAsync"/> ends once it has read
    /// what was received. In <see cref="PushChannelState.Disconnected"/> the channel may connect again, to a new
    /// session (ConnectAsync then gives it a new receive queue, starting with what this one still holds).
    /// </summary>
    private void Finish(PushChannelState state, PushCloseCode? code, string reason, Exception error)
    {
        DeliveryEngine? engine;
        lock (_gate)
        {
            engine = _engine;
        }

        engine?.Shutdown(code ?? PushCloseCode.Normal, reason, error as PushChannelClosedException ?? new PushChannelClosedException(reason, code, error));
        Volatile.Read(ref _inbound).Complete();
        SetState(state, code, reason, error, connectAgain: state == PushChannelState.Disconnected);
    }

    internal static ResiliencePipeline CreateDefaultReconnectPipeline(PushClientOptions options)
    {
        var builder = new ResiliencePipelineBuilder { TimeProvider = options.TimeProvider };
        if (options.MaxReconnectAttempts > 0)
        {
            builder.AddRetry(new RetryStrategyOptions
            {
                // Not retried: a cancellation, and the channel's own close (a reconnect that finds the channel closed).
                ShouldHandle = new PredicateBuilder().Handle<Exception>(ex => ex is not (OperationCanceledException or PushChannelClosedException)),
                BackoffType = DelayBackoffType.Exponential,
                UseJitter = true,
                Delay = options.ReconnectDelay,
                MaxDelay = options.MaxReconnectDelay,
                MaxRetryAttempts = options.MaxReconnectAttempts,
            });
        }

        return builder.Build();
    }

    public async ValueTask SendAsync(PushMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        DeliveryEngine engine;
        lock (_gate)
        {
            engine = _engine ?? throw (_state == PushChannelState.Closed
                ? new PushChannelClosedException("The channel is closed.", _closedWith)
                : new InvalidOperationException(_state == PushChannelState.Connecting
                    ? "The channel is still connecting: wait for ConnectAsync to complete before sending."
                    : "The channel is not connected: call ConnectAsync first."));
        }

        if (_options.AssignMessageIds && message.Id is null)
        {
            message = message.WithId(NewMessageId());
        }

        var acknowledged = (await engine.EnqueueAsync(message, trackAck: true, cancellationToken).ConfigureAwait(false))!;
        try
        {
            await acknowledged.WaitAsync(_options.AckTimeout, _options.TimeProvider, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException ex)
        {
            AckWait.ObserveLateFailure(acknowledged);
            throw new PushAckTimeoutException(
                $"The server did not acknowledge the message within {_options.AckTimeout}. It stays queued and may still be delivered.", ex);
        }
        catch (OperationCanceledException)
        {
            AckWait.ObserveLateFailure(acknowledged);
            throw;
        }
    }

    public IAsyncEnumerable<PushMessage> ReadAllAsync(CancellationToken cancellationToken = default) =>
        Volatile.Read(ref _inbound).ReadAllAsync(cancellationToken);

    public async Task CloseAsync(CancellationToken cancellationToken = default)
    {
        // The first call closes; every call (a second close, a close after DisposeAsync, a close racing a dispose)
        // waits for that one close to finish, and only its own token can cut its wait short.
        StartClose();
        if (s_raising.Value == this)
        {
            // Called from a handler of this channel's own event (or work it started): the close reports Closed and
            // waits for the connection the handler may be holding up, so it finishes only once the handler returns.
            // Waiting for it here would wait for itself.
            return;
        }

        try
        {
            await _closed.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The caller abandons the graceful close: the connection is aborted now instead of after its grace period.
            try
            {
                await _lifetime.CancelAsync().ConfigureAwait(false);
            }
            catch (ObjectDisposedException)
            {
                // Disposed meanwhile: the close has finished, and nothing is left to abort.
            }

            throw;
        }
    }

    private async Task CloseCoreAsync()
    {
        Exception? failure = null;
        try
        {
            DeliveryEngine? engine;
            Task? run;
            bool changed;
            PushChannelState before;
            lock (_gate)
            {
                // Closed and the engine taken at once: a session that starts after this does not install its engine.
                engine = _engine;
                run = _run;
                before = _state;
                changed = _state != PushChannelState.Closed;
                if (changed)
                {
                    _pendingChanges.Enqueue(new PushChannelStateChangedEventArgs(_state, PushChannelState.Closed, PushCloseCode.Normal, "Closed by the application.", null, false));
                    _state = PushChannelState.Closed;
                }
            }

            // Shut down before the change is reported: a send from a Closed handler is refused, not sent.
            engine?.Shutdown(PushCloseCode.Normal, "The client closed the channel.", new PushChannelClosedException("The channel was closed by the application.", PushCloseCode.Normal));
            ReportStateChanges();

            if (before is PushChannelState.Connecting)
            {
                // The first connect has no session on the server to tell: stop it now, rather than let it negotiate
                // after the close. (A reconnect resumes a session the server still holds: it gets the grace below, so
                // that the resumed connection carries the close to the server; it starts no new session meanwhile.)
                await _lifetime.CancelAsync().ConfigureAwait(false);
            }
            else
            {
                // A live connection first gets its close frame out (the engine's grace period).
                _lifetime.CancelAfter(TimeSpan.FromSeconds(2));
            }
            if (run is not null)
            {
                try
                {
                    await run.WaitAsync(s_closeWait, _options.TimeProvider).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    Log.CloseTimedOut(_logger, SessionId);
                }
            }

            await _lifetime.CancelAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            failure = ex;
        }

        // ReadAllAsync has ended by the time any CloseAsync returns.
        Volatile.Read(ref _inbound).Complete();
        if (failure is null)
        {
            _closed.TrySetResult();
        }
        else
        {
            _closed.TrySetException(failure);
        }
    }

    /// <summary>
    /// For a container disposed synchronously: closes the channel as <see cref="DisposeAsync"/> does, and waits for it
    /// (except from a handler of the channel's own events, as for <see cref="CloseAsync"/>).
    /// </summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    public async ValueTask DisposeAsync()
    {
        // The first call disposes; every call waits for that one disposal, as every CloseAsync waits for the one close.
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            _ = DisposeCoreAsync();
        }

        if (s_raising.Value == this)
        {
            // From a handler of this channel's own event: the close goes on once the handler returns (see CloseAsync),
            // and the disposal after it.
            return;
        }

        await _disposeDone.Task.ConfigureAwait(false);
    }

    private async Task DisposeCoreAsync()
    {
        Exception? failure = null;
        try
        {
            StartClose();
            await _closed.Task.ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            failure = ex;
        }

        // Everything is disposed before any DisposeAsync returns.
        try
        {
            _http.Dispose();
            _invoker.Dispose();
            _handler.Dispose();
            _lifetime.Dispose();
        }
        catch (Exception ex)
        {
            failure ??= ex;
        }

        if (failure is null)
        {
            _disposeDone.TrySetResult();
        }
        else
        {
            _disposeDone.TrySetException(failure);
        }
    }

    /// <summary>Marks the flow as raising a channel's own event until disposed (see <c>s_raising</c>).</summary>
    private readonly struct RaisingScope : IDisposable
    {
        private readonly PushChannel? _outer;

        public RaisingScope(PushChannel channel)
        {
            _outer = s_raising.Value;
            s_raising.Value = channel;
        }

        public void Dispose() => s_raising.Value = _outer;
    }

    private void StartClose()
    {
        if (Interlocked.Exchange(ref _closeStarted, 1) == 0)
        {
            _ = CloseCoreAsync();
        }
    }

    private static string NewMessageId()
    {
        Span<byte> bytes = stackalloc byte[12];
        System.Security.Cryptography.RandomNumberGenerator.Fill(bytes);
        return Convert.ToBase64String(bytes).Replace('+', '-').Replace('/', '_');
    }

    // connectAgain: the change ends this channel's connecting (Disconnected), and ConnectAsync may be called again.
    // It is set with the state, under the same lock, so that no ConnectAsync can start in between.
    // Returns whether the channel is in <paramref name="state"/> now (false when it was Closed first).
    private bool SetState(PushChannelState state, PushCloseCode? code, string? reason, Exception? exception, bool sessionReset = false, bool connectAgain = false)
    {
        PushChannelState previous;
        lock (_gate)
        {
            previous = _state;
            if (previous == PushChannelState.Closed)
            {
                return state == PushChannelState.Closed;
            }

            if (connectAgain)
            {
                _connectStarted = false;
            }

            if (previous == state)
            {
                return true;
            }

            _state = state;
            if (state == PushChannelState.Closed)
            {
                // What ended the channel, for the exceptions of later calls (the application's close or dispose: 1000).
                _closedWith = code ?? PushCloseCode.Normal;
            }

            // Queued under the lock that made the change, so changes are reported in the order they happened.
            _pendingChanges.Enqueue(new PushChannelStateChangedEventArgs(previous, state, code, reason, exception, sessionReset));
        }

        ReportStateChanges();
        return true;
    }

    /// <summary>
    /// Reports the queued state changes, one at a time and in order. A change made by a handler (or by another thread
    /// while one is being reported) is reported by the thread already reporting, once the current one is done.
    /// </summary>
    private void ReportStateChanges()
    {
        while (true)
        {
            PushChannelStateChangedEventArgs change;
            lock (_gate)
            {
                if (_reporting || !_pendingChanges.TryDequeue(out change!))
                {
                    return;
                }

                _reporting = true;
            }

            try
            {
                Log.StateChanged(_logger, SessionId, change.PreviousState, change.CurrentState, change.Reason);
                using (new RaisingScope(this))
                {
                    StateChanged?.Invoke(this, change);
                }
            }
            catch (Exception ex)
            {
                // The application's handler is not the channel's business: it must not leave a live connection marked
                // Disconnected (its exception would reach ConnectAsync's failure path) or stop a run loop.
                Log.StateHandlerFailed(_logger, SessionId, change.CurrentState, ex);
            }
            finally
            {
                lock (_gate)
                {
                    _reporting = false;
                }
            }
        }
    }

    private ValueTask RaiseMessagesDropped(long count, CancellationToken cancellationToken)
    {
        // Each subscriber on its own: one that throws must not keep the gap from the others. As for StateChanged, the
        // application's handler must not end the connection either, which would only bring the same skip back on the
        // next one, and the next.
        using (new RaisingScope(this))
        {
            EventHandlers.RaiseEach(MessagesDropped, this, new PushMessagesDroppedEventArgs(count), ex => Log.MessagesDroppedHandlerFailed(_logger, SessionId, count, ex));
        }

        return default;
    }

    private static partial class Log
    {
        [LoggerMessage(111, LogLevel.Error, "Session {SessionId}: a MessagesDropped handler threw (for {Count} missing messages); the channel carries on")]
        public static partial void MessagesDroppedHandlerFailed(ILogger logger, string? sessionId, long count, Exception exception);

        [LoggerMessage(100, LogLevel.Information, "Session {SessionId} connected over {Transport}")]
        public static partial void Connected(ILogger logger, string sessionId, string transport);

        [LoggerMessage(EventId = 101, Message = "Transport {Transport} skipped: {Reason}")]
        public static partial void TransportSkipped(ILogger logger, LogLevel level, string transport, string reason);

        [LoggerMessage(110, LogLevel.Information, "Session {SessionId}: reconnect attempt {Attempt} failed: {Reason}")]
        public static partial void ReconnectAttemptFailed(ILogger logger, string? sessionId, int attempt, string reason);

        [LoggerMessage(102, LogLevel.Warning, "Connecting to {Url} failed: {Reason}")]
        public static partial void ConnectFailed(ILogger logger, Uri? url, string reason);

        [LoggerMessage(103, LogLevel.Information, "Session {SessionId}: connection ended ({Kind}, {CloseCode}, {Reason})")]
        public static partial void ConnectionEnded(ILogger logger, string? sessionId, ConnectionEndKind kind, PushCloseCode? closeCode, string? reason);

        [LoggerMessage(104, LogLevel.Debug, "Session {SessionId}: state {Previous} -> {Current} ({Reason})")]
        public static partial void StateChanged(ILogger logger, string? sessionId, PushChannelState previous, PushChannelState current, string? reason);

        [LoggerMessage(105, LogLevel.Warning, "Session {SessionId}: the connection did not close in time; it was aborted")]
        public static partial void CloseTimedOut(ILogger logger, string? sessionId);

        [LoggerMessage(106, LogLevel.Warning, "Session {SessionId} could not be resumed ({Reason}); starting a new session")]
        public static partial void SessionNotResumed(ILogger logger, string sessionId, string reason);

        [LoggerMessage(107, LogLevel.Error, "Session {SessionId}: reconnecting gave up: {Reason}")]
        public static partial void ReconnectGaveUp(ILogger logger, string? sessionId, string reason);

        [LoggerMessage(109, LogLevel.Debug, "Connecting to {Url} was cancelled (by the caller's token, or by closing the channel)")]
        public static partial void ConnectCancelled(ILogger logger, Uri? url);

        [LoggerMessage(108, LogLevel.Error, "Session {SessionId}: a StateChanged handler threw on the change to {State}; the channel carries on")]
        public static partial void StateHandlerFailed(ILogger logger, string? sessionId, PushChannelState state, Exception exception);
    }
}
