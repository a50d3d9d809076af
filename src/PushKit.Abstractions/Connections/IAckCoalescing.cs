namespace PushKit.Connections;

/// <summary>
/// A connection whose acks may be coalesced (the client's, <c>PushClientOptions.AckDelay</c>): an ack with nothing else
/// to send waits up to <see cref="AckDelay"/> so that one ack covers everything that arrived meanwhile (on SSE and
/// long-polling every upstream batch is a request of its own). Acks are cumulative, so waiting loses nothing; it only
/// holds the peer's messages in its buffer a little longer.
/// </summary>
internal interface IAckCoalescing
{
    /// <summary>How long an ack-only batch may wait for more to acknowledge.</summary>
    TimeSpan AckDelay { get; }
}
