using System.Diagnostics;
using System.Diagnostics.Metrics;
using PushKit.Delivery;

namespace PushKit.Server.Diagnostics;

/// <summary>
/// The server's instruments, on one <see cref="Meter"/> made through the application's <see cref="IMeterFactory"/>
/// (so that a test host, or two hosts in one process, each see only their own). Every method is cheap when nobody
/// listens; none is called once per recipient of a broadcast.
/// </summary>
internal sealed class ServerMetrics : IDeliveryMetrics
{
    internal const string TransportTag = "pushkit.transport";
    internal const string ConnectionEndTag = "pushkit.connection.end";
    internal const string CloseCodeTag = "pushkit.close_code";

    private readonly UpDownCounter<long> _activeConnections;
    private readonly Histogram<double> _connectionDuration;
    private readonly UpDownCounter<long> _activeSessions;
    private readonly Counter<long> _sessionsEnded;
    private readonly Counter<long> _messagesSent;
    private readonly Counter<long> _messagesAcknowledged;
    private readonly Counter<long> _messagesReplayed;
    private readonly Counter<long> _messagesDropped;
    private readonly Counter<long> _messagesReceived;
    private readonly TimeProvider _timeProvider;

    public ServerMetrics(IMeterFactory meterFactory, TimeProvider timeProvider)
    {
        _timeProvider = timeProvider;
        var meter = meterFactory.Create(PushKitMetrics.MeterName);
        _activeConnections = meter.CreateUpDownCounter<long>(
            "pushkit.server.active_connections", "{connection}", "Connections currently carrying a session.");
        const string durationName = "pushkit.server.connection.duration";
        const string durationDescription = "How long connections lasted, from carrying their session until they ended.";
#if NET9_0_OR_GREATER
        // Connections live from milliseconds (a long-poll) to hours (a WebSocket): the default buckets stop at 10 s.
        _connectionDuration = meter.CreateHistogram<double>(
            durationName,
            "s",
            durationDescription,
            tags: null,
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.01, 0.1, 1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 14400] });
#else
        _connectionDuration = meter.CreateHistogram<double>(durationName, "s", durationDescription);
#endif
        _activeSessions = meter.CreateUpDownCounter<long>(
            "pushkit.server.active_sessions", "{session}", "Sessions that have not ended, connected or waiting for their client to resume.");
        _sessionsEnded = meter.CreateCounter<long>(
            "pushkit.server.sessions.ended", "{session}", "Sessions that ended, by close code (1000 closed, 4404 expired, 4429 too slow).");
        _messagesSent = meter.CreateCounter<long>(
            "pushkit.server.messages.sent", "{message}", "Messages queued for clients, one per recipient session.");
        _messagesAcknowledged = meter.CreateCounter<long>(
            "pushkit.server.messages.acknowledged", "{message}", "Messages to clients that the clients acknowledged.");
        _messagesReplayed = meter.CreateCounter<long>(
            "pushkit.server.messages.replayed", "{message}", "Messages sent again on a new connection because an earlier one was not acknowledged.");
        _messagesDropped = meter.CreateCounter<long>(
            "pushkit.server.messages.dropped", "{message}", "Unacknowledged messages dropped from a full buffer (BufferFullPolicy DropOldest).");
        _messagesReceived = meter.CreateCounter<long>(
            "pushkit.server.messages.received", "{message}", "Messages from clients handed to the application (repeats of an applied message id excluded).");
    }

    /// <summary>A connection starts carrying its session; returns the timestamp <see cref="ConnectionEnded"/> takes.</summary>
    public long ConnectionStarted(string transport)
    {
        if (_activeConnections.Enabled)
        {
            _activeConnections.Add(1, new KeyValuePair<string, object?>(TransportTag, transport));
        }

        return _timeProvider.GetTimestamp();
    }

    /// <summary>A connection counted by <see cref="ConnectionStarted"/> has ended.</summary>
    public void ConnectionEnded(string transport, long startedAt, ConnectionEndKind? kind)
    {
        if (_activeConnections.Enabled)
        {
            _activeConnections.Add(-1, new KeyValuePair<string, object?>(TransportTag, transport));
        }

        if (_connectionDuration.Enabled)
        {
            var end = kind switch
            {
                ConnectionEndKind.ClosedByPeer => "closed_by_client",
                ConnectionEndKind.ClosedLocally => "closed_by_server",
                _ => "lost",
            };
            _connectionDuration.Record(
                _timeProvider.GetElapsedTime(startedAt).TotalSeconds,
                new KeyValuePair<string, object?>(TransportTag, transport),
                new KeyValuePair<string, object?>(ConnectionEndTag, end));
        }
    }

    public void SessionCreated() => _activeSessions.Add(1);

    public void SessionEnded(PushCloseCode code)
    {
        _activeSessions.Add(-1);
        if (_sessionsEnded.Enabled)
        {
            _sessionsEnded.Add(1, new KeyValuePair<string, object?>(CloseCodeTag, (int)code));
        }
    }

    public void MessagesSent(long count)
    {
        if (count > 0)
        {
            _messagesSent.Add(count);
        }
    }

    public void MessageReceived() => _messagesReceived.Add(1);

    public void Acknowledged(long count) => _messagesAcknowledged.Add(count);

    public void Replayed(long count) => _messagesReplayed.Add(count);

    public void Dropped(long count) => _messagesDropped.Add(count);
}
