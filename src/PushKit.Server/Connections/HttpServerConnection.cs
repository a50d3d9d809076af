using System.Buffers;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using PushKit.Connections;

namespace PushKit.Server.Connections;

/// <summary>
/// The server side of an HTTP transport (SSE, long-polling): downstream is transport-specific, upstream is the
/// batches clients POST to <c>{base}/send</c>, queued here in order for the session's read loop.
/// </summary>
internal abstract class HttpServerConnection : IPushTransportConnection
{
    private readonly Channel<byte[]> _inbound = Channel.CreateBounded<byte[]>(new BoundedChannelOptions(8) { SingleReader = true });
    private int _dead;

    public abstract string TransportName { get; }

    /// <summary>Whether the connection has ended; POSTs and polls for it are refused.</summary>
    public bool IsDead => Volatile.Read(ref _dead) != 0;

    /// <summary>Queues a POSTed batch; waits while the session is still busy with earlier ones (backpressure).</summary>
    /// <returns>False when the connection ended before the batch could be queued.</returns>
    public async ValueTask<bool> EnqueueInboundAsync(byte[] batch, CancellationToken cancellationToken)
    {
        try
        {
            await _inbound.Writer.WriteAsync(batch, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (ChannelClosedException)
        {
            return false;
        }
    }

    public abstract ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default);

    public ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default)
    {
        if (_inbound.Reader.TryRead(out var ready))
        {
            destination.Write(ready);
            return new(PushReceiveResult.Data);
        }

        return WaitAndReceiveAsync(destination, cancellationToken);
    }

    // Pooled: the session's read loop waits here between POSTs, and an ack is a POST.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<PushReceiveResult> WaitAndReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken)
    {
        try
        {
            var batch = await _inbound.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            destination.Write(batch);
            return PushReceiveResult.Data;
        }
        catch (ChannelClosedException ex)
        {
            throw new IOException($"The {TransportName} connection ended.", ex);
        }
    }

    public virtual ValueTask CloseAsync(PushCloseCode code, string? reason, CancellationToken cancellationToken = default) => default;

    public void Abort()
    {
        if (Interlocked.Exchange(ref _dead, 1) == 0)
        {
            _inbound.Writer.TryComplete();
            OnAborted();
        }
    }

    public ValueTask DisposeAsync()
    {
        Abort();
        return default;
    }

    protected virtual void OnAborted()
    {
    }
}
