using System.Net.WebSockets;
using Polly;
using PushKit.Protocol;

namespace PushKit.Client;

/// <summary>Options of a PushKit client channel.</summary>
public sealed class PushClientOptions
{
    private static readonly TimeSpan MaxAckDelay = TimeSpan.FromSeconds(1);

    // The longest timeout or delay: timers and Polly's delays stop well before 50 days, and a day is past any need.
    private static readonly TimeSpan MaxTimeout = TimeSpan.FromDays(1);

    /// <summary>
    /// The server's PushKit base URL, for example <c>https://example.com/push</c> (what the server passed to
    /// <c>MapPushKit</c>). Required. A query string it carries (<c>?tenant=acme</c>) goes on every request, with the
    /// session id added to it.
    /// </summary>
    public Uri? Url { get; set; }

    /// <summary>
    /// The transports to try, in order of preference; the first one that the server offers and that works is used.
    /// Default: WebSocket, then Server-Sent Events, then long-polling. Clear it and add to restrict or reorder.
    /// </summary>
    public IList<IPushTransport> Transports => _transports;

    private List<IPushTransport> _transports = [PushTransports.WebSocket, PushTransports.ServerSentEvents, PushTransports.LongPolling];

    /// <summary>
    /// How long an opened transport may take to show it really delivers (the WebSocket handshake, the SSE stream's
    /// first event, the first long-poll's answer) before the client moves on to the next transport. Default 5 seconds;
    /// positive, at most 1 day.
    /// </summary>
    public TimeSpan TransportDetectionTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>How long <see cref="IPushChannel.SendAsync"/> waits for the server's acknowledgement. Default 30 seconds; positive, at most 1 day.</summary>
    public TimeSpan AckTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Whether a lost connection is reopened automatically, resuming the session (default true). When false, a lost
    /// connection ends the channel in <see cref="PushChannelState.Disconnected"/> and unacknowledged sends fail.
    /// </summary>
    public bool AutoReconnect { get; set; } = true;

    /// <summary>
    /// The pipeline that drives reconnect attempts; each execution is one attempt to reopen the session (over any
    /// transport). Null for the default: retry with exponential backoff and jitter from <see cref="ReconnectDelay"/>
    /// up to <see cref="MaxReconnectDelay"/>, at most <see cref="MaxReconnectAttempts"/> attempts. A pipeline
    /// registered in DI under the key <c>"PushKit.Reconnect"</c> is used by <c>AddPushKitClient</c>.
    /// </summary>
    public ResiliencePipeline? ReconnectPipeline { get; set; }

    /// <summary>
    /// Whether a message sent without an <see cref="PushMessage.Id"/> gets a unique one, so that the server can
    /// recognise it if it is sent again after a lost session (idempotent sends). Default true.
    /// </summary>
    public bool AssignMessageIds { get; set; } = true;

    /// <summary>How many sent messages may wait for the server's acknowledgement (queued while reconnecting included). Default 10,000.</summary>
    /// <remarks>
    /// With <see cref="MaxBufferedBytes"/> it also bounds how many of the server's messages the channel queues for the
    /// application beyond its usual 64 while a send awaits the server's acknowledgement, which arrives behind them.
    /// </remarks>
    public int MaxBufferedMessages { get; set; } = 10_000;

    /// <summary>How many encoded bytes of sent messages may wait for the server's acknowledgement. Default 16 MiB.</summary>
    public long MaxBufferedBytes { get; set; } = 16 * 1024 * 1024;

    /// <summary>What <see cref="IPushChannel.SendAsync"/> does when the buffer is full. Default <see cref="PushBufferFullPolicy.Wait"/>: it waits for room.</summary>
    public PushBufferFullPolicy BufferFullPolicy { get; set; } = PushBufferFullPolicy.Wait;

