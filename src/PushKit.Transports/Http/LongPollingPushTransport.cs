using System.Buffers;
using System.Net;
using System.Runtime.CompilerServices;
using PushKit.Connections;
using PushKit.Protocol;

namespace PushKit.Client.Http;

/// <summary>
/// The long-polling client transport: held <c>GET {base}/poll</c> requests downstream (the first is answered at
/// once and opens the connection), <c>POST {base}/send</c> upstream. Each poll carries the ack that is due
/// (<c>&amp;ack=N</c>) when the server reads it, so a client that only receives sends no POST.
/// </summary>
internal sealed class LongPollingPushTransport : IPushTransport
{
    public string Name => PushProtocol.Transports.LongPolling;

    public async ValueTask<IPushTransportConnection> ConnectAsync(PushTransportContext context, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        var connection = new LongPollingClientConnection(context);
        using var detection = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        detection.CancelAfter(context.Options.TransportDetectionTimeout);
        try
        {
            using var response = await connection.PollAsync(detection.Token, open: true).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                throw await HttpTransportHelpers.ToExceptionAsync(response, "Long-polling", cancellationToken).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
        {
            throw new PushConnectException($"The first long-poll was not answered within {context.Options.TransportDetectionTimeout}.", ex);
        }

        return connection;
    }

    private sealed class LongPollingClientConnection(PushTransportContext context) : IPushTransportConnection, IAckCoalescing, IAcksInRequests
    {
        private readonly Uri _pollUrl = context.GetEndpointUrl("poll", webSocket: false);
        private readonly Uri _sendUrl = context.GetEndpointUrl("send", webSocket: false);
        private const int ReadChunk = 16 * 1024;

        // An empty answer faster than this was not held: the server (or a proxy) is not long-polling.
        private static readonly TimeSpan QuickPoll = TimeSpan.FromMilliseconds(500);
        private readonly CancellationTokenSource _lifetime = new();

        public string TransportName => PushProtocol.Transports.LongPolling;

        public Func<long>? TakeDueAck { get; set; }

        // When a poll last carried an ack (TimeProvider timestamp; 0: never).
        private long _lastAckCarried;

        // Each upstream batch is a POST: acks wait a moment to cover more.
        public TimeSpan AckDelay => HttpTransportHelpers.AckDelayOf(context);

        /// <param name="cancellationToken">Cancels the poll.</param>
        /// <param name="open">The first poll of a connection: the server starts a new connection (and replays what is unacknowledged).</param>
        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        public async ValueTask<HttpResponseMessage> PollAsync(CancellationToken cancellationToken, bool open = false)
        {
            // The poll after a batch says how far the application has taken messages: that ack needs no POST. Like a
            // held ack, at most one per AckDelay: an ack on every poll cost the server more than the POSTs it replaced,
            // and put the ack in front of every poll. (An ack that waits longer goes by POST when its hold ends.)
            long ack = 0;
            if (!open && context.AcksInPoll && TakeDueAck is { } take)
            {
                var time = context.Options.TimeProvider;
                if (_lastAckCarried == 0 || time.GetElapsedTime(_lastAckCarried) >= AckDelay)
                {
                    ack = take();
                    if (ack > 0)
                    {
                        _lastAckCarried = time.GetTimestamp();
                    }
                }
            }
            var url = open ? new Uri(_pollUrl + "&open=1")
                : ack > 0 ? new Uri(_pollUrl + "&ack=" + ack.ToString(System.Globalization.CultureInfo.InvariantCulture))
                : _pollUrl;
            using var request = await HttpTransportHelpers.CreateRequestAsync(HttpMethod.Get, url, context, cancellationToken).ConfigureAwait(false);
            return await HttpTransportHelpers.SendAsync(context, request, cancellationToken).ConfigureAwait(false);
        }

        public ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default) =>
            HttpTransportHelpers.PostBatchAsync(context, _sendUrl, frames, cancellationToken);

        // The session's read loop polls again and again with the same token: linked once, not once per poll.
        private CancellationTokenSource? _linked;
        private CancellationToken _linkedFor;

        private CancellationToken LinkedToken(CancellationToken cancellationToken)
        {
            if (!cancellationToken.CanBeCanceled)
            {
                return _lifetime.Token;
            }

            if (_linked is null || _linkedFor != cancellationToken)
            {
                _linked?.Dispose();
                _linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
                _linkedFor = cancellationToken;
            }

            return _linked.Token;
        }

        // Pooled, like the poll: one receive per delivered batch.
        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        public async ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default)
        {
            var token = LinkedToken(cancellationToken);
            // Empty answers in a row that came at once (see below).
            var quickEmpties = 0;
            while (true)
            {
                // Real time, as the socket's own waits: this guards against a server that does not hold polls, and
                // a test's frozen clock (PushClientOptions.TimeProvider) must neither trip it nor stall it.
                var polledAt = TimeProvider.System.GetTimestamp();
                using var response = await PollAsync(token).ConfigureAwait(false);
                if (response.StatusCode == HttpStatusCode.Conflict)
                {
                    // Another poller took over this session (poll_superseded).
                    return PushReceiveResult.Closed(PushCloseCode.Superseded, "A newer poll took over the session.");
                }

                if (!response.IsSuccessStatusCode)
                {
                    throw new IOException((await HttpTransportHelpers.ToExceptionAsync(response, "Long-polling", token).ConfigureAwait(false)).Message);
                }

                // The body is read straight into the reader's buffer.
                var stream = await response.Content.ReadAsStreamAsync(token).ConfigureAwait(false);
                // In long: MaxMessageBytes may be int.MaxValue ("no limit of my own"), and + 1 must not wrap.
                var limit = (long)context.Options.MaxMessageBytes + 1;
                long total = 0;
                while (true)
                {
                    var read = await stream.ReadAsync(destination.GetMemory(ReadChunk), token).ConfigureAwait(false);
                    if (read == 0)
                    {
                        break;
                    }

                    total += read;
                    if (total > limit)
                    {
                        throw new PushProtocolException(PushCloseCode.MessageTooBig, $"A poll response exceeded the limit of {context.Options.MaxMessageBytes} bytes.");
                    }

                    destination.Advance(read);
                }

                if (total == 0)
                {
                    // The poll timed out with nothing to say: poll again. An empty answer that came at once, again and
                    // again, is a server or proxy that does not hold polls: back off rather than spin.
                    // (A held poll that ends empty is the normal case and starts the count again.)
                    quickEmpties = TimeProvider.System.GetElapsedTime(polledAt) < QuickPoll ? quickEmpties + 1 : 0;
                    if (quickEmpties > 2)
                    {
                        var backoff = TimeSpan.FromMilliseconds(Math.Min(5_000, 100 << Math.Min(quickEmpties - 3, 6)));
                        await Task.Delay(backoff, TimeProvider.System, token).ConfigureAwait(false);
                    }

                    continue;
                }

                return PushReceiveResult.Data;
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
                _lifetime.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }

        public ValueTask DisposeAsync()
        {
            Abort();
            _linked?.Dispose();
            _lifetime.Dispose();
            return default;
        }
    }
}
