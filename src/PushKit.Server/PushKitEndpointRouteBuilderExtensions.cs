using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using PushKit.Server.Endpoints;
using PushKit.Server.Sessions;

// Extension methods on IEndpointRouteBuilder live in its namespace so that they are found without a using.
#pragma warning disable IDE0130
namespace Microsoft.AspNetCore.Builder;
#pragma warning restore IDE0130

/// <summary>Maps the PushKit endpoints.</summary>
public static class PushKitEndpointRouteBuilderExtensions
{
    /// <summary>
    /// Maps PushKit under <paramref name="pattern"/>: <c>POST {pattern}/negotiate</c>, <c>GET {pattern}/ws</c>
    /// (WebSocket), <c>GET {pattern}/sse</c> (Server-Sent Events), <c>GET {pattern}/poll</c> (long-polling) and
    /// <c>POST {pattern}/send</c> (upstream for SSE and long-polling). Requires <c>services.AddPushKit()</c>.
    /// </summary>
    /// <param name="endpoints">The application's endpoint route builder.</param>
    /// <param name="pattern">The base path, for example <c>/push</c>.</param>
    /// <returns>A convention builder for every PushKit endpoint, so <c>.RequireAuthorization()</c> and <c>.RequireCors()</c> apply to all of them.</returns>
    public static IEndpointConventionBuilder MapPushKit(this IEndpointRouteBuilder endpoints, string pattern)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentNullException.ThrowIfNull(pattern);
        // Resolved once here, not per request: reaching HttpContext.RequestServices creates a request scope, and every
        // ack of the HTTP transports is a request.
        if (endpoints.ServiceProvider.GetService(typeof(PushSessionManager)) is not PushSessionManager sessions)
        {
            throw new InvalidOperationException("MapPushKit needs the PushKit services: call builder.Services.AddPushKit() first.");
        }

        var group = endpoints.MapGroup(pattern);
        group.MapPost("/negotiate", (RequestDelegate)(context => NegotiateEndpoint.HandleAsync(context, sessions))).WithDisplayName("PushKit negotiate");

        // WebSocket upgrades need the WebSocket middleware; a sub-pipeline adds it so the app does not have to.
        var webSockets = endpoints.CreateApplicationBuilder();
        webSockets.UseWebSockets();
        webSockets.Run(context => WebSocketEndpoint.HandleAsync(context, sessions));
        group.Map("/ws", webSockets.Build()).WithDisplayName("PushKit WebSocket");
        group.MapGet("/sse", (RequestDelegate)(context => HttpTransportEndpoints.SseAsync(context, sessions))).WithDisplayName("PushKit Server-Sent Events");
        group.MapGet("/poll", (RequestDelegate)(context => HttpTransportEndpoints.PollAsync(context, sessions))).WithDisplayName("PushKit long-polling");
        group.MapPost("/send", (RequestDelegate)(context => HttpTransportEndpoints.SendAsync(context, sessions))).WithDisplayName("PushKit send");
        return group;
    }
}
