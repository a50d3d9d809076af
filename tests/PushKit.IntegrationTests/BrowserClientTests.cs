using System.Diagnostics.Metrics;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using PuppeteerSharp;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>
/// The minimal JavaScript clients of docs/protocol.md §12.2 (WebSocket) and §12.3 (Server-Sent Events), taken from
/// the document as it is printed, run in a real headless Chromium against a real server behind a TCP proxy that cuts
/// connections. The document says they negotiate, deliver in order exactly once, acknowledge, and replay and resume
/// after a lost connection, both ways: these tests hold it to that, so a reader who copies them gets working code.
/// </summary>
public sealed class BrowserClientTests(Chromium chromium) : IClassFixture<Chromium>
{
    private const int PerPhase = 20;

    // websocket-direct: the WebSocket sketch against an endpoint with the direct WebSocket listener (UsePushKitWebSockets).
    public static TheoryData<string> Sketches => new() { "websocket", "sse", "websocket-direct" };

    [SkippableTheory]
    [MemberData(nameof(Sketches))]
    public async Task The_documented_client_delivers_both_ways_exactly_once_in_order_across_cut_connections(string transport)
    {
        chromium.SkipIfMissing();
        var collector = new Collector();
        var direct = transport == "websocket-direct";
        transport = direct ? "websocket" : transport;
        var httpWebSocketRequests = 0;
        await using var server = await PushTestServer.StartAsync(
            push => push.AddCollector(collector),
            configureBuilder: b =>
            {
                if (direct)
                {
                    b.WebHost.ConfigureKestrel(k => k.ConfigureEndpointDefaults(l => l.UsePushKitWebSockets("/push")));
                }
            },
            configureApp: app =>
            {
                app.Use((context, next) =>
                {
                    if (context.Request.Path.StartsWithSegments("/push/ws"))
                    {
                        Interlocked.Increment(ref httpWebSocketRequests);
                    }

                    return next(context);
                });
                app.MapGet("/client.html", () => Results.Content(Page, "text/html; charset=utf-8"));
            });
        await using var proxy = new ChaosProxy(server.Root);
        using var acknowledged = new MetricCollector<long>(
            server.Services.GetRequiredService<IMeterFactory>(), PushKitMetrics.MeterName, "pushkit.server.messages.acknowledged");
        await using var page = await OpenPageAsync(new Uri(proxy.Root, "/client.html"));

        // Negotiate and connect through the proxy, exactly as the sketch does.
        await page.EvaluateExpressionAsync($"start('{transport}')").WaitAsync(TestTimeouts.Default);
        var session = await collector.Started.Task.WaitAsync(TestTimeouts.Default);

        // A healthy connection: both directions, and the browser's acks reach the server.
        await SendBothWaysAsync(server, page, session, from: 0);
        await WaitForBrowserAsync(page, PerPhase);
        var up = await ServerReceivedAsync(collector, PerPhase);
        Assert.Equal(Numbered("up", PerPhase), up);
        await acknowledged.WaitForSumAsync(PerPhase);

        // The network drops: what either side sends meanwhile goes on the resumed session.
        proxy.CutAll();
        await SendBothWaysAsync(server, page, session, from: PerPhase);
        await WaitForBrowserAsync(page, 2 * PerPhase);
        up.AddRange(await ServerReceivedAsync(collector, PerPhase));

        // The browser receives, but its acks are lost: the server sends those messages again on the next
        // connection (or, over SSE, learns from Last-Event-ID that it need not), and the browser applies each once.
        proxy.DropUpstream = true;
        await ServerSendsAsync(server, session, from: 2 * PerPhase);
        await WaitForBrowserAsync(page, 3 * PerPhase);
        proxy.DropUpstream = false;
        proxy.CutAll();
        await acknowledged.WaitForSumAsync(3 * PerPhase);

        // The server receives, but its acks are lost: the browser sends those messages again, and the server
        // applies each once. (Over SSE the first POST's response is lost too, and the sketch's POSTs wait for one
        // another: the rest follow once the cut fails that POST.)
        proxy.DropDownstream = true;
        await BrowserSendsAsync(page, from: 2 * PerPhase);
        up.AddRange(await ServerReceivedAsync(collector, 1));
        proxy.DropDownstream = false;
        proxy.CutAll();
        up.AddRange(await ServerReceivedAsync(collector, PerPhase - 1));

        // And on: one more exchange after the replays, which would show any repeat of the phases before it.
        await SendBothWaysAsync(server, page, session, from: 3 * PerPhase);
        await WaitForBrowserAsync(page, 4 * PerPhase);
        up.AddRange(await ServerReceivedAsync(collector, PerPhase));
        await acknowledged.WaitForSumAsync(4 * PerPhase);

        Assert.Equal(Numbered("down", 4 * PerPhase), await page.EvaluateExpressionAsync<string[]>("window.pushLog.received"));
        Assert.Equal(Numbered("up", 4 * PerPhase), up);
        Assert.Equal(4 * PerPhase, collector.Count);
        Assert.Equal(0, await page.EvaluateExpressionAsync<int>("window.pushLog.gaps"));
        Assert.Empty(await page.EvaluateExpressionAsync<string[]>("window.pushLog.errors"));
        Assert.True(proxy.Cuts >= 3, $"The proxy cut {proxy.Cuts} connections; each CutAll should have cut the live one.");

        if (direct)
        {
            // Every WebSocket the browser opened (the first and each resume) was taken below the HTTP server.
            Assert.Equal(0, Volatile.Read(ref httpWebSocketRequests));
        }

        // close() ends the session with 1000 on the server.
        await page.EvaluateExpressionAsync("window.pushClient.close()").WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
    }

