using System.Diagnostics;
using System.Net.WebSockets;
using System.Text;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.SignalR.Client;
using PushKit.Client;

namespace PushKit.Bench;

/// <summary>One benchmark client of some system and transport, counting what it receives.</summary>
internal abstract class BenchClient : IAsyncDisposable
{
    private int _received;
    private int _target = int.MaxValue;
    private TaskCompletionSource _reached = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public List<double>? Latencies { get; set; }

    /// <summary>Latencies are recorded for messages sent at or after this <see cref="Stopwatch"/> timestamp.</summary>
    public long RecordFrom { get; set; }

    public int Received => Volatile.Read(ref _received);

    public abstract Task ConnectAsync();

    /// <summary>The client's state, for a stalled round's report.</summary>
    public virtual string Describe() => GetType().Name;

    public abstract ValueTask DisposeAsync();

    /// <summary>Resets the count and returns a task that completes when <paramref name="count"/> more arrive.</summary>
    public Task ExpectAsync(int count)
    {
        _reached = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _received, 0);
        Volatile.Write(ref _target, count);
        return _reached.Task;
    }

    protected void OnMessage(string text)
    {
        if (Latencies is { } latencies && long.TryParse(text, out var stamp) && stamp >= RecordFrom)
        {
            // Read the clock before taking the lock the clients share: waiting for it is not the system's latency.
            var latency = Stopwatch.GetElapsedTime(stamp).TotalMilliseconds;
            lock (latencies)
            {
                latencies.Add(latency);
            }
        }

        if (Interlocked.Increment(ref _received) == Volatile.Read(ref _target))
        {
            _reached.TrySetResult();
        }
    }

    public static BenchClient Create(string system, string transport, Uri root) => system switch
    {
        "pushkit" => new PushKitClient(root, transport),
        "signalr" => new SignalRClient(root, transport),
        _ => new RawClient(root),
    };
}

internal sealed class PushKitClient(Uri root, string transport) : BenchClient
{
    private IPushChannel? _channel;
    private Task? _reading;

    public override async Task ConnectAsync()
    {
        _channel = new PushChannelBuilder().WithUrl(new Uri(root, "/push")).Configure(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(transport switch
            {
                "websocket" => PushTransports.WebSocket,
                "sse" => PushTransports.ServerSentEvents,
                _ => PushTransports.LongPolling,
            });

            // ReceiveQueueCapacity stays at its default (1,024). The bench used 10,000 until 2026-11-26: with that many
            // received messages waiting per client, they outlived gen0 collections, and the client process spent
            // 20-25 % of its CPU collecting them (100 x 10,000: 0.83-0.87x raw WebSockets against 1.02-1.12x with 1,024).
            if (Environment.GetEnvironmentVariable("PUSHKIT_BENCH_ACK_DELAY_MS") is { } ackDelay)
            {
                o.AckDelay = TimeSpan.FromMilliseconds(double.Parse(ackDelay, System.Globalization.CultureInfo.InvariantCulture));
            }
        }).Build();
        await _channel.ConnectAsync();
        _reading = Task.Run(async () =>
        {
            await foreach (var message in _channel.ReadAllAsync())
            {
                OnMessage(message.GetString());
            }
        });
    }

    public override string Describe() =>
        _channel is null ? "not connected" : $"{_channel.State} over {_channel.Transport}, session {_channel.SessionId}";

    public override async ValueTask DisposeAsync()
    {
        if (_channel is not null)
        {
            await _channel.DisposeAsync();
        }

        if (_reading is not null)
        {
            await _reading;
        }
    }
}

internal sealed class SignalRClient(Uri root, string transport) : BenchClient
{
    private HubConnection? _connection;

    public override async Task ConnectAsync()
    {
        var type = transport switch
        {
            "websocket" => HttpTransportType.WebSockets,
            "sse" => HttpTransportType.ServerSentEvents,
            _ => HttpTransportType.LongPolling,
        };
        _connection = new HubConnectionBuilder().WithUrl(new Uri(root, "/hub"), type).Build();
        _connection.On<string>("m", OnMessage);
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _connection.On("ready", () => ready.TrySetResult());
        await _connection.StartAsync();

        // Counted in only once the hub has registered the connection for broadcasts.
        await ready.Task.WaitAsync(TimeSpan.FromSeconds(30));
    }

    public override async ValueTask DisposeAsync()
    {
        if (_connection is not null)
        {
            await _connection.DisposeAsync();
        }
    }
}

internal sealed class RawClient(Uri root) : BenchClient
{
    private readonly ClientWebSocket _socket = new();
    private Task? _reading;

    public override async Task ConnectAsync()
    {
        await _socket.ConnectAsync(new Uri($"ws://{root.Authority}/raw"), CancellationToken.None);

        // The server says "ready" once this socket receives broadcasts; connected before that is not yet counted in.
        var buffer = new byte[64 * 1024];
        await _socket.ReceiveAsync(buffer, CancellationToken.None);
        _reading = Task.Run(async () =>
        {
            try
            {
                while (true)
                {
                    // A message may arrive in more than one piece: count it once, when it is whole.
                    var length = 0;
                    ValueWebSocketReceiveResult result;
                    do
                    {
                        result = await _socket.ReceiveAsync(buffer.AsMemory(length), CancellationToken.None);
                        length += result.Count;
                    }
                    while (!result.EndOfMessage && result.MessageType != WebSocketMessageType.Close);

                    if (result.MessageType == WebSocketMessageType.Close)
                    {
                        return;
                    }

                    OnMessage(Encoding.UTF8.GetString(buffer, 0, length));
                }
            }
            catch (Exception ex) when (ex is WebSocketException or OperationCanceledException)
            {
            }
        });
    }

    public override async ValueTask DisposeAsync()
    {
        try
        {
            await _socket.CloseAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None);
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException)
        {
        }

        if (_reading is not null)
        {
            await _reading;
        }

        _socket.Dispose();
    }
}
