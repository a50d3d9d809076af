namespace PushKit.Server.Sessions;

/// <summary>
/// Where sessions and their delivery state (sequence numbers, the unacknowledged buffer) live. In memory by default;
/// a shared store (Redis) is a second implementation of this seam, so that any node can resume any session.
/// </summary>
internal interface IPushSessionStore
{
    int Count { get; }

    void Add(PushSession session);

    PushSession? Find(string sessionId);

    bool Remove(PushSession session);

    IEnumerable<PushSession> All();

    IEnumerable<PushSession> ForUser(string userId);

    /// <summary>Whether any session of <paramref name="userId"/> is stored (without listing them).</summary>
    bool HasSessionsForUser(string userId);
}
