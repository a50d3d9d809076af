using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.WebSockets;
using System.Text;
using System.Threading.Channels;
using Microsoft.AspNetCore.SignalR;
using PushKit;
using PushKit.Server;

namespace PushKit.Bench;

/// <summary>
/// The server process: PushKit at /push, SignalR at /hub, raw ASP.NET Core WebSockets at /raw, and control endpoints
/// the client process drives (/control/...). Run as: PushKit.Bench server --urls http://127.0.0.1:PORT
/// </summary>
internal static class BenchServer
{
    public static async Task RunAsync(string[] args)
    {
        var builder = WebApplication.CreateSlimBuilder(args);
        builder.Logging.ClearProviders();
        if (Environment.GetEnvironmentVariable("PUSHKIT_BENCH_DIRECT") is "1")
        {
            builder.WebHost.ConfigureKestrel(kestrel => kestrel.ConfigureEndpointDefaults(listen => listen.UsePushKitWebSockets("/push")));
        }

        builder.Services.AddPushKit(o =>
        {
            // A SignalR broadcast waits for a busy connection; the fair comparison lets PushKit wait too rather than cut it.
            o.BufferFullPolicy = PushBufferFullPolicy.Wait;
            o.MaxBufferedMessagesPerSession = 100_000;
            o.MaxBufferedBytesPerSession = 256L * 1024 * 1024;
        });
        builder.Services.AddSignalR();
        builder.Services.AddSingleton<RawSockets>();
        var app = builder.Build();
        app.UseWebSockets();
        app.MapPushKit("/push");
        app.MapHub<BenchHub>("/hub");
        app.Map("/raw", (HttpContext context, RawSockets raw) => raw.AcceptAsync(context));

        app.MapPost("/control/broadcast/{system}", async (string system, int count, int size, IPushSender push, IHubContext<BenchHub> hub, RawSockets raw) =>
        {
            var text = new string('x', size);
            switch (system)
            {
                case "pushkit":
                    var message = PushMessage.FromString(text);
                    for (var i = 0; i < count; i++)
                    {
                        // Each message is a new PushMessage so that every one is encoded (once, for all recipients).
                        await push.BroadcastAsync(i == 0 ? message : PushMessage.FromString(text));
                    }

                    break;
                case "signalr":
                    for (var i = 0; i < count; i++)
                    {
                        await hub.Clients.All.SendAsync("m", text);
                    }

                    break;
                case "raw":
                    var bytes = Encoding.UTF8.GetBytes(text);
                    for (var i = 0; i < count; i++)
                    {
                        raw.Broadcast(bytes);
                    }

                    break;
            }

            return Results.Ok();
        });

        // Paced sends for latency: the payload carries the send timestamp (Stopwatch is monotonic across processes here).
        app.MapPost("/control/paced/{system}", async (string system, int count, int perSecond, IPushSender push, IHubContext<BenchHub> hub, RawSockets raw) =>
        {
            var interval = TimeSpan.FromSeconds(1.0 / perSecond);
            var start = Stopwatch.GetTimestamp();
            for (var i = 0; i < count; i++)
            {
                var due = start + (long)(i * interval.TotalSeconds * Stopwatch.Frequency);
                while (Stopwatch.GetTimestamp() < due)
                {
                    await Task.Delay(1);
                }

                var stamp = Stopwatch.GetTimestamp().ToString(System.Globalization.CultureInfo.InvariantCulture);
                switch (system)
                {
                    case "pushkit":
                        await push.BroadcastAsync(PushMessage.FromString(stamp));
                        break;
                    case "signalr":
                        await hub.Clients.All.SendAsync("m", stamp);
                        break;
                    default:
                        raw.Broadcast(Encoding.UTF8.GetBytes(stamp));
                        break;
                }
            }

            return Results.Ok();
        });

        // The server process's garbage collection so far, for the latency rounds' report.
        app.MapGet("/control/gc", () => Results.Ok(new
        {
            gen0 = GC.CollectionCount(0),
            gen1 = GC.CollectionCount(1),
            gen2 = GC.CollectionCount(2),
            pauseMs = GC.GetTotalPauseDuration().TotalMilliseconds,
            allocatedBytes = GC.GetTotalAllocatedBytes(precise: false),
            cpuMs = Environment.CpuUsage.TotalTime.TotalMilliseconds,
            workItems = ThreadPool.CompletedWorkItemCount,
        }));

        // A full, compacting collection: the latency rounds start from a clean heap (see BenchGc).
        app.MapPost("/control/collect", () =>
        {
            BenchGc.FullCollection();
            return Results.Ok();
        });

        app.MapGet("/control/memory", () =>
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            return Results.Ok(new { managedBytes = GC.GetTotalMemory(forceFullCollection: true), workingSet = Environment.WorkingSet });
        });

        await app.RunAsync();
    }
}

internal sealed class BenchHub : Hub
{
    // Tells the client it is registered: a broadcast before this point would miss it.
    public override Task OnConnectedAsync() => Clients.Caller.SendAsync("ready");
}

/// <summary>Raw ASP.NET Core WebSockets: the ceiling of this stack (no protocol, no acks).</summary>
internal sealed class RawSockets
{
    private static readonly byte[] Ready = "ready"u8.ToArray();
    private readonly ConcurrentDictionary<int, Channel<byte[]>> _outboxes = new();
    private int _next;

    public async Task AcceptAsync(HttpContext context)
    {
        if (!context.WebSockets.IsWebSocketRequest)
        {
            context.Response.StatusCode = 400;
            return;
        }

        using var socket = await context.WebSockets.AcceptWebSocketAsync();
        var id = Interlocked.Increment(ref _next);
        var outbox = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true });
        _outboxes[id] = outbox;

        // Tell the client it is registered: a broadcast before this point would miss it.
        outbox.Writer.TryWrite(Ready);
        try
        {
            var reading = Task.Run(async () =>
            {
                var buffer = new byte[1024];
                while (socket.State == WebSocketState.Open)
                {
                    var result = await socket.ReceiveAsync(buffer, CancellationToken.None);
                    if (result.MessageType == WebSocketMessageType.Close)
                    {
                        outbox.Writer.TryComplete();
                        return;
                    }
                }
            });

            await foreach (var message in outbox.Reader.ReadAllAsync(context.RequestAborted))
            {
                await socket.SendAsync(message, WebSocketMessageType.Text, true, CancellationToken.None);
            }

            await reading;
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException)
        {
        }
        finally
        {
            _outboxes.TryRemove(id, out _);
        }
    }

    public void Broadcast(byte[] message)
    {
        // Enumerating the dictionary takes no lock; its Values property takes every lock and copies the dictionary,
        // which at one client and 50,000 broadcasts cost raw WebSockets most of their speed.
        foreach (var (_, outbox) in _outboxes)
        {
            outbox.Writer.TryWrite(message);
        }
    }
}
