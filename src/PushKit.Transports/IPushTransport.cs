using Microsoft.Extensions.Logging;
using PushKit.Connections;
using PushKit.Protocol;

namespace PushKit.Client;

/// <summary>
/// A client transport: opens a <see cref="IPushTransportConnection"/> for a negotiated session. The built-in
/// transports are on <see cref="PushTransports"/>; implement this to carry PushKit over something else.
/// </summary>
public interface IPushTransport
{
    /// <summary>The transport's name as the server lists it in the negotiate response (for example <c>websocket</c>).</summary>
    string Name { get; }

    /// <summary>Opens a connection for the session described by <paramref name="context"/>.</summary>
    /// <param name="context">The negotiated session and the client's options.</param>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    /// <exception cref="PushConnectException">The server refused or the connection could not be opened.</exception>
    ValueTask<IPushTransportConnection> ConnectAsync(PushTransportContext context, CancellationToken cancellationToken = default);
}

/// <summary>What a transport needs to open a connection for a negotiated session.</summary>
public sealed class PushTransportContext
{
    /// <summary>The server's PushKit base URL.</summary>
    public required Uri BaseUrl { get; init; }

    /// <summary>The session id.</summary>
    public required string SessionId { get; init; }

    /// <summary>The session's resume secret.</summary>
    public required string ResumeSecret { get; init; }

    /// <summary>The client's options.</summary>
    public required PushClientOptions Options { get; init; }

    /// <summary>For the transport's logs.</summary>
    public required ILoggerFactory LoggerFactory { get; init; }

    /// <summary>The channel's HTTP client (no overall timeout: streams and polls are long-lived) for HTTP transports.</summary>
    public required HttpClient HttpClient { get; init; }

    /// <summary>
    /// The same connection pool as <see cref="HttpClient"/>, without what <see cref="System.Net.Http.HttpClient"/> adds to
    /// each request (a linked cancellation source, buffering the response): for
    /// <see cref="System.Net.WebSockets.ClientWebSocket"/>, whose handshake through it reuses the connection the
    /// negotiate request left idle, and for the HTTP transports' POSTs and polls.
    /// </summary>
    internal HttpMessageInvoker? Invoker { get; init; }

    /// <summary>Whether the server reads acks carried by long-polling requests (negotiated: <c>longPolling.acksInPoll</c>).</summary>
    internal bool AcksInPoll { get; init; }

    /// <summary>
    /// The URL of a PushKit endpoint under the base URL, with the session id added to the base URL's query string. The
    /// secret is not in it: send it in the <see cref="PushProtocol.SecretHeader"/> header.
    /// </summary>
    /// <param name="path">The endpoint, for example <c>ws</c>.</param>
    /// <param name="webSocket">Use the ws/wss scheme instead of http/https.</param>
    public Uri GetEndpointUrl(string path, bool webSocket)
    {
        ArgumentNullException.ThrowIfNull(path);
        var builder = new UriBuilder(BaseUrl);
        builder.Scheme = (builder.Scheme, webSocket) switch
        {
            ("http" or "ws", true) => "ws",
            ("https" or "wss", true) => "wss",
            ("ws" or "http", false) => "http",
            _ => "https",
        };
        builder.Path = builder.Path.TrimEnd('/') + "/" + path;
        // The secret travels in the PushKit-Secret header (see ApplySecret), not in the URL, which ends up in logs. A
        // query the base URL carries (a tenant, a key) is kept, as negotiate keeps it: the session id is added to it.
        var session = $"{PushProtocol.Query.SessionId}={Uri.EscapeDataString(SessionId)}";
        builder.Query = builder.Query.Length > 1 ? builder.Query[1..] + "&" + session : session;
        return builder.Uri;
    }
}

/// <summary>The built-in client transports.</summary>
public static class PushTransports
{
    /// <summary>WebSocket (<see cref="System.Net.WebSockets.ClientWebSocket"/>): full duplex, the fastest transport.</summary>
    public static IPushTransport WebSocket { get; } = new WebSockets.WebSocketPushTransport();

    /// <summary>Server-Sent Events downstream and HTTP POST upstream: works where WebSockets are blocked.</summary>
    public static IPushTransport ServerSentEvents { get; } = new Http.SsePushTransport();

    /// <summary>HTTP long-polling downstream and HTTP POST upstream: works through proxies that buffer streamed responses.</summary>
    public static IPushTransport LongPolling { get; } = new Http.LongPollingPushTransport();
}

/// <summary>
/// Connecting failed: negotiation was refused, no transport is shared with the server, or the transport could not
/// be opened. <see cref="StatusCode"/> and <see cref="ErrorCode"/> say why when the server answered.
/// </summary>
public sealed class PushConnectException : PushException
{
    /// <summary>Creates the exception.</summary>
    public PushConnectException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public PushConnectException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public PushConnectException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception with the server's answer.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="statusCode">The HTTP status the server answered, if any.</param>
    /// <param name="errorCode">The PushKit error code (see <see cref="PushErrorCodes"/>), if any.</param>
    /// <param name="innerException">The cause, if any.</param>
    public PushConnectException(string message, int? statusCode, string? errorCode, Exception? innerException = null)
        : base(message, innerException)
    {
        StatusCode = statusCode;
        ErrorCode = errorCode;
    }

    /// <summary>The HTTP status the server answered, if any.</summary>
    public int? StatusCode { get; }

    /// <summary>The PushKit error code (see <see cref="PushErrorCodes"/>), if any.</summary>
    public string? ErrorCode { get; }
}
