namespace PushKit.Protocol;

/// <summary>Constants of the PushKit wire protocol (see <c>docs/protocol.md</c>).</summary>
public static class PushProtocol
{
    /// <summary>The protocol version this library speaks: 1.</summary>
    public const int Version = 1;

    /// <summary>The default limit on one encoded frame or batch, in bytes: 1 MiB.</summary>
    public const int DefaultMaxMessageBytes = 1024 * 1024;

    /// <summary>Transport names as they appear in the negotiate response.</summary>
    public static class Transports
    {
        /// <summary>WebSocket: full duplex, one endpoint (<c>GET {base}/ws</c>).</summary>
        public const string WebSocket = "websocket";

        /// <summary>Server-Sent Events downstream, HTTP POST upstream.</summary>
        public const string ServerSentEvents = "sse";

        /// <summary>HTTP long-polling downstream, HTTP POST upstream.</summary>
        public const string LongPolling = "longpolling";
    }

    /// <summary>
    /// The request header that may carry the resume secret instead of the query string (clients that can set headers
    /// should: URLs end up in logs). Browsers' WebSocket and EventSource cannot, so the query parameter remains.
    /// </summary>
    public const string SecretHeader = "PushKit-Secret";

    /// <summary>Query-string parameter names of the connection endpoints.</summary>
    public static class Query
    {
        /// <summary>The session id.</summary>
        public const string SessionId = "session";

        /// <summary>The session's resume secret.</summary>
        public const string Secret = "secret";
    }
}

/// <summary>
/// The error codes PushKit puts in HTTP error bodies (<c>{"error":{"code":…,"message":…}}</c>) and in
/// <c>error</c> frames. Each is documented in <c>docs/protocol.md</c>.
/// </summary>
public static class PushErrorCodes
{
    /// <summary>The request body or query is missing or malformed.</summary>
    public const string InvalidRequest = "invalid_request";

    /// <summary>The client asked for a protocol version the server does not speak.</summary>
    public const string UnsupportedProtocolVersion = "unsupported_protocol_version";

    /// <summary>No session has that id (never existed, expired or closed).</summary>
    public const string SessionNotFound = "session_not_found";

    /// <summary>The resume secret does not match the session, or the caller is not the session's user.</summary>
    public const string InvalidSessionSecret = "invalid_session_secret";

    /// <summary>The WebSocket endpoint was called without a WebSocket upgrade.</summary>
    public const string WebSocketRequired = "websocket_required";

    /// <summary>The requested transport is not enabled on this server.</summary>
    public const string TransportNotEnabled = "transport_not_enabled";

    /// <summary>A frame's <c>type</c> is not one this peer knows; the frame was ignored.</summary>
    public const string UnknownFrameType = "unknown_frame_type";

    /// <summary>A frame is not valid JSON or lacks a required field.</summary>
    public const string MalformedFrame = "malformed_frame";

    /// <summary>A frame or body exceeds the size limit.</summary>
    public const string MessageTooBig = "message_too_big";

    /// <summary>A newer long-poll for the same session took over; this one is answered and should not be repeated.</summary>
    public const string PollSuperseded = "poll_superseded";

    /// <summary>A POST to <c>{base}/send</c> arrived while the session has no open SSE or long-polling connection.</summary>
    public const string NoOpenConnection = "no_open_connection";

    /// <summary>
    /// More <c>POST {base}/send</c> requests are outstanding for the connection than the server tolerates; send the next
    /// one after the previous one was answered. Nothing of the refused body was read or applied.
    /// </summary>
    public const string SendInProgress = "send_in_progress";
}
