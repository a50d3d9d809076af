namespace PushKit.Delivery;

/// <summary>
/// Heartbeats of one session end: a <c>ping</c> goes out whenever nothing was sent for <see cref="Interval"/>, and a
/// connection that received nothing for <see cref="Timeout"/> is closed with <see cref="PushCloseCode.HeartbeatTimeout"/>.
/// A half-open connection is therefore detected within <see cref="Timeout"/> plus one check period (half the interval).
/// </summary>
/// <remarks>
/// One instance is shared by every connection it watches (a server shares one across all its sessions): a single
/// timer checks them all each <see cref="CheckPeriod"/>, rather than a timer and a loop per connection. The timer runs
/// only while at least one connection is registered. With <c>spreadChecks</c> (the server), the connections are checked
/// in up to 16 slices, one slice per tick of a timer 16 times as frequent, so that connections that went idle together
/// do not all get their ping in one burst: every write loop woke at once, each held one of the web server's pooled
/// send buffers, and the pool kept that peak (about 1.8 KB per idle connection at 2,000 connections).
/// </remarks>
internal sealed class HeartbeatSettings(TimeSpan interval, TimeSpan timeout, TimeProvider timeProvider, bool spreadChecks = false)
{
    // A slice's tick comes at most every 50 ms: a short interval (tests) is checked in one pass, as before.
    private static readonly TimeSpan s_minSlicePeriod = TimeSpan.FromMilliseconds(50);

    private readonly object _gate = new();
    private readonly HashSet<IHeartbeatTarget> _targets = [];
    private ITimer? _timer;
    private int _slice;

    /// <summary>Send a ping after this long without sending anything.</summary>
    public TimeSpan Interval { get; } = interval;

    /// <summary>Close a connection that received nothing for this long.</summary>
    public TimeSpan Timeout { get; } = timeout;

    /// <summary>The clock.</summary>
    public TimeProvider TimeProvider { get; } = timeProvider;

    /// <summary>How often each connection is checked.</summary>
    public TimeSpan CheckPeriod => Interval / 2;

    /// <summary>Into how many slices the connections are split, one checked per tick.</summary>
    internal int Slices => spreadChecks ? (int)Math.Clamp(CheckPeriod.Ticks / s_minSlicePeriod.Ticks, 1, 16) : 1;

    /// <summary>The number of connections watched now.</summary>
    internal int Count
    {
        get
        {
            lock (_gate)
            {
                return _targets.Count;
            }
        }
    }

    /// <summary>Starts checking <paramref name="target"/> every <see cref="CheckPeriod"/>.</summary>
    public void Register(IHeartbeatTarget target)
    {
        lock (_gate)
        {
            _targets.Add(target);
            _timer ??= TimeProvider.CreateTimer(static state => ((HeartbeatSettings)state!).Tick(), this, CheckPeriod / Slices, CheckPeriod / Slices);
        }
    }

    /// <summary>Stops checking <paramref name="target"/>; the timer stops with the last one.</summary>
    public void Unregister(IHeartbeatTarget target)
    {
        ITimer? stopped = null;
        lock (_gate)
        {
            if (_targets.Remove(target) && _targets.Count == 0)
            {
                stopped = _timer;
                _timer = null;
            }
        }

        stopped?.Dispose();
    }

    private void Tick()
    {
        IHeartbeatTarget[] snapshot;
        var count = 0;
        var slices = Slices;
        lock (_gate)
        {
            snapshot = System.Buffers.ArrayPool<IHeartbeatTarget>.Shared.Rent(Math.Max(_targets.Count, 1));
            if (slices == 1)
            {
                _targets.CopyTo(snapshot);
                count = _targets.Count;
            }
            else
            {
                // Each connection belongs to one slice for its life (its identity hash), so it is still checked once
                // per CheckPeriod.
                var slice = _slice;
                _slice = (slice + 1) % slices;
                foreach (var target in _targets)
                {
                    if ((uint)System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(target) % (uint)slices == slice)
                    {
                        snapshot[count++] = target;
                    }
                }
            }
        }

        try
        {
            for (var i = 0; i < count; i++)
            {
                if (!snapshot[i].CheckHeartbeat(this))
                {
                    Unregister(snapshot[i]);
                }
            }
        }
        finally
        {
            System.Buffers.ArrayPool<IHeartbeatTarget>.Shared.Return(snapshot, clearArray: true);
        }
    }
}

/// <summary>A connection watched by <see cref="HeartbeatSettings"/>.</summary>
internal interface IHeartbeatTarget
{
    /// <summary>Sends a ping when due, or closes the connection when nothing arrived in time.</summary>
    /// <returns>False when the connection needs no more checks.</returns>
    bool CheckHeartbeat(HeartbeatSettings settings);
}
