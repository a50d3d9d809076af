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

    // The ids being applied right now (by any session of the scope: two devices of one user may send the same id at
    // once), each with the signal its duplicates wait on, made only when one does.
    private readonly Dictionary<string, TaskCompletionSource?> _applying = new(StringComparer.Ordinal);

    /// <summary>
    /// Before a message with <paramref name="id"/> is applied: <see cref="IdClaim.Applied"/> when it was applied
    /// before (a duplicate); <see cref="IdClaim.Claimed"/> when the caller is now the one applying it, and must call
    /// <see cref="End"/> once it is done; <see cref="IdClaim.Busy"/> when another delivery is applying it now:
    /// wait for <paramref name="busy"/>, then claim again.
    /// </summary>
    public IdClaim Begin(string id, out Task? busy)
    {
        lock (_seen)
        {
            busy = null;
            if (_seen.Contains(id))
            {
                return IdClaim.Applied;
            }

            if (_applying.TryGetValue(id, out var signal))
            {
                if (signal is null)
                {
                    signal = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    _applying[id] = signal;
                }

                busy = signal.Task;
                return IdClaim.Busy;
            }

            _applying.Add(id, null);
            return IdClaim.Claimed;
        }
    }

    /// <summary>
    /// Ends a <see cref="IdClaim.Claimed"/> claim: records <paramref name="id"/> when the message was
    /// <paramref name="applied"/>, and lets its duplicates look again (when it was not, one of them applies it).
    /// </summary>
    public void End(string id, bool applied)
    {
        TaskCompletionSource? signal;
        lock (_seen)
        {
            _applying.Remove(id, out signal);
            if (applied)
            {
                Add(id);
            }
        }

        signal?.TrySetResult();
    }

    // Records an applied id, forgetting the oldest beyond the capacity. Under the lock.
    private void Add(string id)
    {
        if (!_seen.Add(id))
        {
            return;
        }

        _order.Enqueue(id);
        if (_order.Count > capacity)
        {
            _seen.Remove(_order.Dequeue());
        }
    }
}

/// <summary>What <see cref="RecentMessageIds.Begin"/> found.</summary>
internal enum IdClaim
{
    /// <summary>The id was applied before: the message is a duplicate.</summary>
    Applied,

    /// <summary>The caller applies the message, then ends the claim.</summary>
    Claimed,

    /// <summary>Another delivery is applying the id now.</summary>
    Busy,
}
