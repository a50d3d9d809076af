using PushKit.Server.Sessions;

namespace PushKit.Server;

/// <summary>Queues messages into sessions' delivery engines; the message is encoded once for every recipient.</summary>
internal sealed class PushSender(PushSessionManager sessions) : IPushSender
{
    public ValueTask<bool> SendToSessionAsync(string sessionId, PushMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sessionId);
        ArgumentNullException.ThrowIfNull(message);
        var session = sessions.Find(sessionId);
        return new(session is not null && TryEnqueue(session, message));
    }

    public ValueTask<int> SendToUserAsync(string userId, PushMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(userId);
        ArgumentNullException.ThrowIfNull(message);
        return new(EnqueueAll(sessions.ForUser(userId), message, cancellationToken));
    }

    public ValueTask<int> BroadcastAsync(PushMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        return new(EnqueueAll(sessions.All(), message, cancellationToken));
    }

    private static int EnqueueAll(IEnumerable<PushSession> targets, PushMessage message, CancellationToken cancellationToken)
    {
        var accepted = 0;
        foreach (var session in targets)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (TryEnqueue(session, message))
            {
                accepted++;
            }
        }

        return accepted;
    }

    private static bool TryEnqueue(PushSession session, PushMessage message)
    {
        try
        {
            session.Engine.Enqueue(message, trackAck: false);
            return true;
        }
        catch (PushChannelClosedException)
        {
            // The session ended between lookup and enqueue.
            return false;
        }
    }
}
