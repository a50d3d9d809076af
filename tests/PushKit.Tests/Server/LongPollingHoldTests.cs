using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Time.Testing;
using PushKit.Server.Connections;

namespace PushKit.Tests.Server;

/// <summary>
/// How a held long-poll ends: frames, a newer poll, the client going away, the poll timeout. Every way goes through the
/// poll's one wake-up (no timeout source, linked source or delay task per poll), so each is checked here on its own.
/// </summary>
public class LongPollingHoldTests
{
    private static readonly TimeSpan s_pollTimeout = TimeSpan.FromSeconds(25);
    private static readonly TimeSpan s_bound = TimeSpan.FromSeconds(10);
    private static readonly byte[] s_frame = "{\"t\":\"msg\",\"seq\":1}"u8.ToArray();

    private static DefaultHttpContext NewPoll(CancellationToken aborted = default)
    {
        var context = new DefaultHttpContext { RequestAborted = aborted };
        context.Response.Body = new MemoryStream();
        return context;
    }

    private static string Body(HttpContext context) => Encoding.UTF8.GetString(((MemoryStream)context.Response.Body).ToArray());

    /// <summary>A connection (on a fake clock unless <paramref name="time"/> is given) with a poll held on it.</summary>
    private static async Task<(LongPollingServerConnection Connection, DefaultHttpContext Context, Task Poll)> HoldPollAsync(
        TimeProvider? time = null, CancellationToken aborted = default)
    {
        var connection = new LongPollingServerConnection(64 * 1024, s_pollTimeout, time ?? new FakeTimeProvider());
        var context = NewPoll(aborted);
        var poll = connection.PollAsync(context);
        await connection.PollHeld.WaitAsync(s_bound);
        return (connection, context, poll);
    }

    [Fact]
    public async Task A_held_poll_is_answered_with_the_frames_sent_after_it_arrived()
    {
        var (connection, context, poll) = await HoldPollAsync();
        Assert.False(poll.IsCompleted);

        await connection.SendAsync(s_frame).AsTask().WaitAsync(s_bound);
        await poll.WaitAsync(s_bound);

        Assert.Equal(StatusCodes.Status200OK, context.Response.StatusCode);
        Assert.Equal("{\"t\":\"msg\",\"seq\":1}\n", Body(context));
        Assert.False(connection.HasPending);
    }

    [Fact]
    public async Task A_held_poll_is_answered_empty_at_the_poll_timeout_even_when_its_timer_fires_early()
    {
        // Timers may fire a little before the clock says their time is up; the poll must still end, at its timeout.
        var time = new FakeTimeProvider();
        var early = TimeSpan.FromMilliseconds(5);
        var (_, context, poll) = await HoldPollAsync(new EarlyTimers(time, early));

        time.Advance(s_pollTimeout - early);
        Assert.False(poll.IsCompleted);
        time.Advance(early + TimeSpan.FromMilliseconds(1));
        await poll.WaitAsync(s_bound);

        Assert.Equal(StatusCodes.Status200OK, context.Response.StatusCode);
        Assert.Equal(0, context.Response.ContentLength);
    }

    [Fact]
    public async Task A_newer_poll_supersedes_the_held_one_and_takes_the_frames()
    {
        var (connection, first, firstPoll) = await HoldPollAsync();

        var second = NewPoll();
        var secondPoll = connection.PollAsync(second);
        await firstPoll.WaitAsync(s_bound);
        Assert.Equal(StatusCodes.Status409Conflict, first.Response.StatusCode);
        Assert.Contains("poll_superseded", Body(first), StringComparison.Ordinal);
        Assert.False(secondPoll.IsCompleted);

        await connection.SendAsync(s_frame).AsTask().WaitAsync(s_bound);
        await secondPoll.WaitAsync(s_bound);
        Assert.Equal("{\"t\":\"msg\",\"seq\":1}\n", Body(second));
    }

    [Fact]
    public async Task A_poll_whose_client_went_away_ends_and_frames_sent_later_wait_for_the_next()
    {
        using var aborted = new CancellationTokenSource();
        var (connection, _, poll) = await HoldPollAsync(aborted: aborted.Token);

        await aborted.CancelAsync();
        await poll.WaitAsync(s_bound);

        await connection.SendAsync(s_frame).AsTask().WaitAsync(s_bound);
        Assert.True(connection.HasPending);
        var next = NewPoll();
        await connection.PollAsync(next).WaitAsync(s_bound);
        Assert.Equal("{\"t\":\"msg\",\"seq\":1}\n", Body(next));
    }

    [Fact]
    public async Task A_held_poll_ends_when_the_connection_is_aborted()
    {
        var (connection, context, poll) = await HoldPollAsync();

        connection.Abort();
        await poll.WaitAsync(s_bound);
        Assert.Equal(0, context.Response.ContentLength);
    }

    [Fact]
    public async Task Closing_a_dead_connection_with_frames_no_poll_will_collect_returns_at_once()
    {
        // Once the connection has ended no poll will come: the close must not wait out its timeout (nor spin on the
        // signal the end completed).
        var connection = new LongPollingServerConnection(64 * 1024, s_pollTimeout, new FakeTimeProvider());
        await connection.SendAsync(s_frame).AsTask().WaitAsync(s_bound);
        connection.Abort();

        await connection.CloseAsync(PushCloseCode.Normal, null).AsTask().WaitAsync(s_bound);
        Assert.True(connection.HasPending);
    }

    /// <summary>A clock whose timers fire <c>early</c> before their due time, as real timers may by the clock's reckoning.</summary>
    private sealed class EarlyTimers(FakeTimeProvider time, TimeSpan early) : TimeProvider
    {
        public override long TimestampFrequency => time.TimestampFrequency;

        public override long GetTimestamp() => time.GetTimestamp();

        public override DateTimeOffset GetUtcNow() => time.GetUtcNow();

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) =>
            new EarlyTimer(time.CreateTimer(callback, state, Early(dueTime), period), early);

        private TimeSpan Early(TimeSpan due) => due == Timeout.InfiniteTimeSpan || due <= early ? due : due - early;

        private sealed class EarlyTimer(ITimer inner, TimeSpan early) : ITimer
        {
            public bool Change(TimeSpan dueTime, TimeSpan period) =>
                inner.Change(dueTime == Timeout.InfiniteTimeSpan || dueTime <= early ? dueTime : dueTime - early, period);

            public void Dispose() => inner.Dispose();

            public ValueTask DisposeAsync() => inner.DisposeAsync();
        }
    }
}
