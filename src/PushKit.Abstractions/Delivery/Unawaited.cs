namespace PushKit.Delivery;

/// <summary>Tasks that nobody awaits.</summary>
internal static class Unawaited
{
    /// <summary>
    /// Observes <paramref name="task"/>'s failure, if it fails, so that it does not surface as
    /// <see cref="TaskScheduler.UnobservedTaskException"/>. For a task whose failure has nobody to tell and nothing to
    /// change; a task that completes successfully costs one continuation.
    /// </summary>
    public static void ObserveFailure(Task task) =>
        _ = task.ContinueWith(
            static t => _ = t.Exception,
            CancellationToken.None,
            TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default);
}
