using Microsoft.Extensions.Time.Testing;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>Moving a fake clock so that the heartbeat sees time pass, not this process stall.</summary>
internal static class FakeTimeExtensions
{
    // Shorter than any heartbeat tick (at least 50 ms): every tick then comes on time.
    private static readonly TimeSpan s_step = TimeSpan.FromMilliseconds(50);

    /// <summary>
    /// Advances <paramref name="time"/> by <paramref name="span"/> in 50 ms steps. One jump longer than two heartbeat
    /// ticks is what a stalled process sees when it resumes, and the heartbeat does not count such a gap as any
    /// connection's silence; a test that waits for a heartbeat timeout lets the time run instead.
    /// </summary>
    public static void Run(this FakeTimeProvider time, TimeSpan span)
    {
        for (var left = span; left > TimeSpan.Zero; left -= s_step)
        {
            time.Advance(left < s_step ? left : s_step);
        }
    }
}
