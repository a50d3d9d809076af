namespace PushKit.Delivery;

/// <summary>How a sender stops waiting for its message's acknowledgement, on the client and on the server alike.</summary>
internal static class AckWait
{
    /// <summary>
    /// For a send whose wait for <paramref name="acknowledged"/> ended first (its timeout, or the caller's token): the
    /// message stays queued, and the engine may still fail its acknowledgement later (the channel closes,
    /// <c>DropOldest</c> drops it) with nobody left to await it. That failure is observed here, so that it does not
    /// surface as <see cref="TaskScheduler.UnobservedTaskException"/>. Only this rare path pays for it.
    /// </summary>
    public static void ObserveLateFailure(Task acknowledged) => Unawaited.ObserveFailure(acknowledged);
}
