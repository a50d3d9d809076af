using System.Buffers;
using System.Net.ServerSentEvents;
using System.Runtime.CompilerServices;
using System.Text;
using PushKit.Connections;
using PushKit.Protocol;

namespace PushKit.Client.Http;

/// <summary>
/// The Server-Sent Events client transport: <c>GET {base}/sse</c> downstream, parsed with
/// <see cref="SseParser"/>; <c>POST {base}/send</c> upstream.
/// </summary>
internal sealed class SsePushTransport : IPushTransport
{
    // Events already received are handed to the reader together, up to about this many bytes.
    private const int BatchBytes = 64 * 1024;

    // What an event may hold beyond its frame: the data and id field names, the id, line ends, an event name.
    private const int SseEventOverheadBytes = 1024;

    public string Name => PushProtocol.Transports.ServerSentEvents;

    public async ValueTask<IPushTransportConnection> ConnectAsync(PushTransportContext context, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        var options = context.Options;
        using var request = await HttpTransportHelpers.CreateRequestAsync(HttpMethod.Get, context.GetEndpointUrl("sse", webSocket: false), context, cancellationToken).ConfigureAwait(false);
        request.Headers.Accept.ParseAdd("text/event-stream");
        var streamLifetime = new CancellationTokenSource();
        HttpResponseMessage? response = null;

        // From the request to the server's 'open' event, everything must happen within the detection timeout. If it
        // does not, something between us (a proxy that buffers responses) holds the stream back: this transport
        // does not work here, and the client moves on.
        using var detection = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        detection.CancelAfter(options.TransportDetectionTimeout);
        var registration = detection.Token.Register(streamLifetime.Cancel);
        try
        {
            IAsyncEnumerator<SseItem<EventData>> events;
            try
            {
                response = await context.HttpClient.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, streamLifetime.Token).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode)
                {
                    throw await HttpTransportHelpers.ToExceptionAsync(response, "The SSE stream", cancellationToken).ConfigureAwait(false);
                }

                // Counted: an event that never ends fails at the message limit (plus room for its field names and
                // id) instead of growing the parser's buffer without bound.
                var stream = new SseEventLimitStream(
                    await response.Content.ReadAsStreamAsync(streamLifetime.Token).ConfigureAwait(false),
                    (long)options.MaxMessageBytes + SseEventOverheadBytes);
                // Event data is kept as UTF-8 bytes (frames are UTF-8 JSON, so nothing is transcoded on the way in), in
                // arrays rented from the pool (see EventData).
                events = SseParser.Create(stream, static (_, data) => EventData.Rent(data)).EnumerateAsync(streamLifetime.Token).GetAsyncEnumerator(streamLifetime.Token);
                if (!await events.MoveNextAsync().ConfigureAwait(false) || events.Current.EventType != "open")
                {
                    throw new PushConnectException("The SSE stream did not start with the 'open' event.");
                }

                events.Current.Data.Return();
            }
            catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
            {
                throw new PushConnectException(
                    response is null
                        ? $"The SSE request got no answer within {options.TransportDetectionTimeout} (the server is not responding, or a proxy is buffering the stream)."
                        : $"The SSE stream opened but delivered nothing within {options.TransportDetectionTimeout} (a proxy may be buffering it).",
                    ex);
            }
            finally
            {
                // From here on the stream lives as long as the connection, whatever the detection timer does.
                await registration.DisposeAsync().ConfigureAwait(false);
            }

            if (streamLifetime.IsCancellationRequested)
            {
                // The detection timer fired just as the stream opened: it is cancelled, so count it as not working.
                throw new PushConnectException($"The SSE stream opened just as the detection timeout of {options.TransportDetectionTimeout} ran out.");
            }

