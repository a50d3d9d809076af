using System.Buffers;
using System.Net.WebSockets;
using System.Runtime.CompilerServices;
using PushKit.Delivery;
using PushKit.Protocol;

namespace PushKit.Connections;

/// <summary>
/// A <see cref="IPushTransportConnection"/> over a <see cref="WebSocket"/>: each batch is one WebSocket text message.
/// Used by both the client (<c>ClientWebSocket</c>) and the server (an accepted WebSocket).
/// </summary>
internal sealed class WebSocketTransportConnection : IPushTransportConnection, IAckCoalescing, IReleasesIdleBuffer
{
    private const int ReadChunk = 4096;
    private static readonly TimeSpan s_closeLinger = TimeSpan.FromMilliseconds(250);
    private readonly WebSocket _socket;
    private readonly int _maxReceiveBytes;

    // The rest of a message refused as too big is still to come: the next receive skips it (the engine's drain reads
    // on to the peer's close after the refusal, and would otherwise refuse the same message again and give up).
    private bool _skipRestOfMessage;

    public WebSocketTransportConnection(WebSocket socket, int maxReceiveBytes)
    {
        _socket = socket;
        _maxReceiveBytes = maxReceiveBytes;
    }

    public string TransportName => PushProtocol.Transports.WebSocket;

    /// <summary>How long an ack-only frame may wait to acknowledge more (the client's; zero on the server: acks at once).</summary>
    public TimeSpan AckDelay { get; init; }

    public ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default) =>
        _socket.SendAsync(frames, WebSocketMessageType.Text, endOfMessage: true, cancellationToken);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default)
    {
        try
        {
            if (_skipRestOfMessage)
            {
                var sink = destination.GetMemory(ReadChunk);
                ValueWebSocketReceiveResult skipped;
                do
                {
                    skipped = await _socket.ReceiveAsync(sink, cancellationToken).ConfigureAwait(false);
                    if (skipped.MessageType == WebSocketMessageType.Close)
                    {
                        return Closed();
                    }
                }
                while (!skipped.EndOfMessage);

                _skipRestOfMessage = false;
            }

            // Wait for the next message with a zero-byte read, so that an idle connection holds no buffer: the
            // buffer kept from the last batch goes back to the pool unless the next message is already here.
            var next = _socket.ReceiveAsync(Memory<byte>.Empty, cancellationToken);
            if (!next.IsCompleted && destination is PooledBufferWriter idle)
            {
                idle.Release();
            }

            var first = await next.ConfigureAwait(false);
            if (first.MessageType == WebSocketMessageType.Close)
            {
                return Closed();
            }

            if (first.EndOfMessage)
            {
                // An empty message: an empty batch.
                return PushReceiveResult.Data;
            }

            var total = 0;
            while (true)
            {
                var memory = destination.GetMemory(ReadChunk);
                var result = await _socket.ReceiveAsync(memory, cancellationToken).ConfigureAwait(false);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    return Closed();
                }

                total += result.Count;
                if (total > _maxReceiveBytes)
                {
                    _skipRestOfMessage = !result.EndOfMessage;
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
        catch (WebSocketException ex) when (_socket.State == WebSocketState.Aborted && ex.WebSocketErrorCode != WebSocketError.ConnectionClosedPrematurely)
        {
            // The WebSocket layer refused what the peer sent (invalid UTF-8: 1007; a bad frame header: 1002), queued its
            // close frame and gave up on the socket. Tearing the connection down at once would reset it and could
            // destroy that close before the peer reads it: linger a moment first.
            try
            {
                await Task.Delay(s_closeLinger, TimeProvider.System, cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }

            throw;
        }
        catch (WebSocketException) when (_socket.State == WebSocketState.CloseSent)
        {
            // The close frame went out and the peer has yet to answer: let it, before the connection is dropped.
            await AwaitPeerCloseAsync().ConfigureAwait(false);
            throw;
        }
    }

    private async Task AwaitPeerCloseAsync()
    {
        var scratch = ArrayPool<byte>.Shared.Rent(1024);
        // Socket-level grace: real time, whatever clock the session runs on.
        using var grace = new CancellationTokenSource(TimeSpan.FromSeconds(2), TimeProvider.System);
        try
        {
            while ((await _socket.ReceiveAsync(scratch.AsMemory(), grace.Token).ConfigureAwait(false)).MessageType != WebSocketMessageType.Close)
            {
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException or ObjectDisposedException)
        {
            // The peer did not answer in time, or is gone.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    private PushReceiveResult Closed()
    {
        var code = _socket.CloseStatus is { } status and >= (WebSocketCloseStatus)1000 and <= (WebSocketCloseStatus)4999 ? (PushCloseCode?)(int)status : null;
        return PushReceiveResult.Closed(code, _socket.CloseStatusDescription);
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

    public void Abort()
    {
        // A socket that closed, or that failed on its own (after sending its close, say, for invalid UTF-8), has
        // nothing left to abort: aborting it again would reset the TCP connection and could destroy that close frame
        // before the peer reads it. The transport ends when its owner lets go of it.
        if (_socket.State is WebSocketState.Closed or WebSocketState.Aborted)
        {
            return;
        }

        _socket.Abort();
    }

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }

    // A WebSocket close reason is limited to 123 UTF-8 bytes.
    private static string? Truncate(string? reason) =>
        reason is null || System.Text.Encoding.UTF8.GetByteCount(reason) <= 123 ? reason : reason[..Math.Min(reason.Length, 60)];
}
