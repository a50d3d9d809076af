using System.Buffers;
using System.Buffers.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using PushKit.Protocol;

namespace PushKit.Server.Connections;

/// <summary>
/// Server-Sent Events downstream: each frame is one event (<c>data:</c> line); a message frame's sequence number
/// is its <c>id:</c>, so a browser's EventSource reports it back as <c>Last-Event-ID</c> when it reconnects.
/// </summary>
internal sealed class SseServerConnection : HttpServerConnection
{
    private static ReadOnlySpan<byte> KeepAlive => ": keep-alive\n\n"u8;

    private readonly HttpResponse _response;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly ITimer _keepAlive;
    private readonly CancellationToken _aborted;

    public SseServerConnection(HttpContext context, TimeSpan keepAliveInterval, TimeProvider timeProvider)
    {
        _response = context.Response;
        _aborted = context.RequestAborted;
        _keepAlive = timeProvider.CreateTimer(static state => _ = ((SseServerConnection)state!).WriteKeepAliveAsync(), this, keepAliveInterval, keepAliveInterval);
    }

    public override string TransportName => PushProtocol.Transports.ServerSentEvents;

    /// <summary>Sends the headers, the reconnection hint and the <c>open</c> event at once, so the client sees a live stream.</summary>
    public async Task StartAsync(TimeSpan retryHint)
    {
        _response.StatusCode = StatusCodes.Status200OK;
        _response.ContentType = "text/event-stream";
        _response.Headers.CacheControl = "no-cache, no-store";
        _response.Headers["X-Accel-Buffering"] = "no";
        _response.HttpContext.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        var start = $"retry: {(long)retryHint.TotalMilliseconds}\nevent: open\ndata: {{}}\n\n";
        await WriteLockedAsync(System.Text.Encoding.UTF8.GetBytes(start), _aborted).ConfigureAwait(false);
    }

    public override async ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default)
    {
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (IsDead)
            {
                return;
            }

            // Events are written straight into the response's pipe, one flush per batch.
            var events = _response.BodyWriter;
            foreach (var frame in FrameCodec.SplitBatch(frames))
            {
                if (FrameCodec.TryGetMessageSequence(frame.Span, out var sequence))
                {
                    events.Write("id: "u8);
                    var span = events.GetSpan(21);
                    Utf8Formatter.TryFormat(sequence, span, out var written);
                    span[written] = (byte)'\n';
                    events.Advance(written + 1);
                }

                events.Write("data: "u8);
                events.Write(frame.Span);
                events.Write("\n\n"u8);
            }

            await events.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    protected override void OnAborted() => _keepAlive.Dispose();

    private async Task WriteKeepAliveAsync()
    {
        // A write in progress keeps the stream busy already; and one that is stuck (a client that reads nothing) must
        // not collect a waiting keep-alive every interval until the connection ends.
        if (!_writeLock.Wait(0))
        {
            return;
        }

        try
        {
            if (!IsDead)
            {
                await _response.BodyWriter.WriteAsync(KeepAlive.ToArray(), _aborted).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            // The client is gone; the session's read side notices through RequestAborted.
        }
        finally
        {
            _writeLock.Release();
        }
    }

    private async Task WriteLockedAsync(ReadOnlyMemory<byte> bytes, CancellationToken cancellationToken)
    {
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (IsDead)
            {
                return;
            }

            await _response.BodyWriter.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
    }
}
