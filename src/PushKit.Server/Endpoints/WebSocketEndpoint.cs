using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.WebUtilities;
using PushKit.Connections;
using PushKit.Protocol;
using PushKit.Server.Sessions;

namespace PushKit.Server.Endpoints;

/// <summary><c>GET {base}/ws?session=…&amp;secret=…</c>: carries a negotiated session over a WebSocket.</summary>
internal static class WebSocketEndpoint
{
    private static readonly WebSocketAcceptContext s_accept = new() { KeepAliveInterval = TimeSpan.Zero };

    public static async Task HandleAsync(HttpContext context, PushSessionManager sessions)
    {
        if (!sessions.Options.Transports.Contains(PushProtocol.Transports.WebSocket))
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status404NotFound, PushErrorCodes.TransportNotEnabled,
                "The WebSocket transport is not enabled on this server.").ConfigureAwait(false);
            return;
        }

        if (!context.WebSockets.IsWebSocketRequest)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.WebSocketRequired,
                "This endpoint accepts WebSocket upgrade requests only.").ConfigureAwait(false);
            return;
        }

        var session = await SessionAuthenticator.AuthenticateAsync(context, sessions, connecting: true).ConfigureAwait(false);
        if (session is null)
        {
            return;
        }

        // No WebSocket keep-alive pings (the app's WebSocketOptions would add them every 2 minutes, with a timer per
        // connection): PushKit's heartbeat already proves the connection both ways.
        using var socket = await context.WebSockets.AcceptWebSocketAsync(s_accept).ConfigureAwait(false);
        await using var connection = new WebSocketTransportConnection(socket, sessions.Options.MaxMessageBytes);
        await session.RunConnectionAsync(connection, context.RequestAborted).ConfigureAwait(false);
    }
}

/// <summary>Checks the session id, resume secret and user of a connection request; answers the error itself.</summary>
internal static class SessionAuthenticator
{
    /// <param name="context">The request.</param>
    /// <param name="sessions">The sessions.</param>
    /// <param name="allowEnded">Also return a session that has ended but is still delivering its close.</param>
    /// <param name="connecting">
    /// The request opens a connection: also return a session that the server ended and that holds its close for the
    /// client (<see cref="PushSession.HoldsClose"/>), so that the connection carries that close.
    /// </param>
    public static async ValueTask<PushSession?> AuthenticateAsync(HttpContext context, PushSessionManager sessions, bool allowEnded = false, bool connecting = false)
    {
        // The query is read in place rather than through Request.Query, which would build a dictionary for every
        // POST (an ack mostly) and keep it for the whole life of a long-lived connection.
        ReadOnlyMemory<char> sessionIdValue = default, secretValue = default;
        foreach (var pair in new QueryStringEnumerable(context.Request.QueryString.Value))
        {
            if (sessionIdValue.IsEmpty && pair.EncodedName.Span.SequenceEqual(PushProtocol.Query.SessionId))
            {
                sessionIdValue = pair.DecodeValue();
            }
            else if (secretValue.IsEmpty && pair.EncodedName.Span.SequenceEqual(PushProtocol.Query.Secret))
            {
                secretValue = pair.DecodeValue();
            }
        }

        var sessionId = sessionIdValue.ToString();
        var secretHeader = context.Request.Headers[PushProtocol.SecretHeader];
        var secret = secretHeader.Count > 0 && !string.IsNullOrEmpty(secretHeader[0]) ? secretHeader[0].AsMemory() : secretValue;

        if (sessionId.Length == 0 || secret.Length == 0)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.InvalidRequest,
                $"The request must carry the session id ('{PushProtocol.Query.SessionId}' query parameter) and its secret ('{PushProtocol.SecretHeader}' header or '{PushProtocol.Query.Secret}' query parameter) from the negotiate response.").ConfigureAwait(false);
            return null;
        }

        var session = sessions.Find(sessionId);
        if (session is null || !(allowEnded || (connecting ? session.TakesNewConnection : session.State != PushChannelState.Closed)))
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status404NotFound, PushErrorCodes.SessionNotFound,
                "No such session: it never existed, expired or was closed. Negotiate a new one.").ConfigureAwait(false);
            return null;
        }

        // Without authentication, HttpContext.User would create an empty principal for the connection to keep.
        var user = PushSessionManager.UserOf(context) ?? PushSessionManager.Anonymous;
        if (!session.VerifySecret(secret.Span) || !string.Equals(session.UserId, sessions.Options.UserIdProvider(user), StringComparison.Ordinal))
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status403Forbidden, PushErrorCodes.InvalidSessionSecret,
                "The resume secret does not match the session, or the caller is not the session's user.").ConfigureAwait(false);
            return null;
        }

        return session;
    }
}
