using System.Net.WebSockets;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>A hand-written, protocol-deviating server on 127.0.0.1 (no PushKit server code).</summary>
public sealed class FakePushServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private FakePushServer(WebApplication app, Uri root)
    {
        _app = app;
        BaseUrl = new Uri(root, "/push");
    }

    public Uri BaseUrl { get; }

    public static async Task<FakePushServer> StartAsync(Action<WebApplication> map)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel(k => k.Limits.MaxRequestBodySize = null).UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        var app = builder.Build();
        app.UseWebSockets();
        map(app);
        await app.StartAsync().WaitAsync(TestTimeouts.Default);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new FakePushServer(app, new Uri(address));
    }

    public async ValueTask DisposeAsync()
    {
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        try
        {
            await _app.StopAsync(stop.Token).WaitAsync(TimeSpan.FromSeconds(5));
        }
        catch (Exception)
        {
        }

        await _app.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(5)).ContinueWith(_ => { }, TaskScheduler.Default);
    }

    public static string NegotiateJson(
        string transports = "[\"websocket\",\"sse\",\"longpolling\"]",
        string heartbeat = "{\"intervalMs\":15000,\"timeoutMs\":30000}",
        string limits = "{\"maxMessageBytes\":1048576}",
        string sessionId = "\"sess1\"",
        string extra = "") =>
        $"{{\"protocolVersion\":1,{extra}\"sessionId\":{sessionId},\"resumeSecret\":\"secret1\",\"transports\":{transports},\"limits\":{limits},\"heartbeat\":{heartbeat},\"resumeWindowMs\":120000,\"longPolling\":{{\"pollTimeoutMs\":25000,\"acksInPoll\":true}}}}";

    public static void MapNegotiate(WebApplication app, Func<string> json) =>
        app.MapPost("/push/negotiate", async ctx =>
        {
            ctx.Response.ContentType = "application/json; charset=utf-8";
            await ctx.Response.WriteAsync(json());
        });

    public static void MapWebSocket(WebApplication app, Func<WebSocket, HttpContext, Task> handler) =>
        app.Map("/push/ws", async ctx =>
        {
            if (!ctx.WebSockets.IsWebSocketRequest)
            {
                ctx.Response.StatusCode = 400;
                return;
            }

            using var ws = await ctx.WebSockets.AcceptWebSocketAsync();
            try
            {
                await handler(ws, ctx);
            }
            catch (Exception) when (ctx.RequestAborted.IsCancellationRequested || ws.State != WebSocketState.Open)
            {
            }
        });

    public static async Task StartSseAsync(HttpContext ctx)
    {
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache, no-store";
        await ctx.Response.WriteAsync("retry: 2000\nevent: open\ndata: {}\n\n");
        await ctx.Response.Body.FlushAsync();
    }

    public static Task SendTextAsync(WebSocket ws, string text) =>
        ws.SendAsync(Encoding.UTF8.GetBytes(text), WebSocketMessageType.Text, true, CancellationToken.None);

    public static async Task<string?> ReceiveTextAsync(WebSocket ws, CancellationToken token)
    {
        var buffer = new byte[64 * 1024];
        using var ms = new MemoryStream();
        while (true)
        {
            var r = await ws.ReceiveAsync(buffer, token);
            if (r.MessageType == WebSocketMessageType.Close)
            {
                return null;
            }

            ms.Write(buffer, 0, r.Count);
            if (r.EndOfMessage)
            {
                return Encoding.UTF8.GetString(ms.ToArray());
            }
        }
    }
}
