namespace PushKit.Delivery;

internal enum ConnectionEndKind
{
    /// <summary>The peer closed the connection (close frame or transport close).</summary>
    ClosedByPeer,

    /// <summary>This side closed it (application close, superseded, protocol error, shutdown).</summary>
    ClosedLocally,

    /// <summary>The connection failed (network error, abort, cancellation).</summary>
    Lost,
}

/// <summary>How one connection of a session ended.</summary>
/// <param name="Kind">Who ended it, or that it failed.</param>
/// <param name="Code">The close code, when there was one.</param>
/// <param name="Reason">The close reason or the failure's message.</param>
/// <param name="RetryAfterMs">The peer's reconnect hint, from its close frame.</param>
/// <param name="Error">The failure, when the connection was lost to one.</param>
/// <param name="FromFrame">
/// The peer closed with a PushKit <c>close</c> frame, not only at the transport level. Only such a close can end a
/// session: a WebSocket Close without a status (1005, a browser's <c>ws.close()</c>) reaches .NET as 1000, so a
/// WebSocket status of 1000 alone cannot be told from a close that must leave the session resumable.
/// </param>
/// <param name="CloseAnswered">
/// This side sent a close and the peer closed the connection after it: the close reached the peer. (Without an answer
/// it may not have: an HTTP transport's peer never answers, and a cut connection cannot.)
/// </param>
internal sealed record ConnectionEnd(ConnectionEndKind Kind, PushCloseCode? Code, string? Reason, int? RetryAfterMs = null, Exception? Error = null, bool FromFrame = false, bool CloseAnswered = false)
{
    public override string ToString() => $"{Kind} {Code?.ToString() ?? "-"} {Reason}";
}
