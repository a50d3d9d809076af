using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PushKit.Client;
using PushKit.Server;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>A real Kestrel server on 127.0.0.1 with a free port, hosting PushKit at /push.</summary>
public sealed class PushTestServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly List<IPushChannel> _clients = [];
    private readonly HttpClient _http = new();

    private PushTestServer(WebApplication app, Uri root)
    {
        _app = app;
        Root = root;
        BaseUrl = new Uri(root, "/push");
    }

    /// <summary>The server's root URL, for example http://127.0.0.1:41234/.</summary>
    public Uri Root { get; }

    /// <summary>The PushKit base URL (root + /push).</summary>
    public Uri BaseUrl { get; }

    public IServiceProvider Services => _app.Services;

    public IPushSender Sender => Services.GetRequiredService<IPushSender>();

    public IPushSessionRegistry Sessions => Services.GetRequiredService<IPushSessionRegistry>();

    public HttpClient Http => _http;

    public static async Task<PushTestServer> StartAsync(
        Action<IPushKitServerBuilder>? configurePush = null,
        Action<PushKitServerOptions>? options = null,
        Action<WebApplicationBuilder>? configureBuilder = null,
        Action<WebApplication>? configureApp = null,
        Action<IEndpointConventionBuilder>? configureEndpoints = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrel().UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        configureBuilder?.Invoke(builder);
        var push = builder.Services.AddPushKit(options);
        configurePush?.Invoke(push);

        var app = builder.Build();
        configureApp?.Invoke(app);
        var endpoints = app.MapPushKit("/push");
        configureEndpoints?.Invoke(endpoints);
        await app.StartAsync().WaitAsync(TestTimeouts.Default);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new PushTestServer(app, new Uri(address));
    }

    /// <summary>Builds a client channel for this server; it is disposed with the server.</summary>
    public IPushChannel CreateClient(Action<PushClientOptions>? configure = null)
    {
        var builder = new PushChannelBuilder().WithUrl(BaseUrl);
        if (configure is not null)
        {
            builder.Configure(configure);
        }

        var channel = builder.Build();
        lock (_clients)
        {
            _clients.Add(channel);
        }

        return channel;
    }

    /// <summary>Connects a client restricted to one transport (websocket, sse or longpolling).</summary>
    public Task<IPushChannel> ConnectClientAsync(string transport, Action<PushClientOptions>? configure = null) =>
        ConnectClientAsync(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName(transport));
            configure?.Invoke(o);
        });

    public async Task<IPushChannel> ConnectClientAsync(Action<PushClientOptions>? configure = null)
    {
        var channel = CreateClient(configure);
        await channel.ConnectAsync().WaitAsync(TestTimeouts.Default);
        return channel;
    }

    /// <summary>Negotiates over plain HTTP and returns the parsed response.</summary>
    public async Task<(string SessionId, string Secret, JsonElement Response)> NegotiateRawAsync()
    {
        using var response = await _http.PostAsync(new Uri(BaseUrl + "/negotiate"), JsonContent.Create(new { protocolVersion = 1 })).WaitAsync(TestTimeouts.Default);
        response.EnsureSuccessStatusCode();
        var json = await response.Content.ReadFromJsonAsync<JsonElement>();
        return (json.GetProperty("sessionId").GetString()!, json.GetProperty("resumeSecret").GetString()!, json);
    }

    public Uri WebSocketUrl(string sessionId, string secret) =>
        new($"ws://{Root.Authority}/push/ws?session={Uri.EscapeDataString(sessionId)}&secret={Uri.EscapeDataString(secret)}");

    /// <summary>Negotiates and opens a raw WebSocket for the new session (no PushKit client logic).</summary>
    public async Task<RawSocket> ConnectRawAsync()
    {
        var (sessionId, secret, _) = await NegotiateRawAsync();
        return await RawSocket.ConnectAsync(WebSocketUrl(sessionId, secret), sessionId, secret);
    }

    public async ValueTask DisposeAsync()
    {
        IPushChannel[] clients;
        lock (_clients)
        {
            clients = [.. _clients];
        }

        await Task.WhenAll(clients.Select(c => c.DisposeAsync().AsTask())).WaitAsync(TestTimeouts.Default);
        await _app.StopAsync().WaitAsync(TestTimeouts.Default);
        await _app.DisposeAsync();
        _http.Dispose();
    }
}

