using PushKit.Server.Sessions;

namespace PushKit.Tests;

/// <summary>Test set-up for <see cref="RecentMessageIds"/>: records an id as a delivery that applied it does.</summary>
internal static class RecentMessageIdsExtensions
{
    /// <summary>Claims <paramref name="id"/> and ends the claim as applied; false when it was applied already.</summary>
    public static bool TryAdd(this RecentMessageIds ids, string id)
    {
        if (ids.Begin(id, out _) != IdClaim.Claimed)
        {
            return false;
        }

        ids.End(id, applied: true);
        return true;
    }
}
