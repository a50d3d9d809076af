using System.Buffers;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Extensions.Logging;
using PushKit.Protocol;
using PushKit.Server.Connections;
using PushKit.Server.Sessions;

namespace PushKit.Server.Endpoints;

/// <summary>
/// The HTTP transports: <c>GET {base}/sse</c> (Server-Sent Events), <c>GET {base}/poll</c> (long-polling) and
/// <c>POST {base}/send</c> (upstream for both).
/// </summary>
internal static partial class HttpTransportEndpoints
{
    public static async Task SseAsync(HttpContext context, PushSessionManager sessions)
    {
        if (!await RequireTransportAsync(context, sessions, PushProtocol.Transports.ServerSentEvents).ConfigureAwait(false))
        {
            return;
        }

        var session = await SessionAuthenticator.AuthenticateAsync(context, sessions, connecting: true).ConfigureAwait(false);
        if (session is null)
        {
            return;
        }

        var options = sessions.Options;
        var connection = new SseServerConnection(context, options.SseKeepAliveInterval, sessions.TimeProvider);
        await using (connection.ConfigureAwait(false))
        {
            // Attached before the 'open' event goes out, so a POST that follows it at once finds the connection.
            session.SetHttpConnection(connection);
            try
            {
                await connection.StartAsync(options.SseRetryHint).ConfigureAwait(false);

                // A browser's EventSource reconnects with the id of the last message it processed: that is an ack.
                if (long.TryParse(context.Request.Headers["Last-Event-ID"], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var lastEventId)
                    && lastEventId > 0)
                {
                    session.Engine.AcknowledgeUpTo(lastEventId);
                }

                await session.RunConnectionAsync(connection, context.RequestAborted).ConfigureAwait(false);
            }
            finally
            {
                session.ReleaseHttpConnection(connection);
            }
        }
    }

    public static async Task PollAsync(HttpContext context, PushSessionManager sessions)
    {
        if (!await RequireTransportAsync(context, sessions, PushProtocol.Transports.LongPolling).ConfigureAwait(false))
        {
            return;
        }

        var session = await SessionAuthenticator.AuthenticateAsync(context, sessions, allowEnded: true).ConfigureAwait(false);
        if (session is null)
        {
            return;
        }

        var (open, ack) = ReadPollQuery(context.Request.QueryString.Value);
        if (session.State == PushChannelState.Closed && (!session.HoldsClose || (!open && CloseToCollect(session) is not null)))
        {
            await PollEndedAsync(context, session).ConfigureAwait(false);
            return;
        }

        // (A session that holds its close for a returning client gets a new connection below when the client opens one,
        // or when no connection is left to collect the close from: it carries the close, answers this poll at once,
        // and the client's next poll collects the close.)

        // A poll may carry the client's ack (how far it has received): applied before the poll takes its next batch.
        if (ack > 0)
        {
            session.Engine.AcknowledgeUpTo(ack);
        }

        var options = sessions.Options;
        var connection = session.AttachLongPolling(
            () => new LongPollingServerConnection(session.Engine.PeerMaxMessageBytes, options.LongPollingTimeout, sessions.TimeProvider),
            forceNew: open,
            out var created);
        if (connection is null)
        {
            // The session ended since the check above.
            await PollEndedAsync(context, session).ConfigureAwait(false);
            return;
        }

        if (created)
        {
            // The first poll opens the connection and is answered at once; the session runs in the background
            // until polls stop coming (see LongPollingServerConnection.AbandonAfter) or it is closed.
            _ = RunInBackgroundAsync(session, connection, sessions.Logger);
            context.Response.StatusCode = StatusCodes.Status200OK;
            context.Response.ContentType = "application/x-ndjson";
            context.Response.Headers.CacheControl = "no-store";
            context.Response.ContentLength = 0;
            return;
        }

        // A poll is the client speaking: it counts for the heartbeat as anything it sends does (§10).
        session.Engine.MarkPeerActive();
        await connection.PollAsync(context).ConfigureAwait(false);
    }

