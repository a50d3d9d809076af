namespace PushKit;

/// <summary>
/// A resumable, bidirectional, acknowledged message channel between one client and the server. The .NET client
/// and the server-side view of a connected client present this same API.
/// </summary>
/// <remarks>
/// Messages are delivered to the receiving application exactly once and in the order of the sender's
/// <see cref="SendAsync"/> calls. <see cref="SendAsync"/> completes when the peer has acknowledged the message.
/// </remarks>
public interface IPushChannel : IAsyncDisposable
{
    /// <summary>The public id of the session this channel carries; null before the first negotiation.</summary>
    string? SessionId { get; }

    /// <summary>The transport of the live connection (for example <c>websocket</c>, <c>sse</c>, <c>longpolling</c>); null when not connected.</summary>
    string? Transport { get; }

    /// <summary>The current state.</summary>
    PushChannelState State { get; }

    /// <summary>
    /// Raised after <see cref="State"/> changes, with the reason. Handlers run synchronously: keep them short. Changes
    /// are reported one at a time, to every handler, in the order they happened: a change made while another is being
    /// reported (by a handler that closes the channel, say) is reported once that one is done.
    /// </summary>
    event EventHandler<PushChannelStateChangedEventArgs>? StateChanged;

    /// <summary>
    /// Raised when the peer dropped messages this side will never receive (its buffer was full under
    /// <see cref="PushBufferFullPolicy.DropOldest"/>). Messages after the gap still arrive in order.
    /// </summary>
    /// <remarks>
    /// Raised from the delivery loop, in order with the messages: keep handlers short. An exception from a handler is
    /// logged and changes nothing else. On a server session it is raised after the start handlers have returned, so a
    /// handler that subscribes in <c>PushHandler.OnSessionStartedAsync</c> misses nothing.
    /// </remarks>
    event EventHandler<PushMessagesDroppedEventArgs>? MessagesDropped;

    /// <summary>
    /// Negotiates a session and opens a connection. Completes when the channel is <see cref="PushChannelState.Connected"/>.
    /// On a server-side session this completes at once, or throws <see cref="PushChannelClosedException"/> once the
    /// session has ended.
    /// </summary>
    /// <remarks>
    /// A client channel may call it again whenever it is <see cref="PushChannelState.Disconnected"/>: after a failed
    /// first attempt it tries again; after the reconnect pipeline gave up, or a lost connection with automatic reconnect
    /// off, it starts a new session, and the change to <see cref="PushChannelState.Connected"/> has
    /// <see cref="PushChannelStateChangedEventArgs.IsSessionReset"/> set.
    /// </remarks>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    /// <exception cref="PushException">Negotiation or the connection failed; the message says why.</exception>
    /// <exception cref="PushChannelClosedException">The channel is closed, or was closed (<see cref="CloseAsync"/>, disposal) before the connect completed.</exception>
    /// <exception cref="InvalidOperationException">The channel is connecting, connected or reconnecting already.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    Task ConnectAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Sends <paramref name="message"/> and completes when the peer has acknowledged it. Messages are sequenced in
    /// the order of the calls, so several sends may be in flight at once without awaiting each.
    /// </summary>
    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">Stops the wait for the acknowledgement; the message stays queued.</param>
    /// <exception cref="ArgumentNullException"><paramref name="message"/> is null.</exception>
    /// <exception cref="InvalidOperationException">A client channel that was never connected, or whose first <see cref="ConnectAsync"/> has not completed yet.</exception>
    /// <exception cref="PushAckTimeoutException">No acknowledgement arrived within the acknowledgement timeout.</exception>
    /// <exception cref="PushChannelClosedException">The channel is closed, or closed before the acknowledgement arrived.</exception>
    /// <exception cref="PushMessageTooLargeException">The encoded message exceeds the peer's size limit; nothing was sent.</exception>
    /// <exception cref="PushBufferFullException">The client's send buffer is full under <see cref="PushBufferFullPolicy.Disconnect"/>; nothing was queued.</exception>
    /// <exception cref="PushMessageDroppedException">The message was dropped to make room under <see cref="PushBufferFullPolicy.DropOldest"/>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled (the message stays queued).</exception>
    ValueTask SendAsync(PushMessage message, CancellationToken cancellationToken = default);

    /// <summary>
    /// Reads the messages the peer sends, in order, each exactly once. The sequence ends, once it has yielded what was
    /// received, when the channel closes or goes <see cref="PushChannelState.Disconnected"/> after a connection; after
    /// the next <see cref="ConnectAsync"/>, a new sequence yields what was received and not yet read, then the new
    /// session's messages. Read from one consumer at a time: concurrent readers share the messages between them.
    /// </summary>
    /// <param name="cancellationToken">Stops the enumeration.</param>
    IAsyncEnumerable<PushMessage> ReadAllAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Closes the channel and its session normally. Unacknowledged sends fail with <see cref="PushChannelClosedException"/>,
    /// and so does a <see cref="ConnectAsync"/> in progress; a reconnect in progress stops. Every call waits for the one
    /// close. On a client channel, a call from a handler of the channel's own events (<see cref="StateChanged"/>,
    /// <see cref="MessagesDropped"/>), or from work the handler starts, starts the close and returns without waiting: the
    /// close finishes only after the handler has returned.
    /// </summary>
    /// <param name="cancellationToken">Abandons a graceful close and aborts the connection.</param>
    Task CloseAsync(CancellationToken cancellationToken = default);
}
