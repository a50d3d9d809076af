using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
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
    /// costs the server about a third less memory: it no longer keeps an HTTP request, its <c>HttpContext</c> and the
    /// application's middleware alive for its whole life. For servers that hold many mostly idle connections (device
    /// fleets, notifications).
    /// </summary>
    /// <remarks>
    /// <para>
    /// A connection whose first request is a well-formed WebSocket handshake for <c>{pattern}/ws</c> carrying a live
    /// session's id and resume secret is upgraded directly. Every other connection and request, including a
    /// handshake this path does not take, goes to the HTTP server and <c>MapPushKit</c>'s endpoints as usual, so
    /// <c>MapPushKit(pattern)</c> is still needed (negotiate, the HTTP transports and every error answer are there).
    /// On such an endpoint the negotiate response closes its connection, so that the client's WebSocket handshake is
    /// the first request of a new connection.
    /// </para>
    /// <para>
    /// What a directly upgraded handshake skips: the application's middleware and the endpoint's metadata
    /// (<c>RequireAuthorization</c>, CORS, rate limiting). The session's resume secret, which only the negotiate
    /// response carries, authenticates it, so authorization still applies to every negotiate, SSE, long-polling
    /// and send request, but a WebSocket connection is not checked against the session's user again.
    /// </para>
    /// <para>
    /// Call it after <c>UseHttps()</c> on the same endpoint; on an HTTPS endpoint configured without
    /// <c>UseHttps()</c> in this order, the path sees encrypted bytes and stays out of the way.
    /// </para>
    /// </remarks>
    /// <param name="listenOptions">The Kestrel endpoint, for example in <c>ConfigureKestrel(k =&gt; k.ListenAnyIP(8080, l =&gt; l.UsePushKitWebSockets("/push")))</c>.</param>
    /// <param name="pattern">The base path given to <c>MapPushKit</c>, in full (with any route group prefix and path base), for example <c>/push</c>.</param>
    /// <returns><paramref name="listenOptions"/>.</returns>
    public static ListenOptions UsePushKitWebSockets(this ListenOptions listenOptions, string pattern)
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

        // Kestrel's limits are read when it builds the endpoint, after all of its configuration has run.
        var logger = (services.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance).CreateLogger(DirectWebSocketMiddleware.LogCategory);
        listenOptions.Use(next =>
            new DirectWebSocketMiddleware(next, sessions, path, listenOptions.KestrelServerOptions.Limits.RequestHeadersTimeout, logger).OnConnectionAsync);
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
