using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using PushKit.Server;
using PushKit.Server.Endpoints;
using PushKit.Server.Sessions;

// Extension methods on ListenOptions live in Kestrel's own extensions' namespace (as UseHttps does).
#pragma warning disable IDE0130
namespace Microsoft.AspNetCore.Hosting;
#pragma warning restore IDE0130

/// <summary>Adds PushKit's direct WebSocket path to a Kestrel endpoint.</summary>
public static class PushKitListenOptionsExtensions
{
    /// <summary>
    /// Takes PushKit WebSocket handshakes below the HTTP server on this endpoint, so that an idle WebSocket connection
    /// costs the server less memory (about 8 KB instead of 14 KB): it no longer keeps an HTTP request, its
    /// <c>HttpContext</c> and the application's middleware alive for its whole life. For servers that hold many mostly
    /// idle connections (device fleets, notifications).
    /// </summary>
    /// <remarks>
    /// <para>
    /// A connection whose first request is a well-formed WebSocket handshake for <c>{pattern}/ws</c> carrying the id
    /// and resume secret of a live session without a user is upgraded directly (sessions bound to a user too, with
    /// <see cref="PushKitDirectWebSocketOptions.AuthenticateUserSessionsBySecret"/>). Every other connection and
    /// request, including a handshake this path does not take, goes to the HTTP server and <c>MapPushKit</c>'s
    /// endpoints as usual, so <c>MapPushKit(pattern)</c> is still needed (negotiate, the HTTP transports and every
    /// error answer are there). On such an endpoint the negotiate response closes its HTTP/1.1 connection, so that
    /// the client's WebSocket handshake is the first request of a new connection.
    /// </para>
    /// <para>
    /// A directly upgraded handshake skips the application's middleware and the endpoint's metadata
    /// (<c>RequireAuthorization</c>, CORS, rate limiting, request logging); the session's resume secret, which only
    /// the negotiate response carries, authenticates it.
    /// </para>
    /// <para>
    /// Call it after <c>UseHttps()</c> on the same endpoint: before it, the path sees encrypted bytes, takes
    /// nothing and logs a warning once. Browsers open WebSockets over HTTP/2 where the endpoint offers it (HTTPS
    /// endpoints do by default), which this path does not see: on an endpoint for browsers, set
    /// <c>Protocols = HttpProtocols.Http1</c> for the saving.
    /// </para>
    /// </remarks>
    /// <param name="listenOptions">The Kestrel endpoint, for example in <c>ConfigureKestrel(k =&gt; k.ListenAnyIP(8080, l =&gt; l.UsePushKitWebSockets("/push")))</c>.</param>
    /// <param name="pattern">The base path given to <c>MapPushKit</c>, in full (with any route group prefix and path base), for example <c>/push</c>.</param>
    /// <returns><paramref name="listenOptions"/>.</returns>
    /// <exception cref="ArgumentException"><paramref name="pattern"/> is not a plain path.</exception>
    /// <exception cref="InvalidOperationException">The PushKit services are missing (<c>AddPushKit()</c>).</exception>
    public static ListenOptions UsePushKitWebSockets(this ListenOptions listenOptions, string pattern) =>
        UsePushKitWebSockets(listenOptions, pattern, configure: null);

    /// <inheritdoc cref="UsePushKitWebSockets(ListenOptions, string)"/>
    /// <param name="listenOptions">The Kestrel endpoint.</param>
    /// <param name="pattern">The base path given to <c>MapPushKit</c>, in full, for example <c>/push</c>.</param>
    /// <param name="configure">Sets the listener's options, for example <see cref="PushKitDirectWebSocketOptions.AuthenticateUserSessionsBySecret"/>.</param>
    public static ListenOptions UsePushKitWebSockets(this ListenOptions listenOptions, string pattern, Action<PushKitDirectWebSocketOptions>? configure)
    {
        ArgumentNullException.ThrowIfNull(listenOptions);
        ArgumentException.ThrowIfNullOrWhiteSpace(pattern);
        var trimmed = pattern.Trim('/');
        var path = trimmed.Length == 0 ? "/ws" : "/" + trimmed + "/ws";
        if (!IsPlainPath(path))
        {
            throw new ArgumentException($"The pattern must be a plain path like '/push' (was '{pattern}').", nameof(pattern));
        }

        var services = listenOptions.ApplicationServices;
        if (services?.GetService<PushSessionManager>() is not { } sessions)
        {
            throw new InvalidOperationException("UsePushKitWebSockets needs the PushKit services: call builder.Services.AddPushKit() first.");
        }

        var options = new PushKitDirectWebSocketOptions();
        configure?.Invoke(options);
        var logger = (services.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance).CreateLogger(DirectWebSocketMiddleware.LogCategory);

        // Kestrel's limits are read when it builds the endpoint, after all of its configuration has run.
        listenOptions.Use(next => new DirectWebSocketMiddleware(
            next, sessions, path, listenOptions.KestrelServerOptions.Limits.RequestHeadersTimeout, logger, options.AuthenticateUserSessionsBySecret).OnConnectionAsync);
        return listenOptions;
    }

    private static bool IsPlainPath(string path)
    {
        foreach (var c in path)
        {
            if (c is < '!' or > '~' or '?' or '#' or '%' or '{' or '}')
            {
                return false;
            }
        }

        return true;
    }
}
