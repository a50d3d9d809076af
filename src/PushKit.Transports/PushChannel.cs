using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PushKit.Connections;
using PushKit.Delivery;
using PushKit.Protocol;

namespace PushKit.Client;

/// <summary>The client's <see cref="IPushChannel"/>: negotiates a session, opens a transport, runs the delivery engine.</summary>
internal sealed partial class PushChannel : IPushChannel
{
    private static readonly TimeSpan s_closeWait = TimeSpan.FromSeconds(5);

    private readonly PushClientOptions _options;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;
    private readonly HttpClient _http;
    private readonly Channel<PushMessage> _inbound;
    private readonly object _gate = new();
    private PushChannelState _state = PushChannelState.Disconnected;
    private DeliveryEngine? _engine;
    private Task? _run;
    private string? _sessionId;
    private bool _connectStarted;
    private string? _transport;

    public PushChannel(PushClientOptions options, ILoggerFactory loggerFactory)
    {
        options.Validate();
        _options = options;
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger("PushKit.Client.PushChannel");
        _http = new HttpClient(options.HttpMessageHandlerFactory?.Invoke() ?? new SocketsHttpHandler(), disposeHandler: true)
        {
            // SSE streams and long-polls are long-lived; every request has its own cancellation instead.
            Timeout = Timeout.InfiniteTimeSpan,
        };
        _inbound = Channel.CreateBounded<PushMessage>(new BoundedChannelOptions(options.ReceiveQueueCapacity) { SingleWriter = true });
    }

    public event EventHandler<PushChannelStateChangedEventArgs>? StateChanged;

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
        lock (_gate)
        {
            if (_state == PushChannelState.Closed)
            {
                throw new PushChannelClosedException("The channel is closed; create a new one to connect again.");
            }

            if (_connectStarted)
            {
                throw new InvalidOperationException("ConnectAsync was called already; a channel connects once.");
            }

            _connectStarted = true;
        }

