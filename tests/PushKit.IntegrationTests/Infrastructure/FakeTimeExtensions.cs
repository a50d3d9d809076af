using Microsoft.Extensions.Time.Testing;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>Moving a fake clock so that the heartbeat sees time pass, not this process stall.</summary>
internal static class FakeTimeExtensions
{
    // A tick then fires less than 50 ms after it was due: never late enough to count as a stall.
    private static readonly TimeSpan s_step = TimeSpan.FromMilliseconds(50);

    /// <summary>
    /// Advances <paramref name="time"/> by <paramref name="span"/> in 50 ms steps. One jump that makes a heartbeat tick
    /// more than 50 ms late is what a stalled process sees when it resumes, and the heartbeat does not count that time
    /// as any connection's silence; a test that waits for a heartbeat timeout lets the time run instead.
    /// </summary>
    public static void Run(this FakeTimeProvider time, TimeSpan span)
    {
        for (var left = span; left > TimeSpan.Zero; left -= s_step)
        {
            time.Advance(left < s_step ? left : s_step);
        }
    }
}
