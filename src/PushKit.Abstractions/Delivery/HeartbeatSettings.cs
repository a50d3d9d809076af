namespace PushKit.Delivery;

/// <summary>
/// Heartbeats of one session end: a <c>ping</c> goes out whenever nothing was sent for <see cref="Interval"/>, and a
/// connection that received nothing for <see cref="Timeout"/> is closed with <see cref="PushCloseCode.HeartbeatTimeout"/>.
/// A half-open connection is therefore detected within <see cref="Timeout"/> plus one check period (half the interval).
/// </summary>
/// <remarks>
/// One instance is shared by every connection it watches (a server shares one across all its sessions): a single
/// timer checks them all each <see cref="CheckPeriod"/>, rather than a timer and a loop per connection. The timer runs
/// only while at least one connection is registered. With <c>spreadChecks</c> (the server), the connections are split
/// into up to 128 slices (by identity hash, each kept in a set of its own), one slice checked per tick of a timer that
/// many times as frequent (at most every 50 ms), so that connections that went idle together do not all get their ping
/// in one burst: every write loop that wakes holds one of the web server's pooled send buffers, and the pool keeps
/// that peak (about 1.8 KB per idle connection at 2,000 connections when all were checked at once, about 0.5 KB with
/// 16 slices).
/// <para>
/// With <c>randomPhase</c> (a client), the first check comes after a random part of the check period rather than a whole
/// one: clients that connected together (a batch, or a reconnect after a server restart) would otherwise all ping the
/// server in the same moment every interval, and each ping and its pong hold one of its pooled buffers while in flight
/// (about 0.4 KB per idle connection at 2,000 connections connected fifty at a time). The bounds are unchanged: a
/// connection is still checked once per check period.
/// </para>
/// <para>
/// Silence is counted only while this process runs. A tick that comes more than 50 ms later than one tick period after
/// the one before means the process could not run its timers for that long (a long garbage collection pause, a
/// suspended virtual machine, a starved thread pool), and so could not run its read loops either: what the peers sent
/// meanwhile may be waiting, unread, in the socket buffers. The time the tick was late is not counted as any
/// connection's silence, so that a process that stalled does not drop its healthy connections the moment it resumes;
/// each has its whole timeout, from when it last heard its peer, in running time. (A tick later by less is the ordinary
/// jitter of timers, and counts.)
/// </para>
/// </remarks>
internal sealed class HeartbeatSettings(TimeSpan interval, TimeSpan timeout, TimeProvider timeProvider, bool spreadChecks = false, bool randomPhase = false)
{
    // A slice's tick comes at most every 50 ms: a short interval (tests) is checked in one pass, as before.
    private static readonly TimeSpan s_minSlicePeriod = TimeSpan.FromMilliseconds(50);

    private const int MaxSlices = 128;

    // A tick later than this was held up by a stall of the process, not by the ordinary jitter of timers.
    private static readonly TimeSpan s_stallThreshold = TimeSpan.FromMilliseconds(50);

    private readonly object _gate = new();
    private readonly HashSet<IHeartbeatTarget>[] _slices =
        CreateSlices(spreadChecks ? (int)Math.Clamp(interval.Ticks / 2 / s_minSlicePeriod.Ticks, 1, MaxSlices) : 1);
    private int _count;
    private ITimer? _timer;
    private int _slice;
    private long _lastTick;
    private long _stalled;

    /// <summary>Send a ping after this long without sending anything.</summary>
    public TimeSpan Interval { get; } = interval;

    /// <summary>Close a connection that received nothing for this long.</summary>
    public TimeSpan Timeout { get; } = timeout;

    /// <summary>The clock.</summary>
    public TimeProvider TimeProvider { get; } = timeProvider;

    /// <summary>How often each connection is checked.</summary>
    public TimeSpan CheckPeriod => Interval / 2;

    /// <summary>Into how many slices the connections are split, one checked per tick.</summary>
    internal int Slices => _slices.Length;

    /// <summary>How often the timer ticks: the check period divided among the slices.</summary>
    internal TimeSpan TickPeriod => CheckPeriod / _slices.Length;

    /// <summary>The time this process was found stalled, in all (see the remarks).</summary>
    internal TimeSpan Stalled => TimeSpan.FromSeconds((double)Volatile.Read(ref _stalled) / TimeProvider.TimestampFrequency);

    /// <summary>A timestamp on a clock that stops while this process is stalled: the clock silence is measured by.</summary>
    public long GetRunningTimestamp() => TimeProvider.GetTimestamp() - Volatile.Read(ref _stalled);

    /// <summary>How long since <paramref name="runningTimestamp"/> (from <see cref="GetRunningTimestamp"/>), in running time.</summary>
    public TimeSpan SilenceSince(long runningTimestamp) => TimeProvider.GetElapsedTime(runningTimestamp, GetRunningTimestamp());

    /// <summary>The number of connections watched now.</summary>
    internal int Count
    {
        get
        {
            lock (_gate)
            {
                return _count;
            }
        }
    }

    /// <summary>Starts checking <paramref name="target"/> every <see cref="CheckPeriod"/>.</summary>
    public void Register(IHeartbeatTarget target)
    {
        lock (_gate)
        {
            if (SliceOf(target).Add(target))
            {
                _count++;
            }

            if (_timer is null)
            {
                var period = TickPeriod;
                var due = randomPhase ? period * (1 - Random.Shared.NextDouble()) : period;
                _lastTick = TimeProvider.GetTimestamp();
                _timer = TimeProvider.CreateTimer(static state => ((HeartbeatSettings)state!).Tick(), this, due, period);
            }
        }
    }

    /// <summary>Stops checking <paramref name="target"/>; the timer stops with the last one.</summary>
    public void Unregister(IHeartbeatTarget target)
    {
        ITimer? stopped = null;
        lock (_gate)
        {
            if (SliceOf(target).Remove(target) && --_count == 0)
            {
                stopped = _timer;
                _timer = null;
            }
        }

        stopped?.Dispose();
    }

    private long ToTimestamp(TimeSpan span) => (long)(span.TotalSeconds * TimeProvider.TimestampFrequency);

    private static HashSet<IHeartbeatTarget>[] CreateSlices(int count)
    {
        var slices = new HashSet<IHeartbeatTarget>[count];
        for (var i = 0; i < slices.Length; i++)
        {
            slices[i] = [];
        }

        return slices;
    }

    // Each connection belongs to one slice for its life (its identity hash), so it is checked once per CheckPeriod.
    private HashSet<IHeartbeatTarget> SliceOf(IHeartbeatTarget target) =>
        _slices[(uint)System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(target) % (uint)_slices.Length];

    private void Tick()
    {
        IHeartbeatTarget[] snapshot;
        int count;
        lock (_gate)
        {
            // A tick more than 50 ms late: the process stalled, and the time lost is not silence (see the remarks).
            var now = TimeProvider.GetTimestamp();
            var late = now - _lastTick - ToTimestamp(TickPeriod);
            if (late > ToTimestamp(s_stallThreshold))
            {
                Volatile.Write(ref _stalled, _stalled + late);
            }

            _lastTick = now;
            var slice = _slices[_slice];
            _slice = (_slice + 1) % _slices.Length;
            count = slice.Count;
            snapshot = System.Buffers.ArrayPool<IHeartbeatTarget>.Shared.Rent(Math.Max(count, 1));
            slice.CopyTo(snapshot);
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
