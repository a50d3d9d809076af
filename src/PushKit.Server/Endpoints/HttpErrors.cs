using System.Text.Json;
using Microsoft.AspNetCore.Http;
using PushKit.Protocol;

namespace PushKit.Server.Endpoints;

/// <summary>Writes PushKit's HTTP error body: <c>{"error":{"code":…,"message":…}}</c>.</summary>
internal static class HttpErrors
{
    public static Task WriteAsync(HttpContext context, int status, string code, string message, int[]? supportedVersions = null)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json; charset=utf-8";
        var body = new ErrorResponse { Error = new ErrorBody { Code = code, Message = message, SupportedVersions = supportedVersions } };
        return JsonSerializer.SerializeAsync(context.Response.Body, body, ProtocolJsonContext.Default.ErrorResponse, context.RequestAborted);
    }
}
