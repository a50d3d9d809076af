using System.Buffers;
using System.Net.WebSockets;
using PushKit.Protocol;

namespace PushKit.Connections;

/// <summary>
/// A <see cref="IPushTransportConnection"/> over a <see cref="WebSocket"/>: each batch is one WebSocket text message.
/// Used by both the client (<c>ClientWebSocket</c>) and the server (an accepted WebSocket).
/// </summary>
internal sealed class WebSocketTransportConnection : IPushTransportConnection
{
    private const int ReadChunk = 4096;
    private readonly WebSocket _socket;
    private readonly int _maxReceiveBytes;

    public WebSocketTransportConnection(WebSocket socket, int maxReceiveBytes)
    {
        _socket = socket;
        _maxReceiveBytes = maxReceiveBytes;
    }

    public string TransportName => PushProtocol.Transports.WebSocket;

    public ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default) =>
        _socket.SendAsync(frames, WebSocketMessageType.Text, endOfMessage: true, cancellationToken);

    public async ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default)
    {
        var total = 0;
        while (true)
        {
            var memory = destination.GetMemory(ReadChunk);
            var result = await _socket.ReceiveAsync(memory, cancellationToken).ConfigureAwait(false);
            if (result.MessageType == WebSocketMessageType.Close)
            {
                var code = _socket.CloseStatus is { } status and >= (WebSocketCloseStatus)1000 and <= (WebSocketCloseStatus)4999 ? (PushCloseCode?)(int)status : null;
                return PushReceiveResult.Closed(code, _socket.CloseStatusDescription);
            }

            total += result.Count;
            if (total > _maxReceiveBytes)
            {
                throw new PushProtocolException(
                    PushCloseCode.MessageTooBig,
                    $"A WebSocket message exceeded the limit of {_maxReceiveBytes} bytes.");
            }

            destination.Advance(result.Count);
            if (result.EndOfMessage)
            {
                return PushReceiveResult.Data;
            }
        }
    }

    public async ValueTask CloseAsync(PushCloseCode code, string? reason, CancellationToken cancellationToken = default)
    {
        if (_socket.State is not (WebSocketState.Open or WebSocketState.CloseReceived))
        {
            return;
        }

        try
        {
            await _socket.CloseOutputAsync((WebSocketCloseStatus)(int)code, Truncate(reason), cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is WebSocketException or ObjectDisposedException or OperationCanceledException or IOException or ArgumentException)
        {
            // The peer is gone already; nothing left to close gracefully.
        }
    }

    public void Abort() => _socket.Abort();

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }

    // A WebSocket close reason is limited to 123 UTF-8 bytes.
    private static string? Truncate(string? reason) =>
        reason is null || System.Text.Encoding.UTF8.GetByteCount(reason) <= 123 ? reason : reason[..Math.Min(reason.Length, 60)];
}
