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
    /// <summary>How many POSTed batches wait for the session's read loop; a POST beyond that waits for room.</summary>
    internal const int InboundQueueCapacity = 8;

    /// <summary>
    /// How many <c>POST {base}/send</c> requests may be outstanding on one connection at once; one more is refused with
    /// 409 <c>send_in_progress</c>, without its body being read. The protocol allows a client one (§9.4); the rest is
    /// tolerance for a client whose previous POST was cancelled (its connection cut, say) before the server noticed
    /// the abort. A POST reads its body, then waits for room in the queue while the session is busy (back-pressure),
    /// so this bounds what a connection's POSTs hold in memory to <see cref="InboundQueueCapacity"/> queued batches plus
    /// this many read or being read, each at most <c>MaxMessageBytes</c>.
    /// </summary>
    internal const int MaxOutstandingSends = 4;

    private readonly Channel<byte[]> _inbound = Channel.CreateBounded<byte[]>(new BoundedChannelOptions(InboundQueueCapacity) { SingleReader = true });
    private int _dead;
    private int _outstandingSends;

    public abstract string TransportName { get; }

    /// <summary>Whether the connection has ended; POSTs and polls for it are refused.</summary>
    public bool IsDead => Volatile.Read(ref _dead) != 0;

    /// <summary>How many POSTed batches wait in the queue for the session's read loop.</summary>
    internal int QueuedBatches => _inbound.Reader.Count;

    /// <summary>The <c>POST {base}/send</c> requests for this connection that took a slot and are not answered yet.</summary>
    internal int OutstandingSends => Volatile.Read(ref _outstandingSends);

    /// <summary>
    /// Takes a slot for a POST, before its body is read; false when <see cref="MaxOutstandingSends"/> are taken. A slot
    /// taken must be given back with <see cref="EndSend"/> once the POST is answered.
    /// </summary>
    public bool TryBeginSend()
    {
        var current = Volatile.Read(ref _outstandingSends);
        while (current < MaxOutstandingSends)
        {
            var seen = Interlocked.CompareExchange(ref _outstandingSends, current + 1, current);
            if (seen == current)
            {
                return true;
            }

            current = seen;
        }

        return false;
    }

    /// <summary>Gives back the slot of a POST taken with <see cref="TryBeginSend"/>.</summary>
    public void EndSend() => Interlocked.Decrement(ref _outstandingSends);

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
