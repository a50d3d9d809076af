using System.Net.WebSockets;
using PushKit.Connections;
using PushKit.Protocol;

namespace PushKit.Client.WebSockets;

/// <summary>The WebSocket client transport: <c>GET {base}/ws?session=…&amp;secret=…</c> upgraded to a WebSocket.</summary>
internal sealed class WebSocketPushTransport : IPushTransport
{
    /// <summary>
    /// The default for how long an ack-only frame waits to acknowledge more: 100 ms, as on the HTTP transports. Each
    /// ack costs both processes a wake-up (the client's timer and send, the server's read and bookkeeping); at 5 ms, a
    /// steady stream of a message every 2 ms made a third as many acks as messages and cost each process a third more
    /// CPU than SignalR's. Nothing waits on a held ack: a sender that awaits one, or a server whose buffer is half
    /// full, asks for it at once (<c>ackNow</c>).
    /// </summary>
    public static readonly TimeSpan DefaultAckDelay = TimeSpan.FromMilliseconds(100);

    public string Name => PushProtocol.Transports.WebSocket;

    public async ValueTask<IPushTransportConnection> ConnectAsync(PushTransportContext context, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        var options = context.Options;
        var socket = new ClientWebSocket();
        try
        {
            socket.Options.CollectHttpResponseDetails = true;
            socket.Options.SetRequestHeader(PushProtocol.SecretHeader, context.ResumeSecret);
            foreach (var (name, value) in options.Headers)
            {
                socket.Options.SetRequestHeader(name, value);
            }

            if (await options.GetAccessTokenAsync(cancellationToken).ConfigureAwait(false) is { } token)
            {
                socket.Options.SetRequestHeader("Authorization", "Bearer " + token);
            }

            options.ConfigureWebSocket?.Invoke(socket.Options);

            // A proxy that swallows the upgrade without answering must not use up the whole connect timeout.
            using var detection = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            detection.CancelAfter(options.TransportDetectionTimeout);
            try
            {
                var url = context.GetEndpointUrl("ws", webSocket: true);
                if (options.ConfigureWebSocket is null && context.Invoker is { } invoker)
                {
                    // One TCP connection per client: the upgrade reuses the pooled negotiate connection.
                    await socket.ConnectAsync(url, invoker, detection.Token).ConfigureAwait(false);
                }
                else
                {
                    // Options such as a proxy or client certificates set through ConfigureWebSocket apply only to a
                    // socket that opens its own connection.
                    await socket.ConnectAsync(url, detection.Token).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
            {
                throw new PushConnectException($"The WebSocket handshake was not answered within {options.TransportDetectionTimeout}.", ex);
            }

            return new WebSocketTransportConnection(socket, options.MaxMessageBytes) { AckDelay = options.AckDelay ?? DefaultAckDelay };
        }
        catch (WebSocketException ex)
        {
            var status = socket.HttpStatusCode == 0 ? (int?)null : (int)socket.HttpStatusCode;
            socket.Dispose();
            var code = status switch
            {
                404 => PushErrorCodes.SessionNotFound,
                403 => PushErrorCodes.InvalidSessionSecret,
                _ => null,
            };
            throw new PushConnectException(
                $"The WebSocket connection could not be opened{(status is null ? "" : $" (HTTP {status}{(code is null ? "" : ", " + code)})")}: {ex.Message}",
                status,
                code,
                ex);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
