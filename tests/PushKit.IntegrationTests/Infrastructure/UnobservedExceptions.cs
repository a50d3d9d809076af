namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>
/// Collects <see cref="TaskScheduler.UnobservedTaskException"/> while alive. The event is process-wide: a test that
/// uses this runs in <see cref="GlobalEventsCollection"/>.
/// </summary>
public sealed class UnobservedExceptions : IDisposable
{
    private readonly List<AggregateException> _seen = [];

    public UnobservedExceptions()
    {
        Drain();
        TaskScheduler.UnobservedTaskException += OnUnobserved;
    }

    /// <summary>Collects garbage a few times over a second, or until an exception <paramref name="match"/> accepts shows up.</summary>
    public async Task<List<AggregateException>> CollectAsync(Func<AggregateException, bool> match)
    {
        for (var round = 0; round < 20; round++)
        {
            Drain();
            lock (_seen)
            {
                if (_seen.Any(match))
                {
                    break;
                }
            }

            await Task.Delay(50);
        }

        lock (_seen)
        {
            return [.. _seen];
        }
    }

    public void Dispose() => TaskScheduler.UnobservedTaskException -= OnUnobserved;

    private static void Drain()
    {
        for (var i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    private void OnUnobserved(object? sender, UnobservedTaskExceptionEventArgs e)
    {
        lock (_seen)
        {
            _seen.Add(e.Exception);
        }
    }
}
