using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text.Json;
using PushKit.Protocol;

namespace PushKit.Client.Http;

/// <summary>What the SSE and long-polling client transports share: authenticated requests, error bodies, upstream POSTs.</summary>
internal static class HttpTransportHelpers
{
    /// <summary>
    /// The default for how long an ack-only POST waits to acknowledge more (see <c>IAckCoalescing</c>). Every ack here is
    /// a whole HTTP request (about 2 KB of garbage in each process, and a request for the server to route and
    /// authenticate); 100 ms makes a busy stream's acks ten a second, where 20 ms made them fifty. Nothing waits on it:
    /// an awaited send and a filling buffer ask for their ack at once (<c>ackNow</c>).
    /// </summary>
    public static readonly TimeSpan DefaultAckDelay = TimeSpan.FromMilliseconds(100);

    /// <summary>The ack delay of an SSE or long-polling connection: the client's <c>AckDelay</c>, else the default.</summary>
    public static TimeSpan AckDelayOf(PushTransportContext context) => context.Options.AckDelay ?? DefaultAckDelay;

    private const string NdjsonContentType = "application/x-ndjson";

    /// <summary>
    /// Sends a request through the channel's connection pool and returns once the response headers are in (the body is
    /// not buffered). Acks are POSTs, dozens a second on a busy stream: going past <see cref="HttpClient"/> saves each
    /// one a linked cancellation source and its registrations.
    /// </summary>
    public static Task<HttpResponseMessage> SendAsync(PushTransportContext context, HttpRequestMessage request, CancellationToken cancellationToken) =>
        context.Invoker is { } invoker
            ? invoker.SendAsync(request, cancellationToken)
            : context.HttpClient.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);

    public static async ValueTask<HttpRequestMessage> CreateRequestAsync(HttpMethod method, Uri url, PushTransportContext context, CancellationToken cancellationToken)
    {
        var options = context.Options;
        // The token first: a provider that fails leaves no request behind.
        var token = await options.GetAccessTokenAsync(cancellationToken).ConfigureAwait(false);
        var request = new HttpRequestMessage(method, url);
        request.Headers.TryAddWithoutValidation(PushProtocol.SecretHeader, context.ResumeSecret);
        foreach (var (name, value) in options.Headers)
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }

        if (token is not null)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }

        return request;
    }

    /// <summary>Turns a failed response into a <see cref="PushConnectException"/> with the PushKit error code, when there is one.</summary>
    public static async Task<PushConnectException> ToExceptionAsync(HttpResponseMessage response, string what, CancellationToken cancellationToken)
    {
        string? code = null, message = null;
        try
        {
            // A PushKit error body is a few hundred bytes; whatever else answered (a proxy's page, a hostile server) is
            // read no further than this, so a huge or endless body costs nothing.
            if (await ReadAtMostAsync(response.Content, MaxErrorBodyBytes, cancellationToken).ConfigureAwait(false) is { } body)
            {
                var error = JsonSerializer.Deserialize(body, ProtocolJsonContext.Default.ErrorResponse);
                code = error?.Error.Code;
                message = error?.Error.Message;
            }
        }
        catch (Exception ex) when (ex is JsonException or IOException or HttpRequestException)
        {
            // Not a PushKit error body, or it broke off: report the status alone.
        }

        // A 404 without a PushKit error is the web server saying nothing is mapped there: the usual first mistake.
        var hint = (code, response.StatusCode) switch
        {
            (null, System.Net.HttpStatusCode.NotFound) =>
                $" (no PushKit endpoint answered at {response.RequestMessage?.RequestUri?.GetLeftPart(UriPartial.Path)}: check that the server calls MapPushKit with the path of the channel's URL, for example \"/push\")",
            (null, System.Net.HttpStatusCode.Unauthorized) =>
                " (the server requires authentication: give the client credentials, for example PushClientOptions.AccessTokenProvider for a bearer token, or Headers)",
            (null, System.Net.HttpStatusCode.Forbidden) =>
                " (the server's authorization refused this caller)",
            _ => "",
        };
        return new PushConnectException(
            $"{what} was refused: HTTP {(int)response.StatusCode}{(code is null ? "" : $" {code}: {message}")}{hint}",
            (int)response.StatusCode,
            code);
    }

    private const int MaxErrorBodyBytes = 64 * 1024;

    /// <summary>The content's bytes when there are at most <paramref name="limit"/> of them; null when there are more.</summary>
    internal static async Task<byte[]?> ReadAtMostAsync(HttpContent content, int limit, CancellationToken cancellationToken)
    {
        var stream = await content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        await using (stream.ConfigureAwait(false))
        {
            var buffer = new byte[limit + 1];
            var length = 0;
            int read;
            while (length < buffer.Length && (read = await stream.ReadAsync(buffer.AsMemory(length), cancellationToken).ConfigureAwait(false)) > 0)
            {
                length += read;
            }

            return length > limit ? null : buffer[..length];
        }
    }

    /// <summary>POSTs one batch of frames to <c>{base}/send</c>.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public static async ValueTask PostBatchAsync(PushTransportContext context, Uri sendUrl, ReadOnlyMemory<byte> frames, CancellationToken cancellationToken)
    {
        using var request = await CreateRequestAsync(HttpMethod.Post, sendUrl, context, cancellationToken).ConfigureAwait(false);
        request.Content = new ReadOnlyMemoryContent(frames);
        request.Content.Headers.TryAddWithoutValidation("Content-Type", NdjsonContentType);
        using var response = await SendAsync(context, request, cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            // The connection is unusable (ended, superseded, session gone): the write loop ends and so does the connection.
            throw new IOException((await ToExceptionAsync(response, "Sending", cancellationToken).ConfigureAwait(false)).Message);
        }
    }
}
