using System.Buffers;
using System.Net.WebSockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Logging;
using PushKit.Connections;
using PushKit.Protocol;
using PushKit.Server.Connections;
using PushKit.Server.Sessions;

namespace PushKit.Server.Endpoints;

/// <summary>
/// Kestrel connection middleware (<c>ListenOptions.UsePushKitWebSockets</c>): a connection whose first request is a
/// PushKit WebSocket handshake with a valid session and secret is upgraded here, below the HTTP server, so that the
/// idle connection does not keep an HTTP request, its context and the app's middleware alive for its whole life.
/// Every other connection, and every handshake this narrow reader does not take, goes to the HTTP server unchanged.
/// </summary>
internal sealed partial class DirectWebSocketMiddleware
{
    /// <summary>The log category.</summary>
    internal const string LogCategory = "PushKit.Server.DirectWebSockets";

    /// <summary>
    /// A connection-level feature that marks the connections of a listener with the direct path. The negotiate endpoint
    /// reads it and closes its connection after answering, so that the client's WebSocket handshake comes on a new
    /// connection, as its first request (a connection's later requests always go through the HTTP server).
    /// </summary>
    internal sealed class Marker
    {
        public static readonly Marker Instance = new();
    }

    private readonly ConnectionDelegate _next;
    private readonly PushSessionManager _sessions;
    private readonly string _path;
    private readonly TimeSpan _headTimeout;
    private readonly ILogger _logger;
    private readonly bool _takeUserSessions;
    private int _warnedOfTls;

    public DirectWebSocketMiddleware(ConnectionDelegate next, PushSessionManager sessions, string path, TimeSpan headTimeout, ILogger logger, bool takeUserSessions)
    {
        _next = next;
        _sessions = sessions;
        _path = path;
        _headTimeout = headTimeout;
        _logger = logger;
        _takeUserSessions = takeUserSessions;
    }

    public Task OnConnectionAsync(ConnectionContext connection)
    {
        var sessions = _sessions;
        if (!sessions.Options.Transports.Contains(PushProtocol.Transports.WebSocket))
        {
            return _next(connection);
        }

        return TakeOrPassAsync(connection, sessions);
    }

