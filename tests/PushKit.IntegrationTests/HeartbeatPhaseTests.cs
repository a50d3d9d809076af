using System.Collections.Concurrent;
using Microsoft.Extensions.Time.Testing;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// Clients that connect together do not ping together: each client's first heartbeat check comes after a random part of
/// the check period, so that a batch of clients (or a reconnect after a server restart) does not send the server a burst
/// of pings every interval, each of which holds one of the server's pooled buffers while in flight.
/// </summary>
public class HeartbeatPhaseTests
{
    /// <summary>A clock that never moves and records the due time of every timer of one period.</summary>
    private sealed class PeriodRecordingTime(TimeSpan period) : TimeProvider
    {
        private readonly FakeTimeProvider _inner = new(DateTimeOffset.UtcNow);

        public ConcurrentQueue<TimeSpan> DueTimes { get; } = new();

        public override long TimestampFrequency => _inner.TimestampFrequency;

        public override long GetTimestamp() => _inner.GetTimestamp();

        public override DateTimeOffset GetUtcNow() => _inner.GetUtcNow();

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period1)
        {
            if (period1 == period)
            {
                DueTimes.Enqueue(dueTime);
            }

            return _inner.CreateTimer(callback, state, dueTime, period1);
        }
    }

    [Fact]
    public async Task Clients_that_connect_together_check_their_heartbeats_at_different_moments_within_one_check_period()
    {
        await using var server = await PushTestServer.StartAsync();

        // The server's default interval is 15 s, so a client checks every 7.5 s.
        var checkPeriod = TimeSpan.FromSeconds(7.5);
        var time = new PeriodRecordingTime(checkPeriod);
        var channels = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => server.ConnectClientAsync("websocket", o => o.TimeProvider = time)));

        try
        {
            var dueTimes = time.DueTimes.ToArray();
            Assert.Equal(8, dueTimes.Length);
            Assert.All(dueTimes, due => Assert.InRange(due, TimeSpan.FromTicks(1), checkPeriod));
            Assert.Equal(8, dueTimes.Distinct().Count());
        }
        finally
        {
            await Task.WhenAll(channels.Select(c => c.DisposeAsync().AsTask())).WaitAsync(TestTimeouts.Default);
        }
    }
}
