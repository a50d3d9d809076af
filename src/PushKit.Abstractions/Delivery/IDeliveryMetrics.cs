namespace PushKit.Delivery;

/// <summary>
/// Counts what a <see cref="DeliveryEngine"/> does with its outbound messages, for an owner that reports metrics (the
/// server). One instance serves every engine: an engine holds a reference, never a delegate of its own.
/// </summary>
internal interface IDeliveryMetrics
{
    /// <summary><paramref name="count"/> messages were acknowledged by the peer (and left the buffer).</summary>
    void Acknowledged(long count);

    /// <summary>A new connection sends again <paramref name="count"/> messages that an earlier one sent unacknowledged.</summary>
    void Replayed(long count);

    /// <summary>
    /// <paramref name="count"/> unacknowledged messages were dropped to make room (<see cref="PushBufferFullPolicy.DropOldest"/>);
    /// the peer is told of the gap.
    /// </summary>
    void Dropped(long count);
}
