using System.Buffers;
using System.Net.WebSockets;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
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
internal sealed class DirectWebSocketMiddleware
{
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
    private readonly IServiceProvider _services;
    private readonly string _path;
    private readonly TimeSpan _headTimeout;
    private PushSessionManager? _sessions;

    public DirectWebSocketMiddleware(ConnectionDelegate next, IServiceProvider services, string path, TimeSpan headTimeout)
    {
        _next = next;
        _services = services;
        _path = path;
        _headTimeout = headTimeout;
    }

    private PushSessionManager Sessions => _sessions ??= _services.GetService<PushSessionManager>()
        ?? throw new InvalidOperationException("UsePushKitWebSockets needs the PushKit services: call builder.Services.AddPushKit().");

    public async Task OnConnectionAsync(ConnectionContext connection)
    {
        connection.Features.Set(Marker.Instance);
        var sessions = Sessions;
        if (!sessions.Options.Transports.Contains(PushProtocol.Transports.WebSocket))
        {
            await _next(connection).ConfigureAwait(false);
            return;
        }

        var input = connection.Transport.Input;
        DirectHandshakeRequest request;
        PushSession? session = null;
        using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(connection.ConnectionClosed))
        {
            timeout.CancelAfter(_headTimeout);
            var verdict = DirectHandshakeVerdict.NeedMore;
            request = default;
            var received = 0L;
            try
            {
                while (verdict == DirectHandshakeVerdict.NeedMore)
                {
                    var result = await input.ReadAsync(timeout.Token).ConfigureAwait(false);
                    var buffer = result.Buffer;
                    received = buffer.Length;
                    verdict = Parse(buffer, out request);
                    if (verdict == DirectHandshakeVerdict.Ours)
                    {
                        // An unknown session or a wrong secret: the HTTP endpoint answers with its documented error.
                        session = sessions.Find(request.SessionId);
                        if (session is null || (session.State == PushChannelState.Closed && !session.HoldsClose) || !session.VerifySecret(request.Secret))
                        {
                            verdict = DirectHandshakeVerdict.NotOurs;
                        }
                    }

                    if (verdict == DirectHandshakeVerdict.NeedMore && (result.IsCompleted || result.IsCanceled))
                    {
                        verdict = DirectHandshakeVerdict.NotOurs;
                    }

                    if (verdict == DirectHandshakeVerdict.NeedMore)
                    {
                        // Seen but not taken: wait for more.
                        input.AdvanceTo(buffer.Start, buffer.End);
                    }
                    else if (verdict == DirectHandshakeVerdict.NotOurs)
                    {
                        // Leave every byte for the HTTP server; its next read returns them at once.
                        input.AdvanceTo(buffer.Start);
                    }
                    else
                    {
                        input.AdvanceTo(buffer.GetPosition(request.HeadLength));
                    }
                }
            }
            catch (OperationCanceledException) when (!connection.ConnectionClosed.IsCancellationRequested)
            {
                if (received > 0)
                {
                    // The start of a PushKit handshake, then nothing for the HTTP server's own header timeout.
                    connection.Abort(new ConnectionAbortedException("The WebSocket handshake did not arrive in time."));
                    return;
                }

                // A connection that has said nothing yet: the HTTP server applies its own keep-alive timeout.
                verdict = DirectHandshakeVerdict.NotOurs;
            }
            catch (OperationCanceledException)
            {
                return;
            }

            if (verdict != DirectHandshakeVerdict.Ours || session is null)
            {
                await _next(connection).ConfigureAwait(false);
                return;
            }
        }

        await WriteSwitchingProtocolsAsync(connection, request.AcceptKey).ConfigureAwait(false);
        using var socket = WebSocket.CreateFromStream(new DuplexPipeStream(connection.Transport), new WebSocketCreationOptions
        {
            IsServer = true,
            KeepAliveInterval = TimeSpan.Zero,
        });
        await using var transport = new WebSocketTransportConnection(socket, sessions.Options.MaxMessageBytes);
        await session.RunConnectionAsync(transport, connection.ConnectionClosed).ConfigureAwait(false);
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
}
