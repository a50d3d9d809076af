namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>Awaiting a channel's state changes (client or server session) without polling.</summary>
public static class ChannelStates
{
    /// <summary>
    /// Completes with <paramref name="channel"/>'s next change into <paramref name="state"/>. Call it before the action
    /// that causes the change, so that the change cannot be missed.
    /// </summary>
    public static Task<PushChannelStateChangedEventArgs> NextStateAsync(this IPushChannel channel, PushChannelState state) =>
        channel.NextChangeAsync(e => e.CurrentState == state);

    /// <summary>
    /// Completes with <paramref name="channel"/>'s next state change that <paramref name="match"/> accepts. Call it
    /// before the action that causes the change, so that the change cannot be missed.
    /// </summary>
    public static Task<PushChannelStateChangedEventArgs> NextChangeAsync(this IPushChannel channel, Func<PushChannelStateChangedEventArgs, bool> match)
    {
        var next = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        channel.StateChanged += (_, e) =>
        {
            if (match(e))
            {
                next.TrySetResult(e);
            }
        };
        return next.Task;
    }
}
