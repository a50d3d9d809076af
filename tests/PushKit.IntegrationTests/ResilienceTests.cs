using System.Globalization;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;
using Xunit.Abstractions;

namespace PushKit.IntegrationTests;

/// <summary>
/// Sessions outlive their connections: through a chaos proxy that cuts connections and black-holes traffic, every
/// message reaches the application exactly once, in order, both ways, on every transport.
/// </summary>
public class ResilienceTests(ITestOutputHelper output)
{
    private const int Messages = 5_000;

    private static Task<PushTestServer> StartServerAsync(Collector collector) =>
        PushTestServer.StartAsync(push => push.AddCollector(collector), o =>
        {
            o.HeartbeatInterval = TimeSpan.FromMilliseconds(400);
            o.HeartbeatTimeout = TimeSpan.FromMilliseconds(1500);
            o.LongPollingTimeout = TimeSpan.FromSeconds(1);
        });

    private static void FastReconnect(PushClientOptions o, string transport)
    {
        o.Transports.Clear();
        o.Transports.Add(Transports.ByName(transport));
        o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
        o.MaxReconnectDelay = TimeSpan.FromMilliseconds(300);
        o.ConnectTimeout = TimeSpan.FromSeconds(3);
        o.TransportDetectionTimeout = TimeSpan.FromSeconds(2);
        o.AckTimeout = TimeSpan.FromSeconds(90);
    }

    /// <summary>Sends <see cref="Messages"/> each way while <paramref name="chaos"/> runs; checks both sides received exactly 1..N in order.</summary>
    private async Task ExchangeUnderChaosAsync(string transport, Func<ChaosProxy, Task, Task> chaos)
    {
        var collector = new Collector();
        await using var server = await StartServerAsync(collector);
        await using var proxy = new ChaosProxy(server.Root);
        var client = server.CreateClient(o =>
        {
            o.Url = proxy.PushUrl;
            FastReconnect(o, transport);
        });
        var reconnects = 0;
        var resets = 0;
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                Interlocked.Increment(ref reconnects);
            }

            if (e.IsSessionReset)
            {
                Interlocked.Increment(ref resets);
            }
        };
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var sessionId = client.SessionId!;

        var upstream = Task.Run(async () =>
        {
            var sends = new List<Task>(Messages);
            for (var i = 1; i <= Messages; i++)
            {
                sends.Add(client.SendStringAsync(i.ToString(CultureInfo.InvariantCulture)).AsTask());
                if (i % 10 == 0)
                {
                    // Paced over a few seconds, so that the chaos hits the exchange many times.
                    await Task.Delay(5);
                }
            }

            await Task.WhenAll(sends);
        });
        var downstream = Task.Run(async () =>
        {
            for (var i = 1; i <= Messages; i++)
            {
                await server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString(i.ToString(CultureInfo.InvariantCulture)));
                if (i % 10 == 0)
                {
                    // Paced over a few seconds, so that the chaos hits the exchange many times.
                    await Task.Delay(5);
                }
            }
        });
        var received = client.ReadAsync(Messages, TimeSpan.FromSeconds(120));
        var done = Task.WhenAll(upstream, downstream, received);
        var chaosTask = chaos(proxy, done);

        await done.WaitAsync(TimeSpan.FromSeconds(150));
        await chaosTask;

        var expected = Enumerable.Range(1, Messages).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToList();
        Assert.Equal(expected, (await received).Select(m => m.GetString()).ToList());
        Assert.Equal(expected, (await collector.TakeAsync(Messages)).Select(m => m.GetString()).ToList());
        Assert.Equal(Messages, collector.Count);
        Assert.Equal(0, resets);
        Assert.True(reconnects > 0 && proxy.Cuts > 0, $"the chaos should have forced reconnects (cuts: {proxy.Cuts}, reconnects: {reconnects})");
        Assert.Equal(sessionId, client.SessionId);
        output.WriteLine($"{transport}: {Messages} messages each way, {proxy.Cuts} connections cut, {reconnects} reconnects, nothing lost or repeated.");
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public Task Nothing_is_lost_or_repeated_while_connections_are_cut_every_few_hundred_milliseconds(string transport) =>
        ExchangeUnderChaosAsync(transport, (proxy, done) => proxy.CutRepeatedlyAsync(TimeSpan.FromMilliseconds(300), done, seed: transport.Length));

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public Task Nothing_is_lost_or_repeated_through_multi_second_outages(string transport) =>
        ExchangeUnderChaosAsync(transport, async (proxy, done) =>
        {
            // Two-second black holes (connections look alive, nothing passes) then refused connections, every three seconds.
            for (var outage = 0; outage < 3 && !done.IsCompleted; outage++)
            {
                await Task.WhenAny(done, Task.Delay(TimeSpan.FromMilliseconds(700)));
                proxy.BlackHole = true;
                await Task.Delay(TimeSpan.FromSeconds(1));
                proxy.RefuseNew = true;
                proxy.CutAll();
                await Task.Delay(TimeSpan.FromSeconds(1));
                proxy.BlackHole = false;
                proxy.RefuseNew = false;
            }
        });
}
