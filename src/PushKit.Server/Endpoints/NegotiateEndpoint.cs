using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using PushKit.Protocol;
using PushKit.Server.Sessions;

namespace PushKit.Server.Endpoints;

/// <summary><c>POST {base}/negotiate</c>: creates a session and tells the client how to connect.</summary>
internal static class NegotiateEndpoint
{
    /// <summary>The largest negotiate body accepted.</summary>
    internal const int MaxBodyBytes = 4096;

    public static async Task HandleAsync(HttpContext context, PushSessionManager sessions)
    {
        var options = sessions.Options;
        if (context.Request.ContentLength > MaxBodyBytes)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status413PayloadTooLarge, PushErrorCodes.MessageTooBig,
                $"The negotiate body must not exceed {MaxBodyBytes} bytes.").ConfigureAwait(false);
            return;
        }

        NegotiateRequest? request;
        try
        {
            var body = await BodyReader.ReadAsync(context.Request, MaxBodyBytes, context.RequestAborted).ConfigureAwait(false);
            if (body is null)
            {
                await HttpErrors.WriteAsync(context, StatusCodes.Status413PayloadTooLarge, PushErrorCodes.MessageTooBig,
                    $"The negotiate body must not exceed {MaxBodyBytes} bytes.").ConfigureAwait(false);
                return;
            }

            request = body.Length == 0 ? null : JsonSerializer.Deserialize(body, ProtocolJsonContext.Default.NegotiateRequest);
        }
        catch (Exception ex) when (BodyReader.IsIncomplete(context, ex))
        {
            await BodyReader.RefuseIncompleteAsync(context).ConfigureAwait(false);
            return;
        }
        catch (JsonException ex)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.InvalidRequest,
                $"The negotiate body must be JSON like {{\"protocolVersion\":{PushProtocol.Version}}}: {ex.Message}").ConfigureAwait(false);
            return;
        }

        if (request is null)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.InvalidRequest,
                $"The negotiate body must be JSON like {{\"protocolVersion\":{PushProtocol.Version}}}.").ConfigureAwait(false);
            return;
        }

        if (request.ProtocolVersion != PushProtocol.Version)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.UnsupportedProtocolVersion,
                $"Protocol version {request.ProtocolVersion} is not supported; this server speaks version {PushProtocol.Version}.",
                [PushProtocol.Version]).ConfigureAwait(false);
            return;
        }

        if (request.MaxMessageBytes is < 1024)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.InvalidRequest,
                $"'maxMessageBytes' must be at least 1024 (was {request.MaxMessageBytes}).").ConfigureAwait(false);
            return;
        }

        var session = sessions.Create(PushSessionManager.UserOf(context), out var secret, request.MaxMessageBytes);
        var response = new NegotiateResponse
        {
            ProtocolVersion = PushProtocol.Version,
            SessionId = session.SessionId,
            ResumeSecret = secret,
            Transports = [.. options.Transports],
            Limits = new NegotiateLimits { MaxMessageBytes = options.MaxMessageBytes },
            Heartbeat = new NegotiateHeartbeat
            {
                IntervalMs = (long)options.HeartbeatInterval.TotalMilliseconds,
                TimeoutMs = (long)options.HeartbeatTimeout.TotalMilliseconds,
            },
            ResumeWindowMs = (long)options.ResumeWindow.TotalMilliseconds,
            LongPolling = new NegotiateLongPolling { PollTimeoutMs = (long)options.LongPollingTimeout.TotalMilliseconds, AcksInPoll = true },
        };

        // The response carries a secret: never cache it.
        context.Response.Headers.CacheControl = "no-store";
        if (context.Features.Get<DirectWebSocketMiddleware.Marker>() is not null)
        {
            // The direct WebSocket path takes only a connection's first request: the client's handshake must come on
            // a new connection, not on this one kept alive.
            context.Response.Headers.Connection = "close";
        }

        context.Response.ContentType = "application/json; charset=utf-8";
        await JsonSerializer.SerializeAsync(context.Response.Body, response, ProtocolJsonContext.Default.NegotiateResponse, context.RequestAborted)
            .ConfigureAwait(false);
    }
}
