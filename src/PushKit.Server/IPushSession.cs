using System.Security.Claims;

namespace PushKit.Server;

/// <summary>
/// The server-side view of one client's session: an <see cref="IPushChannel"/> (send with acknowledgement, read,
/// close) plus who the client is.
/// </summary>
/// <remarks>
/// A session belongs to PushKit, whoever got it (a handler, <see cref="IPushSessionRegistry"/>): disposing it does
/// nothing, so an <c>await using</c> cannot end a client's session by accident. End it with
/// <see cref="IPushChannel.CloseAsync"/>.
/// </remarks>
public interface IPushSession : IPushChannel
{
    /// <summary>The public session id (never null on the server).</summary>
    new string SessionId { get; }

    /// <summary>The user id the session is bound to (see <see cref="PushKitServerOptions.UserIdProvider"/>); null when anonymous.</summary>
    string? UserId { get; }

    /// <summary>The authenticated user that negotiated the session.</summary>
    ClaimsPrincipal User { get; }

    /// <summary>A place for the application to keep per-session data.</summary>
    IDictionary<object, object?> Items { get; }
}

/// <summary>Finds live sessions.</summary>
public interface IPushSessionRegistry
{
    /// <summary>The number of sessions (connected, or disconnected and within the resume window).</summary>
    int Count { get; }

    /// <summary>Finds a session by id.</summary>
    /// <param name="sessionId">The public session id.</param>
    /// <returns>The session, or null when none has that id.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="sessionId"/> is null.</exception>
    IPushSession? FindSession(string sessionId);

    /// <summary>Lists the sessions, or those of one user.</summary>
    /// <param name="userId">A user id to filter by, or null for all sessions.</param>
    IReadOnlyList<IPushSession> GetSessions(string? userId = null);
}
