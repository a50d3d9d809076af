using System.Collections.Concurrent;

namespace PushKit.Server.Sessions;

/// <summary>The embedded default store: sessions in this process's memory.</summary>
internal sealed class InMemoryPushSessionStore : IPushSessionStore
{
    private readonly ConcurrentDictionary<string, PushSession> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, ConcurrentDictionary<string, PushSession>> _byUser = new(StringComparer.Ordinal);

    public int Count => _sessions.Count;

    public void Add(PushSession session)
    {
        if (!_sessions.TryAdd(session.SessionId, session))
        {
            throw new InvalidOperationException($"Session id collision: {session.SessionId}.");
        }

        if (session.UserId is { } userId)
        {
            _byUser.GetOrAdd(userId, _ => new(StringComparer.Ordinal))[session.SessionId] = session;
        }
    }

    public PushSession? Find(string sessionId) => _sessions.TryGetValue(sessionId, out var session) ? session : null;

    public bool Remove(PushSession session)
    {
        if (!_sessions.TryRemove(new KeyValuePair<string, PushSession>(session.SessionId, session)))
        {
            return false;
        }

        // The per-user map is kept even when it empties: removing it could race with a session being added for that user.
        if (session.UserId is { } userId && _byUser.TryGetValue(userId, out var sessions))
        {
            sessions.TryRemove(session.SessionId, out _);
        }

        return true;
    }

    public IEnumerable<PushSession> All() => _sessions.Values;

    public IEnumerable<PushSession> ForUser(string userId) =>
        _byUser.TryGetValue(userId, out var sessions) ? sessions.Values : [];
}
