using System.Collections.Concurrent;

namespace PushKit.Server.Sessions;

/// <summary>The embedded default store: sessions in this process's memory.</summary>
internal sealed class InMemoryPushSessionStore : IPushSessionStore
{
    private readonly ConcurrentDictionary<string, PushSession> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, ConcurrentDictionary<string, PushSession>> _byUser = new(StringComparer.Ordinal);

    // Adding a user's session and removing a user's emptied map take this lock, so that a map is never removed under a
    // session being added to it. Readers (ForUser, HasSessionsForUser) take no lock. Sessions come and go far less often
    // than messages, so one lock is enough.
    private readonly object _usersGate = new();

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
            lock (_usersGate)
            {
                _byUser.GetOrAdd(userId, _ => new(StringComparer.Ordinal))[session.SessionId] = session;
            }
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

        // A user's map goes with the user's last session: otherwise every user ever seen would keep one.
        if (session.UserId is { } userId)
        {
            lock (_usersGate)
            {
                if (_byUser.TryGetValue(userId, out var sessions) && sessions.TryRemove(session.SessionId, out _) && sessions.IsEmpty)
                {
                    _byUser.TryRemove(new KeyValuePair<string, ConcurrentDictionary<string, PushSession>>(userId, sessions));
                }
            }
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

    /// <summary>How many users have a map of sessions (for tests).</summary>
    internal int UsersWithSessions => _byUser.Count;

    private sealed record Snapshot(int Version, PushSession[] Sessions);
}