    /// <summary>The base delay of the default reconnect backoff. Default 1 second.</summary>
    public TimeSpan ReconnectDelay { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>The longest delay between reconnect attempts of the default backoff. Default 30 seconds; at most 1 day.</summary>
    public TimeSpan MaxReconnectDelay { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How many failed reconnect attempts the default pipeline retries before giving up. Default: no limit (retry until closed).</summary>
    public int MaxReconnectAttempts { get; set; } = int.MaxValue;

    /// <summary>How long negotiation plus opening a transport may take (each reconnect attempt too). Default 15 seconds; positive, at most 1 day.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>The largest frame or batch accepted from the server. Default 1 MiB.</summary>
    public int MaxMessageBytes { get; set; } = PushProtocol.DefaultMaxMessageBytes;

    /// <summary>
    /// How many received messages may wait for <see cref="IPushChannel.ReadAllAsync"/>. When full, the server is slowed
    /// down (messages are acknowledged only when there is room). Default 1,024.
    /// </summary>
    public int ReceiveQueueCapacity { get; set; } = 1024;

    /// <summary>
    /// How long the client may hold back an acknowledgement that has nothing else to travel with, so that one
    /// acknowledgement covers everything that arrives meanwhile (as TCP's delayed ACK does). Null (the default) for the
    /// transport's own, 100 ms on every transport (on Server-Sent Events every acknowledgement is an HTTP request; on
    /// long-polling the acknowledgement rides on the next poll instead, at most one per delay).
    /// <see cref="TimeSpan.Zero"/> acknowledges every received batch at once. At most 1 second.
    /// </summary>
    /// <remarks>
    /// Acknowledgements are cumulative, so waiting loses nothing; fewer of them means less work for the server and
    /// fewer upstream packets. In exchange the server keeps each message a little longer: at most the delay, or 1,024
    /// messages, whichever comes first (a held acknowledgement that would cover 1,024 goes at once). Sends, pings and
    /// pongs never wait: an acknowledgement that can travel with them goes at once. Nor does a message that asks for its
    /// acknowledgement at once: the server asks for it when its <see cref="IPushChannel.SendAsync"/> awaits the
    /// acknowledgement, and for every message while its buffer of unacknowledged messages is half full.
    /// </remarks>
    public TimeSpan? AckDelay { get; set; }

    /// <summary>Supplies a bearer token sent as <c>Authorization: Bearer …</c> on every request; null for none.</summary>
    /// <remarks>
    /// Called for every request, with a token that ends with the connect attempt (<see cref="ConnectTimeout"/>
    /// included) or the request. A call that throws, or that outlives that token, fails the request with
    /// <see cref="PushConnectException"/> carrying its exception: <c>ConnectAsync</c> then fails, a reconnect attempt
    /// is retried, and a request of a live connection (an SSE or long-polling send or poll) costs that connection,
    /// which resumes.
    /// </remarks>
    public Func<CancellationToken, ValueTask<string?>>? AccessTokenProvider { get; set; }

    /// <summary>
    /// The bearer token for one request, or null for none: <see cref="AccessTokenProvider"/>'s answer, bounded by
    /// <paramref name="cancellationToken"/> even if the provider ignores it, and its failure wrapped in
    /// <see cref="PushConnectException"/> (an <see cref="OperationCanceledException"/> of its own included, such as an
    /// HttpClient timeout, which must not pass for the caller's cancellation).
    /// </summary>
    internal async ValueTask<string?> GetAccessTokenAsync(CancellationToken cancellationToken)
    {
        if (AccessTokenProvider is not { } provider)
        {
            return null;
        }

        try
        {
            var pending = provider(cancellationToken);
            var token = pending.IsCompletedSuccessfully
                ? pending.Result
                : await pending.AsTask().WaitAsync(cancellationToken).ConfigureAwait(false);
            return string.IsNullOrEmpty(token) ? null : token;
        }
        catch (Exception ex) when (!cancellationToken.IsCancellationRequested)
        {
            throw new PushConnectException($"PushClientOptions.AccessTokenProvider failed: {ex.GetType().Name}: {ex.Message}", ex);
        }
    }

    /// <summary>
    /// Headers sent on every request: negotiate, the WebSocket handshake, SSE streams, polls and sends. A name must be a
    /// valid HTTP header name that a request may carry (not a content header such as <c>Content-Type</c>), and a value
    /// visible ASCII, spaces and tabs: <c>Build()</c> refuses anything else.
    /// </summary>
    public IDictionary<string, string> Headers => _headers;

    private Dictionary<string, string> _headers = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// Creates the channel's HTTP handler, used for negotiation, the SSE and long-polling requests, the sends, and (when
    /// <see cref="ConfigureWebSocket"/> is null) the WebSocket handshake; null for a default <see cref="SocketsHttpHandler"/>.
    /// The channel owns and disposes it: return a new instance on each call.
    /// </summary>
    public Func<HttpMessageHandler>? HttpMessageHandlerFactory { get; set; }

    /// <summary>
    /// Adjusts each <see cref="ClientWebSocket"/>'s options (proxy, certificates, keep-alive) before it connects.
    /// </summary>
    /// <remarks>
    /// When this is null (the default), the WebSocket handshake goes through the channel's HTTP handler (see
    /// <see cref="HttpMessageHandlerFactory"/>), reusing the connection the negotiate request opened: one TCP connection
    /// per client. When it is set, the WebSocket opens a connection of its own so that the options set here apply.
    /// </remarks>
    public Action<ClientWebSocketOptions>? ConfigureWebSocket { get; set; }

    /// <summary>The clock for timeouts; <see cref="TimeProvider.System"/> by default (tests use a fake).</summary>
    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;

    /// <summary>Checks the options and lists every problem at once.</summary>
    /// <exception cref="ArgumentException">At least one option is invalid; the message lists them all.</exception>
    public void Validate()
    {
        var errors = Problems();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Invalid PushKit client options:" + Environment.NewLine + string.Join(Environment.NewLine, errors.Select(e => "- " + e)));
        }
    }

    /// <summary>
    /// A copy that shares nothing mutable with this instance: a channel keeps one, so that options changed after it
    /// was built (or changed for another channel built from the same builder) do not reach it.
    /// </summary>
    internal PushClientOptions Clone()
    {
        var copy = (PushClientOptions)MemberwiseClone();

        // The two collections are get-only, so MemberwiseClone shares them: give the copy its own.
        copy._transports = [.. Transports];
        copy._headers = new Dictionary<string, string>(Headers, StringComparer.OrdinalIgnoreCase);
        return copy;
    }

    /// <summary>
    /// Why a header cannot go on every request as it is, or null. HttpClient would drop it silently (its
    /// <c>TryAddWithoutValidation</c> returns false) and the WebSocket handshake would throw, after negotiating.
    /// </summary>
    private static string? HeaderProblem(string name, string? value)
    {
        if (value is null)
        {
            return "its value is null";
        }

        foreach (var c in value)
        {
            // Visible ASCII, space and tab (RFC 9110 field-value; HttpClient refuses anything else by default).
            if (c is not ('\t' or (>= ' ' and <= '~')))
            {
                return $"its value holds a character other than visible ASCII, space or tab (U+{(int)c:X4})";
            }
        }

        using var probe = new HttpRequestMessage();
        return probe.Headers.TryAddWithoutValidation(name, value)
            ? null
            : "its name is not a valid HTTP header name, or names a content header (such as Content-Type), which a request's headers cannot carry";
    }

    /// <summary>Every problem with the options, each a sentence that names the option; empty when they are valid.</summary>
    internal List<string> Problems()
    {
        var errors = new List<string>();
        if (Url is null)
        {
            errors.Add("PushClientOptions.Url is required (the server's PushKit base URL, for example https://example.com/push).");
        }
        else if (!Url.IsAbsoluteUri || Url.Scheme is not ("http" or "https" or "ws" or "wss"))
        {
            errors.Add($"PushClientOptions.Url must be an absolute http, https, ws or wss URL (was '{Url}').");
        }

        if (Transports.Count == 0)
        {
            errors.Add("PushClientOptions.Transports must name at least one transport.");
        }
        else if (Transports.Any(t => t is null || string.IsNullOrEmpty(t.Name)))
        {
            errors.Add("PushClientOptions.Transports must not hold a null entry, nor a transport without a Name.");
        }

        foreach (var (name, value) in Headers)
        {
            if (HeaderProblem(name, value) is { } problem)
            {
                errors.Add($"PushClientOptions.Headers['{name}'] cannot be sent: {problem}.");
            }
        }

        if (AckTimeout <= TimeSpan.Zero || AckTimeout > MaxTimeout)
        {
            errors.Add($"PushClientOptions.AckTimeout must be positive and at most 1 day (was {AckTimeout}).");
        }

        if (ConnectTimeout <= TimeSpan.Zero || ConnectTimeout > MaxTimeout)
        {
            errors.Add($"PushClientOptions.ConnectTimeout must be positive and at most 1 day (was {ConnectTimeout}).");
        }

        if (TransportDetectionTimeout <= TimeSpan.Zero || TransportDetectionTimeout > MaxTimeout)
        {
            errors.Add($"PushClientOptions.TransportDetectionTimeout must be positive and at most 1 day (was {TransportDetectionTimeout}).");
        }

        if (ReconnectDelay <= TimeSpan.Zero || MaxReconnectDelay < ReconnectDelay || MaxReconnectDelay > MaxTimeout)
        {
            errors.Add($"PushClientOptions.ReconnectDelay must be positive and at most MaxReconnectDelay, which must be at most 1 day (were {ReconnectDelay} and {MaxReconnectDelay}).");
        }

        if (MaxReconnectAttempts < 0)
        {
            errors.Add($"PushClientOptions.MaxReconnectAttempts must not be negative (was {MaxReconnectAttempts}).");
        }

        if (MaxBufferedMessages < 1 || MaxBufferedBytes < 1)
        {
            errors.Add($"PushClientOptions.MaxBufferedMessages and MaxBufferedBytes must be at least 1 (were {MaxBufferedMessages} and {MaxBufferedBytes}).");
        }

        if (MaxMessageBytes < 1024)
        {
            errors.Add($"PushClientOptions.MaxMessageBytes must be at least 1024 (was {MaxMessageBytes}).");
        }

        if (AckDelay is { } ackDelay && (ackDelay < TimeSpan.Zero || ackDelay > MaxAckDelay))
        {
            errors.Add($"PushClientOptions.AckDelay must be between zero and {MaxAckDelay.TotalSeconds:0} second, or null for the transport's default (was {ackDelay}).");
        }

        if (ReceiveQueueCapacity < 1)
        {
            errors.Add($"PushClientOptions.ReceiveQueueCapacity must be at least 1 (was {ReceiveQueueCapacity}).");
        }

        if (TimeProvider is null)
        {
            errors.Add("PushClientOptions.TimeProvider must not be null.");
        }

        return errors;
    }
}
