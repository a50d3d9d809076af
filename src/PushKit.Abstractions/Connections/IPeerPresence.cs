namespace PushKit.Connections;

/// <summary>
/// A connection that can tell the client is there right now without it sending anything: a long-poll waiting at the
/// server. The heartbeat counts that as hearing from the client; a client that only polls (its acks ride on the polls)
/// sends nothing upstream, and a busy server, which never pings, would otherwise close it for silence.
/// </summary>
internal interface IPeerPresence
{
    /// <summary>Whether the client is waiting on this connection at this moment (a poll is held).</summary>
    bool PeerIsWaiting { get; }
}