    /// <summary>A poll on an ended session: it collects the close frame once, then the session is gone (404).</summary>
    private static async Task PollEndedAsync(HttpContext context, PushSession session)
    {
        // An ended session's last long-polling connection holds its close frame, or is about to (the session ends at
        // once, its connection's write loop writes the frame a moment later): hand it over once.
        if (CloseToCollect(session) is { } ending)
        {
            await ending.PollAsync(context).ConfigureAwait(false);
            return;
        }

        await HttpErrors.WriteAsync(context, StatusCodes.Status404NotFound, PushErrorCodes.SessionNotFound,
            "No such session: it never existed, expired or was closed. Negotiate a new one.").ConfigureAwait(false);
    }

    /// <summary>An ended session's last long-polling connection, when it has (or is about to have) its close for a poll.</summary>
    private static LongPollingServerConnection? CloseToCollect(PushSession session) =>
        session.HttpConnection is LongPollingServerConnection ending && (ending.HasPending || !ending.IsDead) ? ending : null;

    /// <summary>
    /// The poll's own query parameters, read in place and percent-decoded: <c>open=1</c> and <c>ack=N</c> (0 when absent;
    /// a value that is not a positive integer is ignored, and of several the highest counts). <c>Request.Query</c>
    /// would build a dictionary, with the session id and secret in it, for every poll.
    /// </summary>
    private static (bool Open, long Ack) ReadPollQuery(string? query)
    {
        var open = false;
        long ack = 0;
        foreach (var pair in new QueryStringEnumerable(query))
        {
            if (pair.EncodedName.Span.SequenceEqual("open"))
            {
                open |= pair.DecodeValue().Span.SequenceEqual("1");
            }
            else if (pair.EncodedName.Span.SequenceEqual("ack")
                && long.TryParse(pair.DecodeValue().Span, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value))
            {
                ack = Math.Max(ack, value);
            }
        }

        return (open, ack);
    }