            return new SseClientConnection(context, response, events, streamLifetime);
        }
        catch
        {
            await streamLifetime.CancelAsync().ConfigureAwait(false);
            streamLifetime.Dispose();
            response?.Dispose();
            throw;
        }
    }

    private sealed class SseClientConnection(
        PushTransportContext context,
        HttpResponseMessage response,
        IAsyncEnumerator<SseItem<EventData>> events,
        CancellationTokenSource streamLifetime) : IPushTransportConnection, IAckCoalescing
    {
        private readonly Uri _sendUrl = context.GetEndpointUrl("send", webSocket: false);
        private CancellationTokenRegistration _registration;
        private CancellationToken _registered;
        private ValueTask<bool>? _pending;

        public string TransportName => PushProtocol.Transports.ServerSentEvents;

        // Each upstream batch is a POST: acks wait a moment to cover more.
        public TimeSpan AckDelay => HttpTransportHelpers.AckDelayOf(context);

        public ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default) =>
            HttpTransportHelpers.PostBatchAsync(context, _sendUrl, frames, cancellationToken);

        // Pooled: at a steady rate each event arrives alone, and this waits for every one of them.
        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        public async ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default)
        {
            if (cancellationToken != _registered)
            {
                // The reader passes the same token call after call: register it once, not once per event.
                _registration.Dispose();
                _registration = cancellationToken.UnsafeRegister(static state => ((CancellationTokenSource)state!).Cancel(), streamLifetime);
                _registered = cancellationToken;
            }

            var limit = context.Options.MaxMessageBytes;
            var total = 0;
            while (true)
            {
                var next = _pending ?? events.MoveNextAsync();
                _pending = null;
                if (total > 0 && !next.IsCompleted)
                {
                    // The batch holds what had arrived; the next event is awaited by the next call.
                    _pending = next;
                    return PushReceiveResult.Data;
                }

                if (!await next.ConfigureAwait(false))
                {
                    if (total > 0)
                    {
                        _pending = new ValueTask<bool>(false);
                        return PushReceiveResult.Data;
                    }

                    // Orderly endings carry a close frame first; a bare end of stream is a lost connection.
                    throw new IOException("The SSE stream ended.");
                }

                var item = events.Current;
                var data = item.Data;
                try
                {
                    if (item.EventType != SseParser.EventTypeDefault)
                    {
                        continue;
                    }

                    if (data.Length > limit)
                    {
                        throw new PushProtocolException(PushCloseCode.MessageTooBig, $"An SSE event exceeded the limit of {limit} bytes.");
                    }

                    // Events that arrived together form one batch of frames, one per line.
                    if (total > 0)
                    {
                        destination.Write("\n"u8);
                    }

                    destination.Write(data.Span);
                    total += data.Length + 1;
                }
                finally
                {
                    data.Return();
                }

                if (total >= BatchBytes)
                {
                    return PushReceiveResult.Data;
                }
            }
        }

        public ValueTask CloseAsync(PushCloseCode code, string? reason, CancellationToken cancellationToken = default)
        {
            Abort();
            return default;
        }

        public void Abort()
        {
            try
            {
                streamLifetime.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }

        public async ValueTask DisposeAsync()
        {
            Abort();
            try
            {
                // A read that was started ahead (see ReceiveAsync) must finish, cancelled, before the parser is disposed.
                if (_pending is { } pending)
                {
                    _pending = null;
                    await pending.ConfigureAwait(false);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or HttpRequestException)
            {
            }

            try
            {
                await events.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or HttpRequestException)
            {
            }

            _registration.Dispose();
            response.Dispose();
            streamLifetime.Dispose();
        }
    }

    /// <summary>
    /// One event's data, in an array rented from the pool: the parser hands over a span it reuses, and copying it into
    /// a new array per event was a third of what the SSE client allocated per message. The read loop copies it into
    /// its batch and returns the array; an event read ahead and never taken (the connection ended) is left to the GC.
    /// </summary>
    internal readonly struct EventData
    {
        private readonly byte[] _buffer;

        private EventData(byte[] buffer, int length)
        {
            _buffer = buffer;
            Length = length;
        }

        public int Length { get; }

        public ReadOnlySpan<byte> Span => _buffer.AsSpan(0, Length);

        public static EventData Rent(ReadOnlySpan<byte> data)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(data.Length, 1));
            data.CopyTo(buffer);
            return new EventData(buffer, data.Length);
        }

        public void Return() => ArrayPool<byte>.Shared.Return(_buffer);
    }
}
