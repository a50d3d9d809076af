namespace PushKit.Delivery;

/// <summary>Bounds of a session end's unacknowledged outbound buffer, and the policy when it is full.</summary>
internal sealed record BufferLimits(int MaxMessages, long MaxBytes, PushBufferFullPolicy Policy);
