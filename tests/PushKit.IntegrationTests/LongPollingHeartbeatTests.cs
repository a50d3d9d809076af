using System.Globalization;
using System.Text.RegularExpressions;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// A long-polling client that acknowledges on its polls (protocol §9.3) and sends nothing else is alive: its polls
/// count for the heartbeat (§10), even when a busy server never needs to ping it.
/// </summary>
public sealed partial class LongPollingHeartbeatTests
{
    [Fact]
    public async Task A_client_that_only_polls_with_acks_is_not_closed_for_silence()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector), o =>
        {
            // Short enough to fail fast without the fix, long enough for a cold start's first requests.
            o.HeartbeatInterval = TimeSpan.FromMilliseconds(500);
            o.HeartbeatTimeout = TimeSpan.FromMilliseconds(1500);
            o.LongPollingTimeout = TimeSpan.FromSeconds(1);
        });
        var (sessionId, secret, negotiated) = await server.NegotiateRawAsync();
        Assert.True(negotiated.GetProperty("longPolling").GetProperty("acksInPoll").GetBoolean());
        var poll = $"{server.BaseUrl}/poll?session={Uri.EscapeDataString(sessionId)}&secret={Uri.EscapeDataString(secret)}";
        using (var opened = await server.Http.GetAsync(new Uri(poll + "&open=1")).WaitAsync(TestTimeouts.Default))
        {
            opened.EnsureSuccessStatusCode();
        }

        // The server is busy (a message every 100 ms, so it never pings); the client answers nothing but polls with
        // its ack, for more than two heartbeat timeouts.
        using var stop = new CancellationTokenSource();
        var broadcasting = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                await server.Sender.BroadcastAsync(PushMessage.FromString("tick"));
                await Task.Delay(100);
            }
        });

        long acked = 0;
        var received = 0;
        // Each poll's timing goes into the failure message: a close tells which poll waited too long.
        var trace = new System.Text.StringBuilder();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(4))
        {
            trace.Append(CultureInfo.InvariantCulture, $"poll@{clock.ElapsedMilliseconds} ");
            using var response = await server.Http.GetAsync(new Uri(poll + "&ack=" + acked.ToString(CultureInfo.InvariantCulture))).WaitAsync(TestTimeouts.Default);
            response.EnsureSuccessStatusCode();
            var body = await response.Content.ReadAsStringAsync();
            trace.Append(CultureInfo.InvariantCulture, $"got@{clock.ElapsedMilliseconds}:{body.Length} ");
            Assert.False(body.Contains("\"type\":\"close\"", StringComparison.Ordinal), body + trace);
            foreach (Match match in MessageSequence().Matches(body))
            {
                acked = Math.Max(acked, long.Parse(match.Groups[1].ValueSpan, CultureInfo.InvariantCulture));
                received++;
            }
        }

        await stop.CancelAsync();
        await broadcasting.WaitAsync(TestTimeouts.Default);
        Assert.True(received >= 10, $"the polls should have carried the ticks (got {received})");
        Assert.Equal(PushChannelState.Connected, server.Sessions.FindSession(sessionId)!.State);
    }

    [GeneratedRegex("\"type\":\"msg\",\"seq\":(\\d+)")]
    private static partial Regex MessageSequence();
}