    public static async Task SendAsync(HttpContext context, PushSessionManager sessions)
    {
        if (!sessions.Options.Transports.Contains(PushProtocol.Transports.ServerSentEvents)
            && !await RequireTransportAsync(context, sessions, PushProtocol.Transports.LongPolling).ConfigureAwait(false))
        {
            return;
        }

        var session = await SessionAuthenticator.AuthenticateAsync(context, sessions).ConfigureAwait(false);
        if (session is null)
        {
            return;
        }

        var limit = sessions.Options.MaxMessageBytes;
        if (context.Request.ContentLength > limit)
        {
            await TooBigAsync(context, limit).ConfigureAwait(false);
            return;
        }

        if (session.HttpConnection is not { IsDead: false } connection)
        {
            await NoOpenConnectionAsync(context).ConfigureAwait(false);
            return;
        }

        // A client has one POST outstanding (§9.4); a few more are tolerated, and beyond that a POST is refused before
        // its body is read, so that however many a client sends, the server holds at most a few bodies for it while
        // back-pressure holds their answers.
        if (!connection.TryBeginSend())
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status409Conflict, PushErrorCodes.SendInProgress,
                $"More than {HttpServerConnection.MaxOutstandingSends} POST {{base}}/send requests are outstanding for this connection; send the next one after the previous one was answered (§9.4).").ConfigureAwait(false);
            return;
        }

        try
        {
            await ReceiveBatchAsync(context, connection, limit).ConfigureAwait(false);
        }
        finally
        {
            connection.EndSend();
        }
    }

    /// <summary>
    /// The rest of <c>POST {base}/send</c>, for a POST that holds one of its connection's slots: reads the body, checks
    /// it and queues it, waiting for room in the connection's queue while the session is busy (back-pressure).
    /// </summary>
    private static async Task ReceiveBatchAsync(HttpContext context, HttpServerConnection connection, int limit)
    {
        byte[]? body;
        try
        {
            body = await BodyReader.ReadAsync(context.Request, limit, context.RequestAborted).ConfigureAwait(false);
        }
        catch (Exception ex) when (BodyReader.IsIncomplete(context, ex))
        {
            await BodyReader.RefuseIncompleteAsync(context).ConfigureAwait(false);
            return;
        }

        if (body is null)
        {
            await TooBigAsync(context, limit).ConfigureAwait(false);
            return;
        }

        if (body.Length == 0)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.InvalidRequest,
                "The body must carry one or more frames separated by newlines.").ConfigureAwait(false);
            return;
        }

        // Check the framing before anything reaches the session, so a bad body is refused alone and loses nothing.
        var line = 0;
        foreach (var frame in FrameCodec.SplitBatch(body))
        {
            line++;
            if (FrameCodec.TryParse(frame.Span, out _, out var error) == FrameParseStatus.Malformed)
            {
                await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.MalformedFrame,
                    $"Frame {line} is malformed: {error}").ConfigureAwait(false);
                return;
            }
        }

        if (line == 0)
        {
            await HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.InvalidRequest,
                "The body must carry one or more frames separated by newlines.").ConfigureAwait(false);
            return;
        }

        bool queued;
        try
        {
            queued = await connection.EnqueueInboundAsync(body, context.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The client went away before its batch could be queued: nothing of it was applied, nobody to answer.
            return;
        }

        if (!queued)
        {
            // The connection ended while the body was read or the batch waited for room.
            await NoOpenConnectionAsync(context).ConfigureAwait(false);
            return;
        }

        context.Response.StatusCode = StatusCodes.Status204NoContent;
    }

    private static Task NoOpenConnectionAsync(HttpContext context) =>
        HttpErrors.WriteAsync(context, StatusCodes.Status409Conflict, PushErrorCodes.NoOpenConnection,
            "The session has no open SSE or long-polling connection to send on; open one (GET sse or poll) first.");

    private static Task TooBigAsync(HttpContext context, int limit) =>
        HttpErrors.WriteAsync(context, StatusCodes.Status413PayloadTooLarge, PushErrorCodes.MessageTooBig,
            $"The body exceeds the limit of {limit} bytes.");

    private static async Task<bool> RequireTransportAsync(HttpContext context, PushSessionManager sessions, string transport)
    {
        if (sessions.Options.Transports.Contains(transport))
        {
            return true;
        }

        await HttpErrors.WriteAsync(context, StatusCodes.Status404NotFound, PushErrorCodes.TransportNotEnabled,
            $"The {transport} transport is not enabled on this server.").ConfigureAwait(false);
        return false;
    }

    private static async Task RunInBackgroundAsync(PushSession session, LongPollingServerConnection connection, ILogger logger)
    {
        try
        {
            await using (connection.ConfigureAwait(false))
            {
                await session.RunConnectionAsync(connection, CancellationToken.None, attachCounted: true).ConfigureAwait(false);
            }
        }
        catch (Exception ex)
        {
            Log.BackgroundRunFailed(logger, session.SessionId, ex);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(30, LogLevel.Error, "Session {SessionId}: the long-polling connection failed")]
        public static partial void BackgroundRunFailed(ILogger logger, string sessionId, Exception exception);
    }
}

/// <summary>Reads a request body up to a limit.</summary>
internal static class BodyReader
{
    /// <summary>
    /// Whether <paramref name="exception"/> from <see cref="ReadAsync"/> means the body ended before the length it
    /// announced, or the client went away while sending it: the sender's problem, answered with 400 (if anyone still
    /// listens), not a server error.
    /// </summary>
    public static bool IsIncomplete(HttpContext context, Exception exception) =>
        exception is BadHttpRequestException or EndOfStreamException or IOException
        || (exception is OperationCanceledException && context.RequestAborted.IsCancellationRequested);