    private async Task TakeOrPassAsync(ConnectionContext connection, PushSessionManager sessions)
    {
        var (verdict, request, session) = await ReadFirstRequestAsync(connection, sessions).ConfigureAwait(false);
        if (verdict == DirectHandshakeVerdict.NeedMore)
        {
            // Given up on (the connection closed or was cut).
            return;
        }

        if (verdict == DirectHandshakeVerdict.NotOurs || session is null)
        {
            await _next(connection).ConfigureAwait(false);
            return;
        }

        try
        {
            await WriteSwitchingProtocolsAsync(connection, request.AcceptKey).ConfigureAwait(false);

            // No WebSocket keep-alive pings: PushKit's heartbeat already proves the connection both ways.
            using var socket = WebSocket.CreateFromStream(new DuplexPipeStream(connection.Transport), new WebSocketCreationOptions
            {
                IsServer = true,
                KeepAliveInterval = TimeSpan.Zero,
            });
            await using var transport = new WebSocketTransportConnection(socket, sessions.Options.MaxMessageBytes);
            await session.RunConnectionAsync(transport, connection.ConnectionClosed).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (connection.ConnectionClosed.IsCancellationRequested)
        {
            // The client left during the upgrade: nothing to report (the session waits for its resume as usual).
        }
    }

    /// <summary>
    /// Reads the connection's first request until it is known to be a handshake this path takes (consumed) or not
    /// (left in the pipe, every byte); <see cref="DirectHandshakeVerdict.NeedMore"/> when the connection was closed or
    /// cut meanwhile.
    /// </summary>
    private async ValueTask<(DirectHandshakeVerdict Verdict, DirectHandshakeRequest Request, PushSession? Session)> ReadFirstRequestAsync(
        ConnectionContext connection, PushSessionManager sessions)
    {
        var input = connection.Transport.Input;

        // The server's stop asks every connection to close: one still waiting for its first request closes at once,
        // as the HTTP server closes its idle connections, instead of holding the stop until the head timeout.
        var stopping = connection.Features.Get<IConnectionLifetimeNotificationFeature>()?.ConnectionClosedRequested ?? default;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(connection.ConnectionClosed, stopping);
        timeout.CancelAfter(_headTimeout);
        var received = 0L;
        try
        {
            while (true)
            {
                var result = await input.ReadAsync(timeout.Token).ConfigureAwait(false);
                var buffer = result.Buffer;
                if (received == 0 && !buffer.IsEmpty)
                {
                    // From the first byte on, the head has the HTTP server's own time to arrive in full.
                    timeout.CancelAfter(_headTimeout);
                }

                received = buffer.Length;
                var verdict = Parse(buffer, out var request);
                PushSession? session = null;
                if (verdict == DirectHandshakeVerdict.Ours)
                {
                    // An unknown session or a wrong secret: the HTTP endpoint answers with its documented error. A
                    // session bound to a user, unless the endpoint says otherwise: the HTTP endpoint also checks that
                    // the caller is that user, which needs the application's authentication.
                    session = sessions.Find(request.SessionId);
                    if (session is null
                        || !session.TakesNewConnection
                        || (session.UserId is not null && !_takeUserSessions)
                        || !session.VerifySecret(request.Secret))
                    {
                        verdict = DirectHandshakeVerdict.NotOurs;
                    }
                }
                else if (verdict == DirectHandshakeVerdict.NeedMore && (result.IsCompleted || result.IsCanceled))
                {
                    verdict = DirectHandshakeVerdict.NotOurs;
                }

                switch (verdict)
                {
                    case DirectHandshakeVerdict.NeedMore:
                        // Seen but not taken: wait for more.
                        input.AdvanceTo(buffer.Start, buffer.End);
                        break;
                    case DirectHandshakeVerdict.NotOurs:
                        Mark(connection, buffer);

                        // Leave every byte for the HTTP server; its next read returns them at once.
                        input.AdvanceTo(buffer.Start);
                        return (verdict, default, null);
                    default:
                        input.AdvanceTo(buffer.GetPosition(request.HeadLength));
                        return (verdict, request, session);
                }
            }
        }
        catch (OperationCanceledException) when (!connection.ConnectionClosed.IsCancellationRequested && !stopping.IsCancellationRequested)
        {
            if (received > 0)
            {
                // The start of a PushKit handshake, then nothing for as long as the HTTP server waits for a request's headers.
                connection.Abort(new ConnectionAbortedException("The WebSocket handshake did not arrive in time."));
                return (DirectHandshakeVerdict.NeedMore, default, null);
            }

            // A connection that has said nothing yet: the HTTP server applies its own keep-alive timeout.
            return (DirectHandshakeVerdict.NotOurs, default, null);
        }
        catch (OperationCanceledException)
        {
            return (DirectHandshakeVerdict.NeedMore, default, null);
        }
    }

    /// <summary>
    /// Marks a connection that starts with an HTTP request (one whose negotiate should close it, see
    /// <see cref="Marker"/>); not one that starts with a TLS handshake, which this path can never take (it was added
    /// before <c>UseHttps()</c>: said once in the log).
    /// </summary>
    private void Mark(ConnectionContext connection, ReadOnlySequence<byte> buffer)
    {
        if (buffer.IsEmpty)
        {
            return;
        }

        var first = buffer.FirstSpan[0];
        if (first == 0x16)
        {
            if (Interlocked.Exchange(ref _warnedOfTls, 1) == 0)
            {
                Log.SeesTls(_logger, connection.LocalEndPoint?.ToString() ?? "?");
            }

            return;
        }

        // An HTTP/1.x request (or HTTP/2's preface, whose responses Kestrel strips of Connection headers anyway).
        if (first is >= (byte)'A' and <= (byte)'Z')
        {
            connection.Features.Set(Marker.Instance);
        }
    }

    private DirectHandshakeVerdict Parse(ReadOnlySequence<byte> buffer, out DirectHandshakeRequest request)
    {
        if (buffer.IsSingleSegment)
        {
            return DirectHandshake.Parse(buffer.FirstSpan, _path, out request);
        }

        var length = (int)Math.Min(buffer.Length, DirectHandshake.MaxHeadBytes);
        var rented = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            buffer.Slice(0, length).CopyTo(rented);
            return DirectHandshake.Parse(rented.AsSpan(0, length), _path, out request);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private static async Task WriteSwitchingProtocolsAsync(ConnectionContext connection, string acceptKey)
    {
        var response = Encoding.ASCII.GetBytes(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + acceptKey + "\r\n\r\n");
        await connection.Transport.Output.WriteAsync(response, connection.ConnectionClosed).ConfigureAwait(false);
    }

    private static partial class Log
    {
        [LoggerMessage(50, LogLevel.Warning, "The direct WebSocket listener on {Endpoint} received a TLS handshake: it sees encrypted bytes and takes no connection. Call UsePushKitWebSockets after UseHttps() on this endpoint")]
        public static partial void SeesTls(ILogger logger, string endpoint);
    }
}
