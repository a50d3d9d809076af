using System.Threading.Channels;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

/// <summary>Heartbeats on a deterministic clock: pings when idle, a half-open connection detected within a bounded time.</summary>
public class HeartbeatTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan s_interval = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan s_deadAfter = TimeSpan.FromSeconds(30);

    private static DeliveryEngine CreateEngine(FakeTimeProvider time, Func<PushMessage, CancellationToken, ValueTask>? deliver = null) =>
        new("engine", 1 << 20, deliver ?? ((_, _) => ValueTask.CompletedTask), NullLogger.Instance)
        {
            Heartbeat = new HeartbeatSettings(s_interval, s_deadAfter, time),
        };

    // Twenty seconds of silence, checked on time; then the process stalls for a minute (one jump of the clock: the
    // timer's next tick comes a minute late).
    private static void SilenceThenStall(FakeTimeProvider time)
    {
        for (var i = 0; i < 4; i++)
        {
            time.Advance(s_interval / 2);
        }

        time.Advance(TimeSpan.FromMinutes(1));
    }

    [Fact]
    public async Task An_idle_connection_sends_a_ping_each_interval()
    {
        var time = new FakeTimeProvider();
        var engine = CreateEngine(time);
        var (a, b) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        time.Advance(s_interval / 2);
        Assert.DoesNotContain("ping", a.SentText(), StringComparison.Ordinal);
        time.Advance(s_interval / 2);
        await Eventually.TrueAsync(() => a.SentText().Contains("{\"type\":\"ping\"}", StringComparison.Ordinal));

        a.Abort();
        await run.WaitAsync(s_timeout);
        _ = b;
    }

    [Fact]
    public async Task A_connection_that_receives_nothing_is_dropped_after_the_timeout_and_not_before()
    {
        var time = new FakeTimeProvider();
        var engine = CreateEngine(time);
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        // The peer is silent (half-open): nothing arrives, not even pongs.
        for (var elapsed = TimeSpan.Zero; elapsed < s_deadAfter; elapsed += s_interval / 2)
        {
            time.Advance(s_interval / 2);
            Assert.False(run.IsCompleted, $"dropped early, at {elapsed + (s_interval / 2)}");
        }

        // Detected within the timeout plus one check period (half the interval).
        time.Advance(s_interval / 2);
        var end = await run.WaitAsync(s_timeout);
        Assert.Equal((ConnectionEndKind.Lost, (PushCloseCode?)PushCloseCode.HeartbeatTimeout), (end.Kind, end.Code));
    }

    [Fact]
    public async Task Anything_received_keeps_the_connection_alive()
    {
        var time = new FakeTimeProvider();
        var engine = CreateEngine(time);
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);
        for (var i = 1; i <= 10; i++)
        {
            time.Advance(s_interval);

            // Something arrives each interval; wait until it is processed before the clock moves on.
            a.Inject($"{{\"type\":\"pong\"}}\n{{\"type\":\"msg\",\"seq\":{i},\"data\":\"tick\"}}");
            await Eventually.TrueAsync(() => engine.LastDelivered == i);
        }

        Assert.False(run.IsCompleted);
        a.Abort();
        await run.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task A_process_that_stalled_does_not_take_the_time_it_lost_for_its_peers_silence()
    {
        var time = new FakeTimeProvider();
        var engine = CreateEngine(time);
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        // What the peer sent during the stall is read only after the tick that ends it.
        SilenceThenStall(time);
        a.Inject("{\"type\":\"msg\",\"seq\":1,\"data\":\"sent during the stall\"}");
        await Eventually.TrueAsync(() => engine.LastDelivered == 1);
        Assert.False(run.IsCompleted);

        a.Abort();
        await run.WaitAsync(s_timeout);
    }

    [Fact]
    public async Task A_dead_peer_is_still_detected_after_a_stall_within_the_timeout_in_running_time()
    {
        var time = new FakeTimeProvider();
        var engine = CreateEngine(time);
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        // The tick that found the stall counted one check period (25 s of silence); the thirty seconds are up at the
        // second check after it, not before. Nothing is to happen at the first, so there is no event to await: give
        // the heartbeat a moment to act wrongly.
        SilenceThenStall(time);
        time.Advance(s_interval / 2);
        await Task.Delay(200);
        Assert.False(run.IsCompleted, "dropped before the timeout, counting the stall as silence");
        time.Advance(s_interval / 2);
        var end = await run.WaitAsync(s_timeout);
        Assert.Equal((ConnectionEndKind.Lost, (PushCloseCode?)PushCloseCode.HeartbeatTimeout), (end.Kind, end.Code));
    }

    [Fact]
    public async Task A_peer_slowed_down_by_the_application_is_not_taken_for_dead()
    {
        var time = new FakeTimeProvider();
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var engine = CreateEngine(time, async (_, ct) => await release.Task.WaitAsync(ct));
        var (a, _) = InMemoryConnection.CreatePair();
        var run = engine.RunAsync(a);

        // The application is stuck on message 1 while 100 more wait: reading pauses, and that is not silence.
        a.Inject(string.Join("\n", Enumerable.Range(1, 100).Select(i => $"{{\"type\":\"msg\",\"seq\":{i},\"data\":\"m\"}}")));

        // Paused for good: message 1 with the application, 2-65 queued (64), 66 waiting for room. Reading can pause
        // once before that, at 65, when the delivery loop has not yet taken message 1; it resumes a moment later, and
        // a clock moved by a minute and a half in that moment takes the connection for silent (the flake seen in CI).
        await Eventually.TrueAsync(() => engine.IsReadPaused && engine.ReceivedThrough == 66);
        time.Advance(s_deadAfter * 3);

        // Nothing is to happen here, so there is no event to await: give the heartbeat loop a moment to act wrongly.
        await Task.Delay(200);
        Assert.False(run.IsCompleted);

        release.SetResult();
        await Eventually.TrueAsync(() => engine.LastDelivered == 100);
        a.Abort();
        await run.WaitAsync(s_timeout);
    }
}

