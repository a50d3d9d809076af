namespace PushKit.Delivery;

/// <summary>How a sender waits for its message's acknowledgement, on the client and on the server alike.</summary>
internal static class AckWait
{
    /// <summary>
    /// Waits for <paramref name="acknowledged"/> (a send's acknowledgement) for at most <paramref name="timeout"/>.
    /// When the wait ends first (<see cref="TimeoutException"/>, or the caller's token), the message stays queued and
    /// the engine may still fail its acknowledgement later (the channel closes, <c>DropOldest</c> drops it) with nobody
    /// left to await it: that failure is observed here, so that it does not surface as
    /// <see cref="TaskScheduler.UnobservedTaskException"/>.
    /// </summary>
    public static async ValueTask WaitAsync(Task acknowledged, TimeSpan timeout, TimeProvider timeProvider, CancellationToken cancellationToken)
    {
        try
        {
            await acknowledged.WaitAsync(timeout, timeProvider, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
            _ = acknowledged.ContinueWith(
                static task => _ = task.Exception,
                CancellationToken.None,
                TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);
            throw;
        }
    }
}
