namespace PushKit.Connections;

/// <summary>
/// A connection on which every upstream batch costs a request of its own (SSE and long-polling clients POST each
/// batch): an ack with nothing else to send waits up to <see cref="AckDelay"/> so that one request acknowledges
/// everything that arrived meanwhile. Acks are cumulative, so waiting loses nothing; it only holds the peer's
/// messages in its buffer a little longer.
/// </summary>
internal interface IAckCoalescing
{
    /// <summary>How long an ack-only batch may wait for more to acknowledge.</summary>
    TimeSpan AckDelay { get; }
}
