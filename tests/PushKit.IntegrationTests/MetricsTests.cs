using System.Diagnostics.Metrics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// The server's metrics (meter <c>PushKit.Server</c>, docs/observability.md) count what happens, on every transport:
/// sessions and connections while they live, messages each way, acknowledgements and replays.
/// </summary>
public class MetricsTests
{
    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Sessions_connections_and_messages_are_counted_while_they_live(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        using var metrics = new ServerMetricsCollectors(server);

        var client = await server.ConnectClientAsync(transport);
        await metrics.ActiveSessions.WaitForSumAsync(1);
        await metrics.ActiveConnections.WaitForSumAsync(1);
        Assert.All(metrics.ActiveConnections.GetMeasurementSnapshot(), m => Assert.Equal(transport, m.Tags["pushkit.transport"]));

        // Client to server: counted once handed to the application.
        for (var i = 0; i < 3; i++)
        {
            await client.SendStringAsync($"up{i}").AsTask().WaitAsync(TestTimeouts.Default);
        }

        await metrics.Received.WaitForSumAsync(3);

        // Server to client: one per recipient when queued, and acknowledged as the client takes them.
        Assert.Equal(1, await server.Sender.BroadcastAsync(PushMessage.FromString("down1")));
        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("down2")));
        await server.Sessions.FindSession(client.SessionId!)!.SendAsync(PushMessage.FromString("down3")).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(["down1", "down2", "down3"], (await client.ReadAsync(3)).Select(m => m.GetString()));
        await metrics.Sent.WaitForSumAsync(3);
        await metrics.Acknowledged.WaitForSumAsync(3);

        // The client closes its channel: the session ends with 1000, and nothing is left counted as live.
        await client.CloseAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        await metrics.Ended.WaitForSumAsync(1);
        Assert.Equal(1000, Assert.Single(metrics.Ended.GetMeasurementSnapshot()).Tags["pushkit.close_code"]);
        await metrics.ActiveSessions.WaitForSumAsync(0);
        await metrics.ActiveConnections.WaitForSumAsync(0);
        var duration = Assert.Single(metrics.ConnectionDuration.GetMeasurementSnapshot());
        Assert.Equal(transport, duration.Tags["pushkit.transport"]);
        Assert.InRange(duration.Value, 0, TestTimeouts.Default.TotalSeconds * 4);
        Assert.Equal(0, metrics.Replayed.GetMeasurementSnapshot().Sum(m => m.Value));
        Assert.Equal(0, metrics.Dropped.GetMeasurementSnapshot().Sum(m => m.Value));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task Messages_sent_again_on_a_new_connection_are_counted_as_replayed(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        using var metrics = new ServerMetricsCollectors(server);
        await using var proxy = new ChaosProxy(server.Root);
        var client = await server.ConnectClientAsync(transport, o =>
        {
            o.Url = proxy.PushUrl;
            o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
            o.MaxReconnectDelay = TimeSpan.FromMilliseconds(200);
            o.ConnectTimeout = TimeSpan.FromSeconds(3);
        });
        var session = (PushSession)server.Sessions.FindSession(client.SessionId!)!;

        // Written by the server, lost on the way: neither delivered nor acknowledged.
        proxy.BlackHole = true;
        for (var i = 1; i <= 3; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString($"m{i}")));
        }

        await Eventually.TrueAsync(() => session.Engine.SentThrough == 3);
        Assert.Equal(0, metrics.Replayed.GetMeasurementSnapshot().Sum(m => m.Value));

        // The connection breaks; the client resumes the session and the server sends the three again.
        proxy.CutAll();
        proxy.BlackHole = false;
        Assert.Equal(["m1", "m2", "m3"], (await client.ReadAsync(3)).Select(m => m.GetString()));
        await metrics.Replayed.WaitForSumAsync(3);
        await metrics.Acknowledged.WaitForSumAsync(3);
        Assert.Equal(3, metrics.Sent.GetMeasurementSnapshot().Sum(m => m.Value));
    }

    [Fact]
    public async Task Two_servers_in_one_process_count_only_their_own()
    {
        await using var first = await PushTestServer.StartAsync();
        await using var second = await PushTestServer.StartAsync();
        using var firstMetrics = new ServerMetricsCollectors(first);
        using var secondMetrics = new ServerMetricsCollectors(second);

        await first.ConnectClientAsync("websocket");
        await first.ConnectClientAsync("websocket");
        await second.ConnectClientAsync("websocket");
        await firstMetrics.ActiveSessions.WaitForSumAsync(2);
        await secondMetrics.ActiveSessions.WaitForSumAsync(1);
        Assert.Equal(2, await first.Sender.BroadcastAsync(PushMessage.FromString("hi")));
        await firstMetrics.Sent.WaitForSumAsync(2);
        Assert.Equal(0, secondMetrics.Sent.GetMeasurementSnapshot().Sum(m => m.Value));
    }

    /// <summary>A collector for each of the server's instruments, limited to the server's own meter factory.</summary>
    private sealed class ServerMetricsCollectors : IDisposable
    {
        public ServerMetricsCollectors(PushTestServer server)
        {
            var factory = server.Services.GetRequiredService<IMeterFactory>();
            ActiveSessions = new(factory, PushKitMetrics.MeterName, "pushkit.server.active_sessions");
            ActiveConnections = new(factory, PushKitMetrics.MeterName, "pushkit.server.active_connections");
            ConnectionDuration = new(factory, PushKitMetrics.MeterName, "pushkit.server.connection.duration");
            Ended = new(factory, PushKitMetrics.MeterName, "pushkit.server.sessions.ended");
            Sent = new(factory, PushKitMetrics.MeterName, "pushkit.server.messages.sent");
            Acknowledged = new(factory, PushKitMetrics.MeterName, "pushkit.server.messages.acknowledged");
            Replayed = new(factory, PushKitMetrics.MeterName, "pushkit.server.messages.replayed");
            Dropped = new(factory, PushKitMetrics.MeterName, "pushkit.server.messages.dropped");
            Received = new(factory, PushKitMetrics.MeterName, "pushkit.server.messages.received");
        }

        public MetricCollector<long> ActiveSessions { get; }

        public MetricCollector<long> ActiveConnections { get; }

        public MetricCollector<double> ConnectionDuration { get; }

        public MetricCollector<long> Ended { get; }

        public MetricCollector<long> Sent { get; }

        public MetricCollector<long> Acknowledged { get; }

        public MetricCollector<long> Replayed { get; }

        public MetricCollector<long> Dropped { get; }

        public MetricCollector<long> Received { get; }

        public void Dispose()
        {
            ActiveSessions.Dispose();
            ActiveConnections.Dispose();
            ConnectionDuration.Dispose();
            Ended.Dispose();
            Sent.Dispose();
            Acknowledged.Dispose();
            Replayed.Dispose();
            Dropped.Dispose();
            Received.Dispose();
        }
    }
}

internal static class MetricCollectorExtensions
{
    /// <summary>
    /// Waits until the values recorded so far add up to <paramref name="expected"/> (a counter's total, an up-down
    /// counter's current value); fails at once if they go past it.
    /// </summary>
    public static async Task WaitForSumAsync(this MetricCollector<long> collector, long expected)
    {
        using var cts = new CancellationTokenSource(TestTimeouts.Default);
        while (true)
        {
            var snapshot = collector.GetMeasurementSnapshot();
            var sum = snapshot.Sum(m => m.Value);
            if (sum == expected || (sum > expected && expected > 0))
            {
                Assert.Equal(expected, sum);
                return;
            }

            try
            {
                await collector.WaitForMeasurementsAsync(snapshot.Count + 1, cts.Token);
            }
            catch (OperationCanceledException) when (cts.IsCancellationRequested)
            {
                Assert.Fail($"{collector.Instrument?.Name}: the values add up to {sum}, not {expected}, after {TestTimeouts.Default}.");
            }
        }
    }
}
