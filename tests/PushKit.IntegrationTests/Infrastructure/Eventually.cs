namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>Waiting for state that raises no event (engine and session internals), bounded like every wait.</summary>
public static class Eventually
{
    /// <summary>Waits until <paramref name="condition"/> holds, checking every 10 ms; fails after <see cref="TestTimeouts.Default"/>.</summary>
    public static async Task TrueAsync(Func<bool> condition)
    {
        using var timeout = new CancellationTokenSource(TestTimeouts.Default);
        while (!condition())
        {
            await Task.Delay(10, timeout.Token);
        }
    }
}
