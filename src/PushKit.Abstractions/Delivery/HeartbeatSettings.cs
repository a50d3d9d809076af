namespace PushKit.Delivery;

/// <summary>
/// Heartbeats of one session end: a <c>ping</c> goes out whenever nothing was sent for <see cref="Interval"/>, and a
/// connection that received nothing for <see cref="Timeout"/> is closed with <see cref="PushCloseCode.HeartbeatTimeout"/>.
/// A half-open connection is therefore detected within <see cref="Timeout"/> plus one check period (half the interval).
/// </summary>
/// <remarks>
/// One instance is shared by every connection it watches (a server shares one across all its sessions): a single
/// timer checks them all each <see cref="CheckPeriod"/>, rather than a timer and a loop per connection. The timer runs
/// only while at least one connection is registered.
/// </remarks>
internal sealed class HeartbeatSettings(TimeSpan interval, TimeSpan timeout, TimeProvider timeProvider)
{
    private readonly object _gate = new();
    private readonly HashSet<IHeartbeatTarget> _targets = [];
    private ITimer? _timer;

    /// <summary>Send a ping after this long without sending anything.</summary>
    public TimeSpan Interval { get; } = interval;

    /// <summary>Close a connection that received nothing for this long.</summary>
    public TimeSpan Timeout { get; } = timeout;

    /// <summary>The clock.</summary>
    public TimeProvider TimeProvider { get; } = timeProvider;

    /// <summary>How often the connections are checked.</summary>
    public TimeSpan CheckPeriod => Interval / 2;

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
            _timer ??= TimeProvider.CreateTimer(static state => ((HeartbeatSettings)state!).Tick(), this, CheckPeriod, CheckPeriod);
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
        int count;
        lock (_gate)
        {
            count = _targets.Count;
            snapshot = System.Buffers.ArrayPool<IHeartbeatTarget>.Shared.Rent(Math.Max(count, 1));
            _targets.CopyTo(snapshot);
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
