using System.Buffers;
using PushKit.Connections;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// A session that ends while one of its connections is being set up: the connection still tells its client why.
/// (DeliveryTests has the cases seen from a real client.)
/// </summary>
public class SessionEndRaceTests
{
    [Fact]
    public async Task A_connection_attached_after_the_end_while_the_last_one_still_closes_gets_the_close_too()
    {
        // A reconnect that authenticated just before the server ended the session reaches the session while the live
        // WebSocket run is still closing (waiting for the client's answer): it used to fail with "already has a live
        // connection", and its client, told nothing, started a new session.
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync("websocket");
        var session = (PushSession)await collector.Started.Task.WaitAsync(TestTimeouts.Default);

        await session.CloseAsync();
        var late = new RecordingConnection();
        var end = await session.RunConnectionAsync(late, CancellationToken.None).WaitAsync(TestTimeouts.Default);

        Assert.Equal(PushCloseCode.Normal, end.Code);
        Assert.Contains("\"type\":\"close\",\"code\":1000", late.SentText, StringComparison.Ordinal);
        await client.DisposeAsync();
    }

    /// <summary>A connection whose peer never speaks: it records what is sent on it.</summary>
    private sealed class RecordingConnection : IPushTransportConnection
    {
        private readonly List<string> _sent = [];

        public string TransportName => "websocket";

        public string SentText
        {
            get
            {
                lock (_sent)
                {
                    return string.Join("\n", _sent);
                }
            }
        }

        public ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default)
        {
            lock (_sent)
            {
                _sent.Add(System.Text.Encoding.UTF8.GetString(frames.Span));
            }

            return default;
        }

        public async ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default)
        {
            await Task.Delay(Timeout.Infinite, cancellationToken);
            throw new InvalidOperationException("Unreachable: the delay only ends by cancellation.");
        }

        public ValueTask CloseAsync(PushCloseCode code, string? reason, CancellationToken cancellationToken = default) => default;

        public void Abort()
        {
        }

        public ValueTask DisposeAsync() => default;
    }
}
