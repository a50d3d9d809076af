namespace PushKit;

/// <summary>
/// Why a connection or session was closed. The same numbers are used as the WebSocket close status and in
/// the <c>close</c> frame on every transport; see <c>docs/protocol.md</c>.
/// </summary>
public enum PushCloseCode
{
    /// <summary>Normal closure: the application closed the channel or the session.</summary>
    Normal = 1000,

    /// <summary>The server is shutting down; reconnect (after the retry hint, when one is given).</summary>
    GoingAway = 1001,

    /// <summary>The peer sent something that is not valid protocol (malformed JSON, a missing field, a sequence gap, an invalid ack).</summary>
    ProtocolError = 4400,

    /// <summary>The credentials do not match the session's user.</summary>
    Unauthorized = 4401,

    /// <summary>The session does not exist any more (expired or closed); start a new one.</summary>
    SessionNotFound = 4404,

    /// <summary>No heartbeat arrived within the timeout.</summary>
    HeartbeatTimeout = 4408,

    /// <summary>A newer connection took over this session; this connection is no longer used.</summary>
    Superseded = 4409,

    /// <summary>A frame exceeded the negotiated size limit.</summary>
    MessageTooBig = 4413,

    /// <summary>The server is overloaded or the peer consumes too slowly; reconnect later.</summary>
    Overloaded = 4429,

    /// <summary>An unexpected server error.</summary>
    ServerError = 4500,
}
