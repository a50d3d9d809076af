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
internal sealed record ConnectionEnd(ConnectionEndKind Kind, PushCloseCode? Code, string? Reason, int? RetryAfterMs = null, Exception? Error = null)
{
    public override string ToString() => $"{Kind} {Code?.ToString() ?? "-"} {Reason}";
}