        SetState(PushChannelState.Connecting, null, null, null);
        try
        {
            using var timeout = new CancellationTokenSource(_options.ConnectTimeout, _options.TimeProvider);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
            try
            {
                await ConnectCoreAsync(linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException ex) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                throw new PushConnectException($"Connecting to {_options.Url} did not complete within {_options.ConnectTimeout}.", ex);
            }
        }
        catch (Exception ex)
        {
            Log.ConnectFailed(_logger, _options.Url, ex.Message);
            _inbound.Writer.TryComplete();
            SetState(PushChannelState.Disconnected, null, ex.Message, ex);
            throw;
        }
    }

    private async Task ConnectCoreAsync(CancellationToken cancellationToken)
    {
        var negotiated = await NegotiateAsync(cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _sessionId, negotiated.SessionId);
        var context = new PushTransportContext
        {
            BaseUrl = _options.Url!,
            SessionId = negotiated.SessionId,
            ResumeSecret = negotiated.ResumeSecret,
            Options = _options,
            LoggerFactory = _loggerFactory,
            HttpClient = _http,
        };

        var failures = new List<string>();
        foreach (var transport in _options.Transports)
        {
            if (!negotiated.Transports.Contains(transport.Name))
            {
                failures.Add($"{transport.Name}: not offered by the server");
                Log.TransportSkipped(_logger, transport.Name, "not offered by the server");
                continue;
            }

            IPushTransportConnection connection;
            try
            {
                connection = await transport.ConnectAsync(context, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is PushConnectException or HttpRequestException or IOException or System.Net.WebSockets.WebSocketException)
            {
                failures.Add($"{transport.Name}: {ex.Message}");
                Log.TransportSkipped(_logger, transport.Name, ex.Message);
                continue;
            }

            var engine = new DeliveryEngine("client " + negotiated.SessionId, negotiated.Limits.MaxMessageBytes, DeliverAsync, _logger);
            lock (_gate)
            {
                _engine = engine;
                _transport = transport.Name;
            }

            Log.Connected(_logger, negotiated.SessionId, transport.Name);
            _run = RunAsync(engine, connection);
            var reason = failures.Count == 0
                ? $"Connected over {transport.Name}."
                : $"Connected over {transport.Name}; skipped {string.Join("; ", failures)}.";
            SetState(PushChannelState.Connected, null, reason, null);
            return;
        }

        throw new PushConnectException(
            $"No transport could connect to {_options.Url}. Tried: {string.Join("; ", failures)}.",
            null,
            failures.Count > 0 && failures.TrueForAll(f => f.Contains(PushErrorCodes.SessionNotFound, StringComparison.Ordinal)) ? PushErrorCodes.SessionNotFound : null);
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

        if (_options.AccessTokenProvider is { } tokens && await tokens(cancellationToken).ConfigureAwait(false) is { Length: > 0 } token)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }

        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException ex)
        {
            throw new PushConnectException($"Negotiation with {url.Uri} failed: {ex.Message}", ex);
        }

        using (response)
        {
            var body = await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                string? code = null, message = null;
                try
                {
                    var error = JsonSerializer.Deserialize(body, ProtocolJsonContext.Default.ErrorResponse);
                    code = error?.Error.Code;
                    message = error?.Error.Message;
                }
                catch (JsonException)
                {
                    // Not a PushKit error body (a proxy's page, for example): report the status alone.
                }

                throw new PushConnectException(
                    $"Negotiation with {url.Uri} was refused: HTTP {(int)response.StatusCode}{(code is null ? "" : $" {code}: {message}")}",
                    (int)response.StatusCode,
                    code);
            }

            NegotiateResponse? negotiated;
            try
            {
                negotiated = JsonSerializer.Deserialize(body, ProtocolJsonContext.Default.NegotiateResponse);
            }
            catch (JsonException ex)
            {
                throw new PushConnectException($"The negotiate response from {url.Uri} is not valid JSON: {ex.Message}", ex);
            }

            if (negotiated is null || negotiated.SessionId.Length == 0 || negotiated.ResumeSecret.Length == 0)
            {
                throw new PushConnectException($"The negotiate response from {url.Uri} lacks a session id or resume secret.");
            }

            if (negotiated.ProtocolVersion != PushProtocol.Version)
            {
                throw new PushConnectException(
                    $"The server speaks protocol version {negotiated.ProtocolVersion}; this client speaks {PushProtocol.Version}.",
                    (int)response.StatusCode,
                    PushErrorCodes.UnsupportedProtocolVersion);
            }

            if (negotiated.Limits.MaxMessageBytes <= 0)
            {
                negotiated.Limits.MaxMessageBytes = PushProtocol.DefaultMaxMessageBytes;
            }

            return negotiated;
        }
    }

    private async Task RunAsync(DeliveryEngine engine, IPushTransportConnection connection)
    {
        ConnectionEnd end;
        await using (connection.ConfigureAwait(false))
        {
            end = await engine.RunAsync(connection).ConfigureAwait(false);
        }

        Log.ConnectionEnded(_logger, SessionId, end.Kind, end.Code, end.Reason);
        lock (_gate)
        {
            _transport = null;
        }

        // Resuming after a lost connection is not implemented yet: the channel ends with the connection, and any
        // unacknowledged send fails with the reason.
        var finalState = end.Kind == ConnectionEndKind.Lost ? PushChannelState.Disconnected : PushChannelState.Closed;
        var reason = end.Reason ?? end.Kind.ToString();
        var how = end.Code is { } code ? $"{end.Kind}, {code}" : end.Kind.ToString();
        engine.Shutdown(end.Code ?? PushCloseCode.Normal, reason, new PushChannelClosedException($"The connection ended ({how}): {reason}", end.Code, end.Error));
        _inbound.Writer.TryComplete();
        SetState(finalState, end.Code, reason, end.Error);
    }

    public async ValueTask SendAsync(PushMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        DeliveryEngine engine;
        lock (_gate)
        {
            engine = _engine ?? throw (_state == PushChannelState.Closed
                ? new PushChannelClosedException("The channel is closed.")
                : new InvalidOperationException("The channel is not connected: call ConnectAsync first."));
        }

        var acknowledged = engine.Enqueue(message, trackAck: true)!;
        try
        {
            await acknowledged.WaitAsync(_options.AckTimeout, _options.TimeProvider, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException ex)
        {
            throw new PushAckTimeoutException(
                $"The server did not acknowledge the message within {_options.AckTimeout}. It stays queued and may still be delivered.", ex);
        }
    }

    public async IAsyncEnumerable<PushMessage> ReadAllAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (await _inbound.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
        {
            while (_inbound.Reader.TryRead(out var message))
            {
                yield return message;
            }
        }
    }

    public async Task CloseAsync(CancellationToken cancellationToken = default)
    {
        DeliveryEngine? engine;
        Task? run;
        lock (_gate)
        {
            engine = _engine;
            run = _run;
        }

        engine?.Shutdown(PushCloseCode.Normal, "The client closed the channel.", new PushChannelClosedException("The channel was closed by the application.", PushCloseCode.Normal));
        if (run is not null)
        {
            try
            {
                await run.WaitAsync(s_closeWait, _options.TimeProvider, cancellationToken).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                Log.CloseTimedOut(_logger, SessionId);
            }
        }

        _inbound.Writer.TryComplete();
        SetState(PushChannelState.Closed, PushCloseCode.Normal, "Closed by the application.", null);
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await CloseAsync().ConfigureAwait(false);
        }
        finally
        {
            _http.Dispose();
        }
    }

    private async ValueTask DeliverAsync(PushMessage message, CancellationToken cancellationToken) =>
        await _inbound.Writer.WriteAsync(message, cancellationToken).ConfigureAwait(false);

    private void SetState(PushChannelState state, PushCloseCode? code, string? reason, Exception? exception)
    {
        PushChannelState previous;
        lock (_gate)
        {
            previous = _state;
            if (previous == state || previous == PushChannelState.Closed)
            {
                return;
            }

            _state = state;
        }

        Log.StateChanged(_logger, SessionId, previous, state, reason);
        StateChanged?.Invoke(this, new PushChannelStateChangedEventArgs(previous, state, code, reason, exception));
    }

    private static partial class Log
    {
        [LoggerMessage(100, LogLevel.Information, "Session {SessionId} connected over {Transport}")]
        public static partial void Connected(ILogger logger, string sessionId, string transport);

        [LoggerMessage(101, LogLevel.Information, "Transport {Transport} skipped: {Reason}")]
        public static partial void TransportSkipped(ILogger logger, string transport, string reason);

        [LoggerMessage(102, LogLevel.Warning, "Connecting to {Url} failed: {Reason}")]
        public static partial void ConnectFailed(ILogger logger, Uri? url, string reason);

        [LoggerMessage(103, LogLevel.Information, "Session {SessionId}: connection ended ({Kind}, {CloseCode}, {Reason})")]
        public static partial void ConnectionEnded(ILogger logger, string? sessionId, ConnectionEndKind kind, PushCloseCode? closeCode, string? reason);

        [LoggerMessage(104, LogLevel.Debug, "Session {SessionId}: state {Previous} -> {Current} ({Reason})")]
        public static partial void StateChanged(ILogger logger, string? sessionId, PushChannelState previous, PushChannelState current, string? reason);

        [LoggerMessage(105, LogLevel.Warning, "Session {SessionId}: the connection did not close in time; it was aborted")]
        public static partial void CloseTimedOut(ILogger logger, string? sessionId);
    }
}
