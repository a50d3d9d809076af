namespace PushKit;

/// <summary>What a session end does when its buffer of unacknowledged outbound messages is full.</summary>
public enum PushBufferFullPolicy
{
    /// <summary>The send waits until the peer acknowledges enough to make room (backpressure on the sender).</summary>
    Wait = 0,

    /// <summary>
    /// The oldest unacknowledged messages are dropped to make room; the receiver is told how many it will never get
    /// (<see cref="IPushChannel.MessagesDropped"/>) and sends waiting for them fail with <see cref="PushMessageDroppedException"/>.
    /// </summary>
    DropOldest = 1,

    /// <summary>
    /// On the client, the send that does not fit fails with <see cref="PushBufferFullException"/>, nothing is queued,
    /// and the channel carries on. On the server the session is ended with <see cref="PushCloseCode.Overloaded"/>
    /// (4429): a waiting <c>IPushSession.SendAsync</c> fails with <see cref="PushChannelClosedException"/> (its
    /// <see cref="PushChannelClosedException.CloseCode"/> is <see cref="PushCloseCode.Overloaded"/>), <c>IPushSender</c>
    /// leaves the session out, and the client starts a new session and is told so.
    /// </summary>
    Disconnect = 2,
}

/// <summary>Tells the receiving application that the sender dropped messages it will never receive (a gap).</summary>
public sealed class PushMessagesDroppedEventArgs : EventArgs
{
    /// <summary>Creates the event arguments.</summary>
    /// <param name="count">How many messages were dropped.</param>
    public PushMessagesDroppedEventArgs(long count) => Count = count;

    /// <summary>How many messages were dropped.</summary>
    public long Count { get; }
}