    /// <summary>Answers an incomplete body with 400 <c>invalid_request</c>, if the client is still there to hear it.</summary>
    public static async Task RefuseIncompleteAsync(HttpContext context)
    {
        if (context.Response.HasStarted || context.RequestAborted.IsCancellationRequested)
        {
            return;
        }

        try
        {
            await Endpoints.HttpErrors.WriteAsync(context, StatusCodes.Status400BadRequest, PushErrorCodes.InvalidRequest,
                "The request body ended before the length it announced.").ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or InvalidOperationException)
        {
            // The client is gone: nobody to tell.
        }
    }

    /// <summary>Returns the body, or null when it exceeds <paramref name="limit"/> bytes.</summary>
    /// <remarks>
    /// <para>
    /// The server's own request body limit (Kestrel's <c>MaxRequestBodySize</c>, 30,000,000 bytes by default) is set
    /// to <paramref name="limit"/> for this request first: <c>MaxMessageBytes</c> may be up to 64 MiB, and a body the
    /// options allow must not be cut off by a lower limit of the host. Where the host's limit cannot be changed any
    /// more (something read the body already), a body over it counts as over the limit too.
    /// </para>
    /// <para>
    /// A body with a Content-Length (every .NET client's) of up to <see cref="EagerBodyBytes"/> is read straight into one
    /// array of its size: most bodies are an ack of a few dozen bytes, and a scratch buffer plus a growing copy per
    /// request made the server allocate 16 times what SignalR's does at a steady SSE rate, and collect garbage in the
    /// middle of deliveries. A larger one grows with what arrives: an announced length costs nothing until it is sent.
    /// </para>
    /// </remarks>
    public static async Task<byte[]?> ReadAsync(HttpRequest request, int limit, CancellationToken cancellationToken)
    {
        if (request.HttpContext.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } bodySize)
        {
            bodySize.MaxRequestBodySize = limit;
        }

        try
        {
            if (request.ContentLength is { } length)
            {
                if (length > limit)
                {
                    return null;
                }

                if (length <= EagerBodyBytes)
                {
                    var body = new byte[length];
                    await request.Body.ReadExactlyAsync(body, cancellationToken).ConfigureAwait(false);
                    return body;
                }

                // A large announced length is only a claim: memory grows with what arrives, so that a client announcing
                // megabytes and sending a few bytes holds a few bytes, not the megabytes.
                var received = await ReadGrowingAsync(request.Body, (int)length, cancellationToken).ConfigureAwait(false);
                if (received.Length < length)
                {
                    throw new EndOfStreamException("The request body ended before the length it announced.");
                }

                return received;
            }

            // Chunked: read in pooled pieces.
            var chunked = await ReadGrowingAsync(request.Body, limit + 1, cancellationToken).ConfigureAwait(false);
            return chunked.Length > limit ? null : chunked;
        }
        catch (BadHttpRequestException ex) when (ex.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            // The server's own limit stopped the body (see above): a chunked body over the limit ends here.
            return null;
        }
    }

    /// <summary>A body with a Content-Length up to this is read straight into one array of its size.</summary>
    internal const int EagerBodyBytes = 64 * 1024;

    /// <summary>Reads at most <paramref name="max"/> bytes, holding only what has arrived (in pooled pieces).</summary>
    private static async Task<byte[]> ReadGrowingAsync(Stream body, int max, CancellationToken cancellationToken)
    {
        var chunk = ArrayPool<byte>.Shared.Rent(8192);
        try
        {
            using var buffer = new MemoryStream();
            int read;
            while (buffer.Length < max
                && (read = await body.ReadAsync(chunk.AsMemory(0, (int)Math.Min(chunk.Length, max - buffer.Length)), cancellationToken).ConfigureAwait(false)) > 0)
            {
                buffer.Write(chunk, 0, read);
            }

            return buffer.ToArray();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
        }
    }
}
