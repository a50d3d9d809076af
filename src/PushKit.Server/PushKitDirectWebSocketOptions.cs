namespace PushKit.Server;

/// <summary>Options of the direct WebSocket listener (<c>ListenOptions.UsePushKitWebSockets</c>).</summary>
public sealed class PushKitDirectWebSocketOptions
{
    /// <summary>
    /// Whether handshakes for sessions bound to a user (negotiated by an authenticated caller) are taken directly
    /// too, authenticated by the session's resume secret alone. Default <see langword="false"/>: those handshakes go
    /// through <c>MapPushKit</c>'s endpoint, which runs the application's authentication and authorization and checks
    /// that the caller is the session's user, and only sessions without a user (where the secret is the only
    /// credential on either path) are taken directly.
    /// </summary>
    /// <remarks>
    /// With <see langword="true"/>, whoever holds a session's secret can carry that session over a WebSocket without
    /// the user's credentials: a secret leaked from a log or a browser's history (browsers put it in the URL) is
    /// enough, and a user whose access is revoked keeps reconnecting until the session ends. Choose it when idle
    /// memory matters more, and end a revoked user's sessions yourself (<see cref="IPushSessionRegistry"/>).
    /// </remarks>
    public bool AuthenticateUserSessionsBySecret { get; set; }
}
