using System.Net.WebSockets;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// How a WebSocket client's close is read (protocol §5.6): only a PushKit <c>close</c> frame with 1000 ends the
/// session; a WebSocket Close alone, whatever its status, leaves it resumable.
/// </summary>
public sealed class WebSocketCloseTests
{
    [Theory]
    [InlineData(WebSocketCloseStatus.Empty)] // a browser's ws.close(): a Close without a status (1005)
    [InlineData(WebSocketCloseStatus.NormalClosure)] // 1000 without the close frame: the server cannot tell it from 1005
    [InlineData(WebSocketCloseStatus.EndpointUnavailable)] // 1001, a page going away
    public async Task A_WebSocket_close_without_a_close_frame_leaves_the_session_resumable(WebSocketCloseStatus status)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        await using var raw = await server.ConnectRawAsync();
        var session = await collector.Started.Task.WaitAsync(TestTimeouts.Default);
        var disconnected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        session.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Disconnected)
            {
                disconnected.TrySetResult();
            }
        };

        // The close handshake completes: the server answers the Close.
        await raw.Socket.CloseAsync(status, null, CancellationToken.None).WaitAsync(TestTimeouts.Default);
        Assert.Equal(WebSocketState.Closed, raw.Socket.State);
        await disconnected.Task.WaitAsync(TestTimeouts.Default);

        Assert.False(collector.Ended.Task.IsCompleted);
        Assert.Same(session, server.Sessions.FindSession(raw.SessionId));

        // And the session resumes on a new connection.
        await using var again = await RawSocket.ConnectAsync(server.WebSocketUrl(raw.SessionId, raw.Secret), raw.SessionId, raw.Secret);
        await again.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"after\"}");
        Assert.Equal("after", (await collector.TakeAsync(1)).Single().GetString());
    }

    [Fact]
    public async Task A_close_frame_with_1000_ends_the_session_and_the_server_completes_the_close_handshake()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        await using var raw = await server.ConnectRawAsync();
        await collector.Started.Task.WaitAsync(TestTimeouts.Default);

        // A message and the close in one batch: the message is handled and acknowledged before the close is answered.
        await raw.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"last words\"}\n{\"type\":\"close\",\"code\":1000}");
        var ack = await raw.ReceiveContainingAsync("\"type\":\"ack\"");
        Assert.Contains("\"seq\":1", ack, StringComparison.Ordinal);

        // The server answers with a WebSocket Close carrying the same code, not a reset.
        var (closeStatus, _) = await raw.ReceiveCloseAsync();
        Assert.Equal(1000, closeStatus);
        await raw.Socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None).WaitAsync(TestTimeouts.Default);

        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        Assert.Equal("last words", (await collector.TakeAsync(1)).Single().GetString());
    }
}
