using System.Threading.Channels;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>A fake clock that reports the due time of every timer created on it, in order.</summary>
public sealed class TimerReportingTime(Microsoft.Extensions.Time.Testing.FakeTimeProvider inner) : TimeProvider
{
    private readonly Channel<TimeSpan> _timers = Channel.CreateUnbounded<TimeSpan>();

    public ChannelReader<TimeSpan> Timers => _timers.Reader;

    public void Advance(TimeSpan delta) => inner.Advance(delta);

    /// <summary>Forgets the timers reported so far: what is read next was created after this call.</summary>
    public void ForgetTimers()
    {
        while (_timers.Reader.TryRead(out _))
        {
        }
    }

    /// <summary>Completes when a timer of <paramref name="due"/> has been created (since the last <see cref="ForgetTimers"/>).</summary>
    public async Task WaitForTimerAsync(TimeSpan due)
    {
        while (await _timers.Reader.ReadAsync() != due)
        {
        }
    }

    public override long TimestampFrequency => inner.TimestampFrequency;

    public override long GetTimestamp() => inner.GetTimestamp();

    public override DateTimeOffset GetUtcNow() => inner.GetUtcNow();

    public override TimeZoneInfo LocalTimeZone => inner.LocalTimeZone;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = inner.CreateTimer(callback, state, dueTime, period);
        _timers.Writer.TryWrite(dueTime);
        return timer;
    }
}
