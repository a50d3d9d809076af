using Microsoft.Extensions.Logging;
using PushKit.Server.Sessions;

namespace PushKit.Server;

/// <summary>Queues messages into sessions' delivery engines; the message is encoded once for every recipient.</summary>
internal sealed partial class PushSender(PushSessionManager sessions) : IPushSender
{
    public async ValueTask<bool> SendToSessionAsync(string sessionId, PushMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sessionId);
        ArgumentNullException.ThrowIfNull(message);
        cancellationToken.ThrowIfCancellationRequested();
        var session = sessions.Find(sessionId);
        if (session is null || !await TryEnqueueAsync(session, message, many: false, cancellationToken).ConfigureAwait(false))
        {
            return false;
        }

        sessions.Metrics.MessagesSent(1);
        return true;
    }

    public ValueTask<int> SendToUserAsync(string userId, PushMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(userId);
        ArgumentNullException.ThrowIfNull(message);
        return EnqueueAllAsync(sessions.ForUser(userId), message, cancellationToken);
    }

    public ValueTask<int> BroadcastAsync(PushMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        return EnqueueAllAsync(sessions.All(), message, cancellationToken);
    }

    private async ValueTask<int> EnqueueAllAsync(IEnumerable<PushSession> targets, PushMessage message, CancellationToken cancellationToken)
    {
        // Cancelled before the call: thrown whoever the message would reach (no one included), as SendToSessionAsync does.
        cancellationToken.ThrowIfCancellationRequested();

        // Too large for any client: refuse before anyone gets it.
        var frameLength = PushKit.Protocol.FrameCodec.MaxMessageFrameLength(message);
        if (frameLength > sessions.Options.MaxMessageBytes)
        {
            throw new PushMessageTooLargeException(frameLength, sessions.Options.MaxMessageBytes);
        }

        var accepted = 0;
        foreach (var session in targets)
        {
            cancellationToken.ThrowIfCancellationRequested();

            // The common case completes here, synchronously; only a full buffer under the Wait policy awaits.
            var outcome = TryEnqueueNow(session, message);
            if (outcome == true || (outcome is null && await TryEnqueueAsync(session, message, many: true, cancellationToken).ConfigureAwait(false)))
            {
                accepted++;
            }
        }

        // Counted once per send, not once per recipient.
        sessions.Metrics.MessagesSent(accepted);
        return accepted;
    }

    /// <returns>True when queued, false when the session is skipped, null when it must be waited for.</returns>
    private bool? TryEnqueueNow(PushSession session, PushMessage message)
    {
        if (session.HasEnded)
        {
            // An ended session may stay in the store a while (holding its close for a returning client): skipped
            // without the exception its engine would throw.
            return false;
        }

        try
        {
            return session.TryEnqueueNow(message) ? true : null;
        }
        catch (PushChannelClosedException)
        {
            // The session ended between lookup and enqueue.
            return false;
        }
        catch (PushMessageTooLargeException ex)
        {
            // This client accepts less than the server's limit; the others still get the message.
            Log.SkippedTooLarge(sessions.Logger, session.SessionId, ex.FrameBytes, ex.LimitBytes);
            return false;
        }
    }

    private async ValueTask<bool> TryEnqueueAsync(PushSession session, PushMessage message, bool many, CancellationToken cancellationToken)
    {
        try
        {
            // Completes at once unless the session's buffer is full under the Wait policy.
            await session.EnqueueAsync(message, trackAck: false, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (PushChannelClosedException)
        {
            // The session ended between lookup and enqueue.
            return false;
        }
        catch (PushMessageTooLargeException ex) when (many)
        {
            // This client accepts less than the server's limit; the others still get the message.
            Log.SkippedTooLarge(sessions.Logger, session.SessionId, ex.FrameBytes, ex.LimitBytes);
            return false;
        }
    }

    private static partial class Log
    {
        [LoggerMessage(40, LogLevel.Warning, "Session {SessionId} skipped: the message's {FrameBytes}-byte frame exceeds the client's limit of {LimitBytes} bytes")]
        public static partial void SkippedTooLarge(ILogger logger, string sessionId, long frameBytes, long limitBytes);
    }
}
