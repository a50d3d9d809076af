namespace PushKit.Delivery;

/// <summary>
/// Heartbeats of one session end: a <c>ping</c> goes out whenever nothing was sent for <see cref="Interval"/>, and a
/// connection that received nothing for <see cref="Timeout"/> is closed with <see cref="PushCloseCode.HeartbeatTimeout"/>.
/// A half-open connection is therefore detected within <see cref="Timeout"/> plus one check period (half the interval).
/// </summary>
internal sealed record HeartbeatSettings(TimeSpan Interval, TimeSpan Timeout, TimeProvider TimeProvider)
{
    /// <summary>How often the connection is checked.</summary>
    public TimeSpan CheckPeriod => Interval / 2;
}
