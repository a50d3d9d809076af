using PushKit.Delivery;

namespace PushKit.Connections;

/// <summary>
/// A connection that hands a <see cref="PooledBufferWriter"/>'s array back to the pool itself, at the moment it finds
/// nothing to read and goes idle (the WebSocket's zero-byte read that does not complete at once). The read loop then
/// keeps the array from one batch to the next while data keeps coming. Returning it after every batch made a busy
/// connection rent it again for the next one, grown by doubling from 4 KB, and with a thousand connections receiving
/// at once the shared pool ran dry: every batch allocated buffers that then outlived a collection.
/// </summary>
internal interface IReleasesIdleBuffer
{
}