/// <summary>A plain ClientWebSocket speaking raw protocol frames, for bad-input tests.</summary>
public sealed class RawSocket : IAsyncDisposable
{
    private RawSocket(ClientWebSocket socket, string sessionId, string secret)
    {
        Socket = socket;
        SessionId = sessionId;
        Secret = secret;
    }

    public ClientWebSocket Socket { get; }

    public string SessionId { get; }

    public string Secret { get; }

    public static async Task<RawSocket> ConnectAsync(Uri url, string sessionId, string secret)
    {
        var socket = new ClientWebSocket();
        await socket.ConnectAsync(url, CancellationToken.None).WaitAsync(TestTimeouts.Default);
        return new RawSocket(socket, sessionId, secret);
    }

    public Task SendAsync(string text) => SendAsync(Encoding.UTF8.GetBytes(text));

    public Task SendAsync(byte[] bytes) =>
        Socket.SendAsync(bytes, WebSocketMessageType.Text, true, CancellationToken.None).WaitAsync(TestTimeouts.Default);

    /// <summary>Receives the next WebSocket message as text, or null when the server closed the socket.</summary>
    public async Task<string?> ReceiveAsync()
    {
        var buffer = new byte[64 * 1024];
        using var stream = new MemoryStream();
        while (true)
        {
            var result = await Socket.ReceiveAsync(buffer, CancellationToken.None).WaitAsync(TestTimeouts.Default);
            if (result.MessageType == WebSocketMessageType.Close)
            {
                return null;
            }

            stream.Write(buffer, 0, result.Count);
            if (result.EndOfMessage)
            {
                return Encoding.UTF8.GetString(stream.ToArray());
            }
        }
    }

    /// <summary>Reads frames until one contains <paramref name="fragment"/>; fails on close.</summary>
    public async Task<string> ReceiveContainingAsync(string fragment)
    {
        while (true)
        {
            var batch = await ReceiveAsync() ?? throw new InvalidOperationException($"Closed ({Socket.CloseStatus}) before '{fragment}' arrived.");
            if (batch.Contains(fragment, StringComparison.Ordinal))
            {
                return batch;
            }
        }
    }

    /// <summary>Reads until the server closes the socket and returns the WebSocket close status.</summary>
    public async Task<(int? Status, string? CloseFrame)> ReceiveCloseAsync()
    {
        string? closeFrame = null;
        while (await ReceiveAsync() is { } batch)
        {
            if (batch.Contains("\"type\":\"close\"", StringComparison.Ordinal))
            {
                closeFrame = batch;
            }
        }

        return ((int?)Socket.CloseStatus, closeFrame);
    }

    public ValueTask DisposeAsync()
    {
        Socket.Dispose();
        return ValueTask.CompletedTask;
    }
}

public static class Transports
{
    /// <summary>Every transport, for tests that prove a guarantee on each.</summary>
    public static TheoryData<string> All => new() { "websocket", "sse", "longpolling" };

    /// <summary>The transports whose acks travel on their own and may be held back (long-polling's ride on polls).</summary>
    public static TheoryData<string> HoldingAcks => new() { "websocket", "sse" };

    public static IPushTransport ByName(string name) => name switch
    {
        "websocket" => PushTransports.WebSocket,
        "sse" => PushTransports.ServerSentEvents,
        "longpolling" => PushTransports.LongPolling,
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "Unknown transport."),
    };
}

public static class TestTimeouts
{
    /// <summary>Every awaited step is bounded so that a hang fails fast instead of stalling CI.</summary>
    public static readonly TimeSpan Default = TimeSpan.FromSeconds(30);

    /// <summary>Completes when <paramref name="channel"/> is in <paramref name="state"/> (now or by a later change).</summary>
    public static async Task WaitForStateAsync(this IPushChannel channel, PushChannelState state)
    {
        var reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        channel.StateChanged += (_, e) =>
        {
            if (e.CurrentState == state)
            {
                reached.TrySetResult();
            }
        };
        if (channel.State != state)
        {
            await reached.Task.WaitAsync(Default);
        }
    }

    public static async Task<List<PushMessage>> ReadAsync(this IPushChannel channel, int count, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? Default);
        var messages = new List<PushMessage>(count);
        await foreach (var message in channel.ReadAllAsync(cts.Token))
        {
            messages.Add(message);
            if (messages.Count == count)
            {
                break;
            }
        }

        return messages;
    }
}
