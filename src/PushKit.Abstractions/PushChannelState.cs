namespace PushKit;

/// <summary>The states of an <see cref="IPushChannel"/>.</summary>
public enum PushChannelState
{
    /// <summary>
    /// Not connected, and not trying: not yet started, the first connect failed, the reconnect pipeline gave up, or the
    /// connection was lost with automatic reconnect off. <see cref="IPushChannel.ConnectAsync"/> may be called again;
    /// after giving up or a lost connection it starts a new session.
    /// </summary>
    Disconnected = 0,

    /// <summary>Negotiating and opening the first connection.</summary>
    Connecting = 1,

    /// <summary>A connection is open; messages flow.</summary>
    Connected = 2,

    /// <summary>The connection was lost and a new one is being opened for the same session.</summary>
    Reconnecting = 3,

    /// <summary>Closed for good (closed by the application, the peer, or the session ended). Terminal.</summary>
    Closed = 4,
}

/// <summary>Describes a change of <see cref="IPushChannel.State"/>.</summary>
public sealed class PushChannelStateChangedEventArgs : EventArgs
{
    /// <summary>Creates the event arguments.</summary>
    /// <param name="previousState">The state before the change.</param>
    /// <param name="currentState">The state after the change.</param>
    /// <param name="closeCode">The close code that caused the change, if any.</param>
    /// <param name="reason">A human-readable reason, if any.</param>
    /// <param name="exception">The error that caused the change, if any.</param>
    /// <param name="isSessionReset">Whether the channel continues on a new session because the old one could not be resumed.</param>
    public PushChannelStateChangedEventArgs(
        PushChannelState previousState,
        PushChannelState currentState,
        PushCloseCode? closeCode = null,
        string? reason = null,
        Exception? exception = null,
        bool isSessionReset = false)
    {
        IsSessionReset = isSessionReset;
        PreviousState = previousState;
        CurrentState = currentState;
        CloseCode = closeCode;
        Reason = reason;
        Exception = exception;
    }

    /// <summary>The state before the change.</summary>
    public PushChannelState PreviousState { get; }

    /// <summary>The state after the change.</summary>
    public PushChannelState CurrentState { get; }

    /// <summary>The close code that caused the change (for example <see cref="PushCloseCode.Superseded"/>), if any.</summary>
    public PushCloseCode? CloseCode { get; }

    /// <summary>A human-readable reason, if any.</summary>
    public string? Reason { get; }

    /// <summary>The error that caused the change, if any.</summary>
    public Exception? Exception { get; }

    /// <summary>
    /// True on a change to <see cref="PushChannelState.Connected"/> when the previous session could not be resumed
    /// (it expired, or the server lost it) and the channel started a new one: messages the peer sent to the old
    /// session that had not arrived are gone, so the application should assume a gap and catch up (reload state).
    /// The client's own unacknowledged sends are carried over to the new session.
    /// </summary>
    public bool IsSessionReset { get; }
}
