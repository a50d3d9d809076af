using System.Buffers;
using System.Threading.Channels;
using PushKit.Connections;

namespace PushKit.Tests.Delivery;

/// <summary>A pair of connected in-memory transport connections for unit tests of the delivery machine.</summary>
internal sealed class InMemoryConnection : IPushTransportConnection
{
    private readonly Channel<object> _incoming = Channel.CreateUnbounded<object>();
    private InMemoryConnection _peer = null!;

    public string TransportName => "memory";

    /// <summary>Every batch this side sent, as text.</summary>
    public List<string> Sent { get; } = [];

    public static (InMemoryConnection A, InMemoryConnection B) CreatePair()
    {
        var a = new InMemoryConnection();
        var b = new InMemoryConnection();
        a._peer = b;
        b._peer = a;
        return (a, b);
    }

    /// <summary>Injects a raw batch as if the peer had sent it.</summary>
    public void Inject(string batch) => _incoming.Writer.TryWrite(System.Text.Encoding.UTF8.GetBytes(batch));

    /// <summary>When set, every send fails with this (a transport whose peer is gone).</summary>
    public Exception? SendFailure { get; set; }

    /// <summary>When set, every send first waits for it (a peer that reads nothing, until it is completed).</summary>
    public Task? SendGate { get; set; }

    /// <summary>Completed when a send first waits for <see cref="SendGate"/>.</summary>
    public TaskCompletionSource SendWaiting { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public async ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default)
    {
        if (SendGate is { } gate)
        {
            SendWaiting.TrySetResult();
            await gate.WaitAsync(cancellationToken);
        }

        SendCore(frames);
    }

    private void SendCore(ReadOnlyMemory<byte> frames)
    {
        if (SendFailure is { } failure)
        {
            throw failure;
        }

        lock (Sent)
        {
            Sent.Add(System.Text.Encoding.UTF8.GetString(frames.Span));
        }

        _peer._incoming.Writer.TryWrite(frames.ToArray());
    }

    public async ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default)
    {
        object item;
        try
        {
            item = await _incoming.Reader.ReadAsync(cancellationToken);
        }
        catch (ChannelClosedException ex)
        {
            throw new IOException("connection lost", ex);
        }

        switch (item)
        {
            case byte[] bytes:
                destination.Write(bytes);
                return PushReceiveResult.Data;
            case PushCloseCode code:
                return PushReceiveResult.Closed(code, "closed");
            default:
                throw new InvalidOperationException();
        }
    }

    public ValueTask CloseAsync(PushCloseCode code, string? reason, CancellationToken cancellationToken = default)
    {
        _peer._incoming.Writer.TryWrite(code);
        return ValueTask.CompletedTask;
    }

    public void Abort()
    {
        _incoming.Writer.TryComplete();
        _peer._incoming.Writer.TryComplete();
    }

    public ValueTask DisposeAsync()
    {
        Abort();
        return ValueTask.CompletedTask;
    }
}

/// <summary>Waiting helpers shared by the delivery tests.</summary>
internal static class Eventually
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    /// <summary>Everything <paramref name="connection"/> sent, as one string.</summary>
    public static string SentText(this InMemoryConnection connection)
    {
        lock (connection.Sent)
        {
            return string.Join("\n", connection.Sent);
        }
    }

    /// <summary>Waits (bounded) until <paramref name="condition"/> holds: for internal state that raises no event.</summary>
    public static async Task TrueAsync(Func<bool> condition)
    {
        using var cts = new CancellationTokenSource(Timeout);
        while (!condition())
        {
            await Task.Delay(10, cts.Token);
        }
    }
}
