using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Extensions.Primitives;
using Microsoft.Extensions.DependencyInjection;
using PushKit.Connections;
using PushKit.Protocol;
using PushKit.Server.Sessions;

namespace PushKit.Server.Endpoints;

/// <summary><c>GET {base}/ws?session=…&amp;secret=…</c>: carries a negotiated session over a WebSocket.</summary>
internal static class WebSocketEndpoint
{
    public static async Task HandleAsync(HttpContext context)
    {
        var sessions = context.RequestServices.GetRequiredService<PushSessionManager>();
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

        var session = await SessionAuthenticator.AuthenticateAsync(context, sessions).ConfigureAwait(false);
        if (session is null)
        {
            return;
        }

        using var socket = await context.WebSockets.AcceptWebSocketAsync().ConfigureAwait(false);
        await using var connection = new WebSocketTransportConnection(socket, sessions.Options.MaxMessageBytes);
        await session.RunConnectionAsync(connection, context.RequestAborted).ConfigureAwait(false);
    }
}

/// <summary>Checks the session id, resume secret and user of a connection request; answers the error itself.</summary>
internal static class SessionAuthenticator
{
    private static string Get(Dictionary<string, StringValues>? query, string name) =>
        query is not null && query.TryGetValue(name, out var value) ? value.ToString() : string.Empty;

    /// <param name="context">The request.</param>
    /// <param name="sessions">The sessions.</param>
    /// <param name="allowEnded">Also return a session that has ended but is still delivering its close.</param>
    public static async Task<PushSession?> AuthenticateAsync(HttpContext context, PushSessionManager sessions, bool allowEnded = false)
    {
        // The query is parsed on the spot rather than through Request.Query, which would keep a parsed copy for the
        // whole life of a long-lived connection.
        var query = QueryHelpers.ParseNullableQuery(context.Request.QueryString.Value);
        var sessionId = Get(query, PushProtocol.Query.SessionId);
        var secret = context.Request.Headers[PushProtocol.SecretHeader].ToString();
        if (secret.Length == 0)
        {
            secret = Get(query, PushProtocol.Query.Secret);
        }

        if (sessionId.Length == 0 || secret.Length == 0)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.InvalidRequest,
                $"The request must carry the session id ('{PushProtocol.Query.SessionId}' query parameter) and its secret ('{PushProtocol.SecretHeader}' header or '{PushProtocol.Query.Secret}' query parameter) from the negotiate response.").ConfigureAwait(false);
            return null;
        }

        var session = sessions.Find(sessionId);
        if (session is null || (session.State == PushChannelState.Closed && !allowEnded))
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status404NotFound, PushErrorCodes.SessionNotFound,
                "No such session: it never existed, expired or was closed. Negotiate a new one.").ConfigureAwait(false);
            return null;
        }

        // Without authentication, HttpContext.User would create an empty principal for the connection to keep.
        var user = PushSessionManager.UserOf(context) ?? PushSessionManager.Anonymous;
        if (!session.VerifySecret(secret) || !string.Equals(session.UserId, sessions.Options.UserIdProvider(user), StringComparison.Ordinal))
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status403Forbidden, PushErrorCodes.InvalidSessionSecret,
                "The resume secret does not match the session, or the caller is not the session's user.").ConfigureAwait(false);
            return null;
        }

        return session;
    }
}
