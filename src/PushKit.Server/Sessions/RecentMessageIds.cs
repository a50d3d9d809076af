namespace PushKit.Server.Sessions;

/// <summary>
/// The most recent message ids seen in one scope (a user, or an anonymous session), so that a message sent again
/// with the same id (a retry after a reconnect, or after a lost session) is acknowledged but not applied twice.
/// </summary>
internal sealed class RecentMessageIds(int capacity)
{
    private readonly HashSet<string> _seen = new(StringComparer.Ordinal);
    private readonly Queue<string> _order = new();

    /// <summary>
    /// For a user's ids: when the housekeeper first found the user without a session (a timestamp), or 0 while the user
    /// has one. Only the housekeeper reads and writes it.
    /// </summary>
    public long NoSessionSince { get; set; }

    /// <summary>Whether <paramref name="id"/> was recorded.</summary>
    public bool Contains(string id)
    {
        lock (_seen)
        {
            return _seen.Contains(id);
        }
    }

    /// <summary>Records <paramref name="id"/>; false when it was seen already.</summary>
    public bool TryAdd(string id)
    {
        lock (_seen)
        {
            if (!_seen.Add(id))
            {
                return false;
            }

            _order.Enqueue(id);
            if (_order.Count > capacity)
            {
                _seen.Remove(_order.Dequeue());
            }

            return true;
        }
    }
}
