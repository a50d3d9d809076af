using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using PushKit.Connections;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

/// <summary>
/// A WebSocket message over the limit is refused (4413) while the peer may still be sending it. The connection then
/// reads on until the peer's close (the engine's drain), so that the close frame is not lost to a TCP reset: the rest
/// of the refused message must be skipped there, not refused again. Refused again, the drain gave up and the connection
/// was torn down with the peer's data unread, and a peer that was still sending saw a reset instead of the 4413.
/// Over a real loopback TCP connection.
/// </summary>
public sealed class OversizeMessageTests : IAsyncLifetime
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private TcpClient? _client;
    private Socket? _server;
    private WebSocket? _peer;
    private WebSocket? _socket;

    public async Task InitializeAsync()
    {
        _listener.Start();
        _client = new TcpClient();
        var accepting = _listener.AcceptSocketAsync();
        await _client.ConnectAsync(IPAddress.Loopback, ((IPEndPoint)_listener.LocalEndpoint).Port).WaitAsync(s_timeout);
        _server = await accepting.WaitAsync(s_timeout);
        _peer = WebSocket.CreateFromStream(_client.GetStream(), new WebSocketCreationOptions { IsServer = false, KeepAliveInterval = TimeSpan.Zero });
        _socket = WebSocket.CreateFromStream(new NetworkStream(_server), new WebSocketCreationOptions { IsServer = true, KeepAliveInterval = TimeSpan.Zero });
    }

    public Task DisposeAsync()
    {
        _socket?.Dispose();
        _peer?.Dispose();
        _client?.Dispose();
        _server?.Dispose();
        _listener.Stop();
        return Task.CompletedTask;
    }

    [Fact]
    public async Task After_a_message_is_refused_as_too_big_its_rest_is_skipped_and_what_follows_is_read()
    {
        const int Limit = 4096;
        var connection = new WebSocketTransportConnection(_socket!, Limit);
        var big = new byte[3 * Limit];
        big.AsSpan().Fill((byte)' ');

        // More than the limit, in fragments, with the message not yet finished.
        for (var i = 0; i < Limit + 1024; i += 512)
        {
            await _peer!.SendAsync(big.AsMemory(i, 512), WebSocketMessageType.Text, endOfMessage: false, CancellationToken.None).AsTask().WaitAsync(s_timeout);
        }

        var refused = await Assert.ThrowsAsync<PushProtocolException>(() => connection.ReceiveAsync(new PooledBufferWriter()).AsTask().WaitAsync(s_timeout));
        Assert.Equal(PushCloseCode.MessageTooBig, refused.CloseCode);

        // The peer finishes the message (more than the limit again), sends one more and closes.
        for (var i = Limit + 1024; i < big.Length; i += 512)
        {
            await _peer!.SendAsync(big.AsMemory(i, 512), WebSocketMessageType.Text, endOfMessage: i + 512 == big.Length, CancellationToken.None).AsTask().WaitAsync(s_timeout);
        }

        await _peer!.SendAsync("{\"type\":\"ping\"}"u8.ToArray(), WebSocketMessageType.Text, endOfMessage: true, CancellationToken.None).WaitAsync(s_timeout);
        await _peer.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None).WaitAsync(s_timeout);

        var buffer = new PooledBufferWriter();
        var next = await connection.ReceiveAsync(buffer).AsTask().WaitAsync(s_timeout);
        Assert.False(next.IsClosed);
        Assert.Equal("{\"type\":\"ping\"}", System.Text.Encoding.UTF8.GetString(buffer.WrittenMemory.Span));

        buffer.Reset();
        var close = await connection.ReceiveAsync(buffer).AsTask().WaitAsync(s_timeout);
        Assert.True(close.IsClosed);
        Assert.Equal(PushCloseCode.Normal, close.CloseCode);
    }

    [Fact]
    public async Task A_refused_message_that_ends_exactly_at_the_refusal_leaves_nothing_to_skip()
    {
        const int Limit = 1024;
        var connection = new WebSocketTransportConnection(_socket!, Limit);
        await _peer!.SendAsync(new byte[Limit + 1].Select(_ => (byte)' ').ToArray(), WebSocketMessageType.Text, endOfMessage: true, CancellationToken.None).WaitAsync(s_timeout);
        await _peer.SendAsync("{\"type\":\"ping\"}"u8.ToArray(), WebSocketMessageType.Text, endOfMessage: true, CancellationToken.None).WaitAsync(s_timeout);

        // Read in one chunk or several, the refused message ends with the read that refuses it: the next is whole.
        await Assert.ThrowsAsync<PushProtocolException>(() => connection.ReceiveAsync(new PooledBufferWriter()).AsTask().WaitAsync(s_timeout));
        var buffer = new PooledBufferWriter();
        Assert.False((await connection.ReceiveAsync(buffer).AsTask().WaitAsync(s_timeout)).IsClosed);
        Assert.Equal("{\"type\":\"ping\"}", System.Text.Encoding.UTF8.GetString(buffer.WrittenMemory.Span));
    }
}
