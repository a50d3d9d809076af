using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using PushKit.Connections;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

/// <summary>
/// A WebSocket connection keeps its receive buffer while messages keep coming and returns it to the pool when it
/// finds nothing to read: a busy connection does not rent (and regrow) a buffer per batch, an idle one holds none.
/// Over a real loopback TCP connection; the peer writes raw WebSocket frames, so that two messages arrive together.
/// </summary>
public sealed class IdleBufferTests : IAsyncLifetime
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private TcpClient? _client;
    private Socket? _server;
    private WebSocket? _socket;

    public async Task InitializeAsync()
    {
        _listener.Start();
        _client = new TcpClient();
        var accepting = _listener.AcceptSocketAsync();
        await _client.ConnectAsync(IPAddress.Loopback, ((IPEndPoint)_listener.LocalEndpoint).Port).WaitAsync(s_timeout);
        _server = await accepting.WaitAsync(s_timeout);

        // The connection under test is the client end; the server end writes unmasked frames by hand.
        _socket = WebSocket.CreateFromStream(_client.GetStream(), new WebSocketCreationOptions { IsServer = false, KeepAliveInterval = TimeSpan.Zero });
    }

    public Task DisposeAsync()
    {
        _socket?.Dispose();
        _client?.Dispose();
        _server?.Dispose();
        _listener.Stop();
        return Task.CompletedTask;
    }

    [Fact]
    public async Task A_connection_that_finds_nothing_to_read_returns_its_buffer_before_it_waits()
    {
        var connection = new WebSocketTransportConnection(_socket!, 1 << 20);
        var buffer = new PooledBufferWriter();
        buffer.Write<byte>("kept from the last batch"u8);
        buffer.Reset();
        Assert.True(buffer.HoldsBuffer);

        var receive = connection.ReceiveAsync(buffer).AsTask();
        Assert.False(receive.IsCompleted);
        Assert.False(buffer.HoldsBuffer);

        await _server!.SendAsync(TextFrame("{\"type\":\"ping\"}")).WaitAsync(s_timeout);
        Assert.False((await receive.WaitAsync(s_timeout)).IsClosed);
        Assert.Equal(2, buffer.Rentals);
        Assert.Equal("{\"type\":\"ping\"}", System.Text.Encoding.UTF8.GetString(buffer.WrittenMemory.Span));
    }

    [Fact]
    public async Task A_connection_with_the_next_message_already_there_keeps_its_buffer()
    {
        var connection = new WebSocketTransportConnection(_socket!, 1 << 20);
        var buffer = new PooledBufferWriter();

        // Two messages in one TCP write: when the first has been read, the second is waiting.
        await _server!.SendAsync(TextFrame("{\"type\":\"ping\"}").Concat(TextFrame("{\"type\":\"pong\"}")).ToArray()).WaitAsync(s_timeout);
        Assert.False((await connection.ReceiveAsync(buffer).AsTask().WaitAsync(s_timeout)).IsClosed);
        Assert.Equal("{\"type\":\"ping\"}", System.Text.Encoding.UTF8.GetString(buffer.WrittenMemory.Span));
        Assert.Equal(1, buffer.Rentals);

        // Kept, not returned and rented again: the second message lands in the same array.
        buffer.Reset();
        Assert.False((await connection.ReceiveAsync(buffer).AsTask().WaitAsync(s_timeout)).IsClosed);
        Assert.Equal(1, buffer.Rentals);
        Assert.Equal("{\"type\":\"pong\"}", System.Text.Encoding.UTF8.GetString(buffer.WrittenMemory.Span));
    }

    // An unmasked text frame (server to client), short payloads only.
    private static byte[] TextFrame(string text)
    {
        var payload = System.Text.Encoding.UTF8.GetBytes(text);
        return [0x81, (byte)payload.Length, .. payload];
    }
}
