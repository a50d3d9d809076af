namespace PushKit.Connections;

/// <summary>
/// A connection that carries acks in requests it makes anyway (long-polling: every poll says how far the client has
/// received). The delivery engine hands it <see cref="TakeDueAck"/> when the connection starts; an ack taken that way
/// is not sent again as a frame, so a long-polling client that only receives sends no POST at all.
/// </summary>
internal interface IAcksInRequests
{
    /// <summary>
    /// Takes the ack that is due: the sequence number of the last message handed to the application, or 0 when no ack
    /// is due. Set by the delivery engine.
    /// </summary>
    Func<long>? TakeDueAck { get; set; }
}
