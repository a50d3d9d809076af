using System.Collections.Concurrent;

namespace PushKit.Server.Sessions;

/// <summary>The embedded default store: sessions in this process's memory.</summary>
internal sealed class InMemoryPushSessionStore : IPushSessionStore
{
    private readonly ConcurrentDictionary<string, PushSession> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, ConcurrentDictionary<string, PushSession>> _byUser = new(StringComparer.Ordinal);

    // Every session, as an array that broadcasts share until a session comes or goes: ConcurrentDictionary.Values
    // takes every lock of the dictionary and copies it into a new list, once per broadcast.
    private Snapshot? _all;
    private int _version;

    public int Count => _sessions.Count;

    public void Add(PushSession session)
    {
        if (!_sessions.TryAdd(session.SessionId, session))
        {
            throw new InvalidOperationException($"Session id collision: {session.SessionId}.");
        }

        Interlocked.Increment(ref _version);

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

        Interlocked.Increment(ref _version);

        // The per-user map is kept even when it empties: removing it could race with a session being added for that user.
        if (session.UserId is { } userId && _byUser.TryGetValue(userId, out var sessions))
        {
            sessions.TryRemove(session.SessionId, out _);
        }

        return true;
    }

    public IEnumerable<PushSession> All()
    {
        // The version is read before the copy: a session added or removed while copying makes the copy stale at once.
        // A broadcast that reads the snapshot just before an Add's version bump simply came before that Add.
        var version = Volatile.Read(ref _version);
        if (Volatile.Read(ref _all) is { } all && all.Version == version)
        {
            return all.Sessions;
        }

        // Enumerating the dictionary takes no lock (unlike Values).
        var fresh = new Snapshot(version, _sessions.Select(pair => pair.Value).ToArray());
        Volatile.Write(ref _all, fresh);
        return fresh.Sessions;
    }

    public IEnumerable<PushSession> ForUser(string userId) =>
        _byUser.TryGetValue(userId, out var sessions) ? sessions.Values : [];

    public bool HasSessionsForUser(string userId) => _byUser.TryGetValue(userId, out var sessions) && !sessions.IsEmpty;

    private sealed record Snapshot(int Version, PushSession[] Sessions);
}
