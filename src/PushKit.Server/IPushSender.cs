namespace PushKit.Server;

/// <summary>
/// Sends messages to clients from anywhere in server code (controllers, minimal APIs, background services).
/// </summary>
/// <remarks>
/// The methods return once the message is queued in each target session; delivery then follows the session's
/// guarantees (acknowledged, in order, exactly once, replayed after a reconnect within the resume window).
/// To wait for a client's acknowledgement, use <see cref="IPushChannel.SendAsync"/> on the session
/// (<see cref="IPushSessionRegistry.FindSession"/>).
/// </remarks>
public interface IPushSender
{
    /// <summary>Queues <paramref name="message"/> for one session.</summary>
    /// <param name="sessionId">The public session id.</param>
    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">
    /// Cancels the operation: a token cancelled before the call queues nothing; one cancelled while a session's buffer
    /// is full under <see cref="PushBufferFullPolicy.Wait"/> stops the wait for room.
    /// </param>
    /// <returns>True when the session exists and accepted the message; false when no session has that id.</returns>
    /// <exception cref="PushMessageTooLargeException">The message exceeds the session's limit: <see cref="PushKitServerOptions.MaxMessageBytes"/>, or less if its client negotiated less.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled before the message was queued.</exception>
    ValueTask<bool> SendToSessionAsync(string sessionId, PushMessage message, CancellationToken cancellationToken = default);

    /// <summary>Queues <paramref name="message"/> for every session of one user.</summary>
    /// <param name="userId">The user id (see <see cref="PushKitServerOptions.UserIdProvider"/>).</param>
    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">
    /// Cancels the operation: a token cancelled before the call queues nothing; one cancelled while a session's buffer
    /// is full under <see cref="PushBufferFullPolicy.Wait"/> stops the wait for room.
    /// </param>
    /// <returns>The number of sessions that accepted the message.</returns>
    /// <exception cref="PushMessageTooLargeException">The message exceeds <see cref="PushKitServerOptions.MaxMessageBytes"/>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled before the message was queued in every session.</exception>
    ValueTask<int> SendToUserAsync(string userId, PushMessage message, CancellationToken cancellationToken = default);

    /// <summary>Queues <paramref name="message"/> for every session. The message is encoded once for all recipients.</summary>
    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">
    /// Cancels the operation: a token cancelled before the call queues nothing; one cancelled while a session's buffer
    /// is full under <see cref="PushBufferFullPolicy.Wait"/> stops the wait for room.
    /// </param>
    /// <returns>The number of sessions that accepted the message.</returns>
    /// <exception cref="PushMessageTooLargeException">The message exceeds <see cref="PushKitServerOptions.MaxMessageBytes"/>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled before the message was queued in every session.</exception>
    ValueTask<int> BroadcastAsync(PushMessage message, CancellationToken cancellationToken = default);
}