    /// <summary>The server sends down{from}… to the session, and the browser sends up{from}… to the server, at once.</summary>
    private static Task SendBothWaysAsync(PushTestServer server, IPage page, IPushSession session, int from) =>
        Task.WhenAll(BrowserSendsAsync(page, from), ServerSendsAsync(server, session, from));

    private static Task BrowserSendsAsync(IPage page, int from) =>
        page.EvaluateExpressionAsync($"for (let i = {from}; i < {from + PerPhase}; i++) window.pushClient.send('up' + i)")
            .WaitAsync(TestTimeouts.Default);

    private static async Task ServerSendsAsync(PushTestServer server, IPushSession session, int from)
    {
        for (var i = from; i < from + PerPhase; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(session.SessionId, PushMessage.FromString($"down{i}")).AsTask().WaitAsync(TestTimeouts.Default));
        }
    }

    private static async Task WaitForBrowserAsync(IPage page, int count)
    {
        try
        {
            await page.WaitForFunctionAsync(
                $"() => window.pushLog.received.length >= {count}",
                new WaitForFunctionOptions { Timeout = (int)TestTimeouts.Default.TotalMilliseconds, PollingInterval = 20 });
        }
        catch (WaitTaskTimeoutException)
        {
            var log = await page.EvaluateExpressionAsync<JsonElement>("window.pushLog");
            Assert.Fail($"The browser had not received {count} messages: {log}");
        }
    }

    private static async Task<List<string>> ServerReceivedAsync(Collector collector, int count) =>
        [.. (await collector.TakeAsync(count)).Select(m => m.GetString())];

    private static string[] Numbered(string prefix, int count) => [.. Enumerable.Range(0, count).Select(i => $"{prefix}{i}")];

    private async Task<IPage> OpenPageAsync(Uri url)
    {
        var page = await chromium.Browser.NewPageAsync().WaitAsync(TestTimeouts.Default);
        var response = await page.GoToAsync(url.ToString()).WaitAsync(TestTimeouts.Default);
        Assert.True(response.Ok, $"GET {url}: {response.Status}");
        return page;
    }

    /// <summary>The test page: both sketches verbatim from docs/protocol.md, and a few lines that drive them.</summary>
    private static readonly string Page = BuildPage();

    private static string BuildPage()
    {
        var doc = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "docs", "protocol.md"));
        var page = new StringBuilder();
        page.AppendLine("<!doctype html><meta charset=\"utf-8\"><title>PushKit sketches</title><script>");
        page.AppendLine(JsBlockAfter(doc, "### 12.2 Minimal JavaScript client over WebSocket"));
        page.AppendLine(JsBlockAfter(doc, "### 12.3 Minimal JavaScript client over Server-Sent Events"));
        page.AppendLine("""
            window.pushLog = { received: [], gaps: 0, errors: [] };
            window.addEventListener("error", e => window.pushLog.errors.push(String(e.message)));
            window.addEventListener("unhandledrejection", e => window.pushLog.errors.push(String(e.reason)));
            window.start = async transport => {
              const connect = transport === "websocket" ? connectPush : connectPushSse;
              window.pushClient = await connect(`${location.origin}/push`,
                f => window.pushLog.received.push(f.data), n => { window.pushLog.gaps += n; });
            };
            """);
        page.AppendLine("</script>");
        return page.ToString();
    }

    private static string JsBlockAfter(string doc, string heading)
    {
        var at = doc.IndexOf(heading, StringComparison.Ordinal);
        Assert.True(at >= 0, $"docs/protocol.md has no heading '{heading}'.");
        var start = doc.IndexOf("```js\n", at, StringComparison.Ordinal);
        Assert.True(start >= 0, $"docs/protocol.md has no ```js block after '{heading}'.");
        start += "```js\n".Length;
        var end = doc.IndexOf("\n```", start, StringComparison.Ordinal);
        return doc[start..end];
    }
}
