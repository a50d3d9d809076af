using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Configuration;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>How the reverse proxy misbehaves.</summary>
public enum ProxyMode
{
    /// <summary>Forwards everything faithfully.</summary>
    Transparent,

    /// <summary>Refuses WebSocket upgrades (403), as many corporate proxies do.</summary>
    RefuseWebSockets,

    /// <summary>Refuses WebSocket upgrades and buffers every response until it is complete, which holds SSE streams back forever.</summary>
    RefuseWebSocketsAndBuffer,
}

/// <summary>A real reverse proxy (YARP on Kestrel, 127.0.0.1, free port) in front of a test server.</summary>
public sealed class TestProxy : IAsyncDisposable
{
    private readonly WebApplication _app;

    private TestProxy(WebApplication app, Uri root, ModeHolder mode)
    {
        _app = app;
        Root = root;
        _mode = mode;
    }

    private readonly ModeHolder _mode;

    /// <summary>How the proxy behaves from now on (new requests).</summary>
    public ProxyMode Mode
    {
        get => _mode.Value;
        set => _mode.Value = value;
    }

    private sealed class ModeHolder
    {
        public volatile ProxyMode Value;
    }

    public Uri Root { get; }

    public Uri PushUrl => new(Root, "/push");

    public static async Task<TestProxy> StartAsync(Uri upstream, ProxyMode mode)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel().UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Services.AddReverseProxy().LoadFromMemory(
            [new RouteConfig { RouteId = "all", ClusterId = "upstream", Match = new RouteMatch { Path = "{**rest}" } }],
            [new ClusterConfig { ClusterId = "upstream", Destinations = new Dictionary<string, DestinationConfig> { ["server"] = new() { Address = upstream.ToString() } } }]);

        var app = builder.Build();
        var current = new ModeHolder { Value = mode };
        {
            app.Use(async (context, next) =>
            {
                if (current.Value is ProxyMode.RefuseWebSockets or ProxyMode.RefuseWebSocketsAndBuffer
                    && string.Equals(context.Request.Headers.Upgrade, "websocket", StringComparison.OrdinalIgnoreCase))
                {
                    context.Response.StatusCode = StatusCodes.Status403Forbidden;
                    await context.Response.WriteAsync("WebSockets are not allowed through this proxy.");
                    return;
                }

                await next(context);
            });
        }

        app.Use((context, next) => current.Value == ProxyMode.RefuseWebSocketsAndBuffer ? BufferWholeResponseAsync(context, next) : next(context));

        app.MapReverseProxy();
        await app.StartAsync().WaitAsync(TestTimeouts.Default);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new TestProxy(app, new Uri(address), current);
    }

    /// <summary>Holds the whole response body back until the upstream response is complete, then sends it at once.</summary>
    private static async Task BufferWholeResponseAsync(HttpContext context, RequestDelegate next)
    {
        var original = context.Features.Get<IHttpResponseBodyFeature>()!;
        using var buffer = new MemoryStream();
        var buffering = new StreamResponseBodyFeature(buffer, original);
        context.Features.Set<IHttpResponseBodyFeature>(buffering);
        try
        {
            await next(context);
        }
        finally
        {
            context.Features.Set(original);
        }

        if (!context.RequestAborted.IsCancellationRequested)
        {
            buffer.Position = 0;
            await buffer.CopyToAsync(original.Stream, context.RequestAborted);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().WaitAsync(TestTimeouts.Default);
        await _app.DisposeAsync();
    }
}