/// <summary>
/// A server's heartbeat checks its connections in slices, so that connections that went idle together do not all get
/// their ping in one burst (each write loop that wakes holds one of the web server's pooled send buffers, and the pool
/// keeps the peak); each connection is still checked once per check period.
/// </summary>
public class HeartbeatSpreadTests
{
    private sealed class CountingTarget : IHeartbeatTarget
    {
        public int Checks;

        public bool CheckHeartbeat(HeartbeatSettings settings)
        {
            Checks++;
            return true;
        }
    }

    [Fact]
    public void A_servers_connections_are_checked_a_slice_per_tick_and_each_once_per_check_period()
    {
        var time = new FakeTimeProvider();
        var settings = new HeartbeatSettings(TimeSpan.FromSeconds(15), TimeSpan.FromSeconds(30), time, spreadChecks: true);
        var targets = Enumerable.Range(0, 12_800).Select(_ => new CountingTarget()).ToArray();
        foreach (var target in targets)
        {
            settings.Register(target);
        }

        Assert.Equal(128, settings.Slices);
        var tick = settings.CheckPeriod / 128;
        var perTick = new List<int>();
        for (var i = 0; i < 128; i++)
        {
            var before = targets.Sum(t => t.Checks);
            time.Advance(tick);
            perTick.Add(targets.Sum(t => t.Checks) - before);
        }

        // Every connection once per check period, and no tick with more than a thirty-second of them (about 100 each).
        Assert.All(targets, t => Assert.Equal(1, t.Checks));
        Assert.All(perTick, n => Assert.InRange(n, 1, 400));

        // One that leaves is checked no more, and the others still once per period.
        foreach (var target in targets.Take(6_400))
        {
            settings.Unregister(target);
        }

        Assert.Equal(6_400, settings.Count);
        for (var i = 0; i < 128; i++)
        {
            time.Advance(tick);
        }

        Assert.All(targets.Take(6_400), t => Assert.Equal(1, t.Checks));
        Assert.All(targets.Skip(6_400), t => Assert.Equal(2, t.Checks));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_tick_more_than_50_ms_late_counts_as_a_stall_and_the_running_clock_stops_for_it(bool server)
    {
        // A server ticks every 59 ms (a 128th of the check period), a client every 7.5 s: the same 50 ms tells a stall.
        var time = new FakeTimeProvider();
        var settings = new HeartbeatSettings(TimeSpan.FromSeconds(15), TimeSpan.FromSeconds(30), time, spreadChecks: server);
        settings.Register(new CountingTarget());
        var tick = settings.TickPeriod;
        Assert.Equal(server ? settings.CheckPeriod / 128 : settings.CheckPeriod, tick);

        // Ticks on time, and up to 50 ms late (the jitter of timers on a busy machine), are running time.
        time.Advance(tick);
        time.Advance(tick + TimeSpan.FromMilliseconds(50));
        Assert.Equal(TimeSpan.Zero, settings.Stalled);
        var running = settings.GetRunningTimestamp();
        Assert.Equal(time.GetTimestamp(), running);

        // A tick a second late: that second is lost time, the rest runs (the fake clock then fires the ticks that fell
        // due meanwhile at once; those are not late).
        time.Advance(tick + TimeSpan.FromSeconds(1));
        AssertClose(TimeSpan.FromSeconds(1), settings.Stalled);
        AssertClose(tick, settings.SilenceSince(running));

        // And so on for the next stall; the running clock then runs with the wall clock again.
        time.Advance(TimeSpan.FromMinutes(1));
        time.Advance(tick);
        // (The tick that finds a stall is late by the stall less the one period it was due in.)
        AssertClose(TimeSpan.FromSeconds(61) - tick, settings.Stalled);
        AssertClose(tick * 3, settings.SilenceSince(running));
    }

    private static void AssertClose(TimeSpan expected, TimeSpan actual) =>
        Assert.InRange(actual, expected - TimeSpan.FromTicks(10), expected + TimeSpan.FromTicks(10));

    [Fact]
    public void A_short_interval_and_a_client_are_checked_in_one_pass()
    {
        var time = new FakeTimeProvider();
        Assert.Equal(1, new HeartbeatSettings(TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), time, spreadChecks: true).Slices);
        var client = new HeartbeatSettings(TimeSpan.FromSeconds(15), TimeSpan.FromSeconds(30), time);
        Assert.Equal(1, client.Slices);
        var target = new CountingTarget();
        client.Register(target);
        time.Advance(client.CheckPeriod);
        Assert.Equal(1, target.Checks);
    }

    [Fact]
    public void Clients_with_a_random_phase_are_each_checked_once_per_check_period_but_not_all_at_once()
    {
        var time = new FakeTimeProvider();
        var clients = Enumerable.Range(0, 100)
            .Select(_ => (Settings: new HeartbeatSettings(TimeSpan.FromSeconds(15), TimeSpan.FromSeconds(30), time, randomPhase: true), Target: new CountingTarget()))
            .ToArray();
        foreach (var (settings, target) in clients)
        {
            settings.Register(target);
        }

        // A quarter of the way into the first period some have been checked and some not (all would be at its end
        // without the random phase); by its end every one has, once; a period later every one twice.
        var period = clients[0].Settings.CheckPeriod;
        time.Advance(period / 4);
        Assert.InRange(clients.Count(c => c.Target.Checks == 1), 1, 99);
        time.Advance(period - (period / 4));
        Assert.All(clients, c => Assert.Equal(1, c.Target.Checks));
        time.Advance(period);
        Assert.All(clients, c => Assert.Equal(2, c.Target.Checks));
    }
}
