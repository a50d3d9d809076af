namespace PushKit.Server;

/// <summary>
/// Handles what clients do. Derive from it, override what you need, and register it with
/// <c>AddPushKit().AddHandler&lt;T&gt;()</c>; an instance is resolved from a new DI scope for each call.
/// </summary>
/// <remarks>
/// Messages from one session are handled one at a time, in order. A message is acknowledged to the client when
/// every handler has returned; an exception from a handler is logged, the handlers registered after it still run,
/// and the message still counts as delivered (it is not redelivered, so one bad message cannot block a session; the
/// client's send succeeds). The same holds when the handlers cannot be created for a call (a constructor or one of
/// their dependencies throws) or their scope fails to dispose: that is logged (event 26), no handler gets that call
/// if creating them failed, and the session carries on over the same connection.
/// </remarks>
public abstract class PushHandler
{
    /// <summary>Called when a session connects for the first time.</summary>
    /// <remarks>
    /// The connection already carries the session during the call: messages sent to <paramref name="session"/> go out
    /// at once, so the handler can await an acknowledged <see cref="IPushChannel.SendAsync"/> (a welcome, the history).
    /// The client's messages are handled only after the call has returned (or thrown: an exception is logged, and the
    /// session goes on); if the call closed the session, they are not handed over. While they wait, the connection
    /// queues 64 of them and then stops reading, unless something sent to the session awaits the client's
    /// acknowledgement: then it reads on, to reach that acknowledgement, queuing up to
    /// <c>MaxBufferedMessagesPerSession</c> and <c>MaxBufferedBytesPerSession</c> of the client's messages.
    /// </remarks>
    /// <param name="session">The session; its <see cref="IPushChannel.Transport"/> names the transport of that first connection.</param>
    /// <param name="cancellationToken">
    /// Signals that the session ended (closed by either side, or expired). A lost or superseded connection does not
    /// cancel it: the session goes on, and what the handler sends reaches the client's next connection.
    /// </param>
    public virtual ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken) => default;

    /// <summary>Called for each message a client sends, in order, once.</summary>
    /// <remarks>
    /// When the connection ends during the call, <paramref name="cancellationToken"/> is cancelled. A call that then
    /// throws <see cref="OperationCanceledException"/> does not count: the client replays the message after it
    /// reconnects, and it is handled again. A call that returns counts, as does one that throws for another reason.
    /// Make handlers that do external work idempotent if they can be interrupted half-way.
    /// </remarks>
    /// <param name="session">The sending session.</param>
    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">Signals that the connection ended.</param>
    public virtual ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken) => default;

    /// <summary>
    /// Called once when a session ends: closed by either side, or expired after the resume window. Not called for the
    /// sessions still alive when the host stops (they end with the process).
    /// </summary>
    /// <param name="session">The session.</param>
    /// <param name="closeCode">Why it ended.</param>
    public virtual ValueTask OnSessionEndedAsync(IPushSession session, PushCloseCode closeCode) => default;
}
