using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// Bad input on the HTTP transports' endpoints (sse, poll, send), one test per case: a documented status and error
/// body; bystander sessions on SSE and long-polling keep working.
/// </summary>
public sealed class HttpBadInputTests : IAsyncLifetime
{
    private const int Limit = 64 * 1024;
    private readonly Collector _collector = new();
    private PushTestServer _server = null!;
    private IPushChannel[] _bystanders = [];

    public async Task InitializeAsync()
    {
        _server = await PushTestServer.StartAsync(push => push.AddCollector(_collector), o =>
        {
            o.MaxMessageBytes = Limit;
            o.LongPollingTimeout = TimeSpan.FromSeconds(2);
        });
        _bystanders = [await _server.ConnectClientAsync("sse"), await _server.ConnectClientAsync("longpolling")];
    }

    public async Task DisposeAsync()
    {
        foreach (var bystander in _bystanders)
        {
            await bystander.SendStringAsync("bystander").AsTask().WaitAsync(TestTimeouts.Default);
            Assert.True(await _server.Sender.SendToSessionAsync(bystander.SessionId!, PushMessage.FromString("still here")).AsTask().WaitAsync(TestTimeouts.Default));
            Assert.Equal("still here", (await bystander.ReadAsync(1)).Single().GetString());
        }

        Assert.Equal(2, _collector.All.Count(m => m.Message.GetString() == "bystander"));
        await _server.DisposeAsync();
    }

    private Uri Endpoint(string path, string sessionId, string secret) =>
        new($"{_server.BaseUrl}/{path}?session={Uri.EscapeDataString(sessionId)}&secret={Uri.EscapeDataString(secret)}");

    private static async Task<string?> ErrorCodeAsync(HttpResponseMessage response)
    {
        var body = await response.Content.ReadAsStringAsync();
        return body.Length == 0 ? null : JsonDocument.Parse(body).RootElement.GetProperty("error").GetProperty("code").GetString();
    }

    private async Task<HttpResponseMessage> PostAsync(Uri url, string? body)
    {
        var content = body is null ? null : new StringContent(body, Encoding.UTF8, "application/x-ndjson");
        return await _server.Http.PostAsync(url, content).WaitAsync(TestTimeouts.Default);
    }

    /// <summary>Negotiates a session and opens its long-polling connection (the first poll).</summary>
    private async Task<(string SessionId, string Secret)> OpenLongPollingAsync()
    {
        var (sessionId, secret, _) = await _server.NegotiateRawAsync();
        using var open = await _server.Http.GetAsync(Endpoint("poll", sessionId, secret)).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.OK, open.StatusCode);
        return (sessionId, secret);
    }

    [Theory]
    [InlineData("sse")]
    [InlineData("poll")]
    public async Task An_unknown_session_is_404_session_not_found(string path)
    {
        using var response = await _server.Http.GetAsync(Endpoint(path, "nope", "nope")).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Equal("session_not_found", await ErrorCodeAsync(response));
    }

    [Fact]
    public async Task Send_for_an_unknown_session_is_404_session_not_found()
    {
        using var response = await PostAsync(Endpoint("send", "nope", "nope"), "{\"type\":\"ping\"}");
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Equal("session_not_found", await ErrorCodeAsync(response));
    }

    [Theory]
    [InlineData("sse")]
    [InlineData("poll")]
    [InlineData("send")]
    public async Task A_forged_secret_is_403_invalid_session_secret(string path)
    {
        var (sessionId, secret, _) = await _server.NegotiateRawAsync();
        var url = Endpoint(path, sessionId, "forged" + secret);
        using var response = path == "send" ? await PostAsync(url, "{\"type\":\"ping\"}") : await _server.Http.GetAsync(url).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
        Assert.Equal("invalid_session_secret", await ErrorCodeAsync(response));
    }

    [Theory]
    [InlineData("poll")]
    [InlineData("send")]
    public async Task A_secret_far_longer_than_any_real_one_is_403_invalid_session_secret(string path)
    {
        var (sessionId, secret, _) = await _server.NegotiateRawAsync();
        var url = Endpoint(path, sessionId, string.Concat(Enumerable.Repeat(secret, 100)));
        using var response = path == "send" ? await PostAsync(url, "{\"type\":\"ping\"}") : await _server.Http.GetAsync(url).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
        Assert.Equal("invalid_session_secret", await ErrorCodeAsync(response));
    }

    [Fact]
    public async Task Percent_encoded_query_values_are_decoded()
    {
        // The query is read in place, not through Request.Query: escaped values must still be decoded.
        var (sessionId, secret, _) = await _server.NegotiateRawAsync();
        static string EscapeEvery(string value) => string.Concat(value.Select(c => $"%{(int)c:X2}"));
        var url = new Uri($"{_server.BaseUrl}/poll?session={EscapeEvery(sessionId)}&secret={EscapeEvery(secret)}", new UriCreationOptions { DangerousDisablePathAndQueryCanonicalization = true });
        Assert.Contains("%", url.Query, StringComparison.Ordinal);
        using var response = await _server.Http.GetAsync(url).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    [Theory]
    [InlineData("sse", "POST")]
    [InlineData("poll", "POST")]
    [InlineData("send", "GET")]
    [InlineData("send", "PUT")]
    public async Task The_wrong_method_is_405(string path, string method)
    {
        var (sessionId, secret, _) = await _server.NegotiateRawAsync();
        using var request = new HttpRequestMessage(new HttpMethod(method), Endpoint(path, sessionId, secret));
        using var response = await _server.Http.SendAsync(request).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, response.StatusCode);
    }

    [Fact]
    public async Task Send_without_a_body_is_400_invalid_request()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        using var response = await PostAsync(Endpoint("send", sessionId, secret), null);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("invalid_request", await ErrorCodeAsync(response));
    }

    [Fact]
    public async Task Send_with_only_blank_lines_is_400_invalid_request()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        using var response = await PostAsync(Endpoint("send", sessionId, secret), "\n\n");
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("invalid_request", await ErrorCodeAsync(response));
    }

    [Fact]
    public async Task A_malformed_body_is_400_malformed_frame_and_nothing_of_it_is_applied()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        using var response = await PostAsync(Endpoint("send", sessionId, secret), "{\"type\":\"msg\",\"seq\":1,\"data\":\"first\"}\n{\"type\":");
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("malformed_frame", await ErrorCodeAsync(response));

        // The whole body was refused, so the session expects sequence 1 still, and takes it now.
        using var retry = await PostAsync(Endpoint("send", sessionId, secret), "{\"type\":\"msg\",\"seq\":1,\"data\":\"first\"}");
        Assert.Equal(HttpStatusCode.NoContent, retry.StatusCode);
        await _collector.TakeAsync(1);
        Assert.Single(_collector.All, m => m.Session.SessionId == sessionId);
    }

    [Fact]
    public async Task A_body_that_is_not_UTF8_is_400_malformed_frame_even_in_a_frame_of_unknown_type()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        var body = Encoding.UTF8.GetBytes("{\"type\":\"msg\",\"seq\":1,\"data\":\"first\"}\n{\"type\":\"future\",\"x\":\"?\"}");
        body[^3] = 0xFF;
        using var content = new ByteArrayContent(body);
        using var response = await _server.Http.PostAsync(Endpoint("send", sessionId, secret), content).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("malformed_frame", await ErrorCodeAsync(response));

        // Nothing of the body was applied: the session still expects sequence 1.
        using var retry = await PostAsync(Endpoint("send", sessionId, secret), "{\"type\":\"msg\",\"seq\":1,\"data\":\"first\"}");
        Assert.Equal(HttpStatusCode.NoContent, retry.StatusCode);
        await _collector.TakeAsync(1);
        Assert.Single(_collector.All, m => m.Session.SessionId == sessionId);
    }

    [Fact]
    public async Task An_oversize_body_is_413_message_too_big()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        using var response = await PostAsync(Endpoint("send", sessionId, secret), $"{{\"type\":\"msg\",\"seq\":1,\"data\":\"{new string('x', Limit)}\"}}");
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        Assert.Equal("message_too_big", await ErrorCodeAsync(response));
    }

    [Fact]
    public async Task An_oversize_chunked_body_is_413_message_too_big()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        var content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(new string('x', Limit + 10))));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-ndjson");
        using var request = new HttpRequestMessage(HttpMethod.Post, Endpoint("send", sessionId, secret)) { Content = content };
        request.Headers.TransferEncodingChunked = true;
        using var response = await _server.Http.SendAsync(request).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);

        // The server's own body limit is set to MaxMessageBytes and stops the body first: its refusal is PushKit's 413.
        Assert.Equal("message_too_big", await ErrorCodeAsync(response));
    }

    [Fact]
    public async Task A_chunked_body_without_a_length_is_read_whole_and_delivered()
    {
        // Bodies with a Content-Length are read into one array of that size; a chunked one is gathered piece by piece.
        var (sessionId, secret) = await OpenLongPollingAsync();
        var text = new string('c', 20_000);
        var content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes($"{{\"type\":\"msg\",\"seq\":1,\"contentType\":\"text/plain\",\"data\":\"{text}\"}}")));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-ndjson");
        using var request = new HttpRequestMessage(HttpMethod.Post, Endpoint("send", sessionId, secret)) { Content = content };
        request.Headers.TransferEncodingChunked = true;
        using var response = await _server.Http.SendAsync(request).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
        await _collector.TakeAsync(1);
        Assert.Equal(text, Assert.Single(_collector.All, m => m.Session.SessionId == sessionId).Message.GetString());
    }

    [Fact]
    public async Task Send_before_any_sse_or_poll_connection_is_409_no_open_connection()
    {
        var (sessionId, secret, _) = await _server.NegotiateRawAsync();
        using var response = await PostAsync(Endpoint("send", sessionId, secret), "{\"type\":\"ping\"}");
        Assert.Equal(HttpStatusCode.Conflict, response.StatusCode);
        Assert.Equal("no_open_connection", await ErrorCodeAsync(response));
    }

    [Fact]
    public async Task A_newer_poll_supersedes_the_older_one_with_409_poll_superseded()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        var older = _server.Http.GetAsync(Endpoint("poll", sessionId, secret));
        var connection = (PushKit.Server.Connections.LongPollingServerConnection)((PushKit.Server.Sessions.PushSessionManager)_server.Sessions).Find(sessionId)!.HttpConnection!;
        await connection.PollHeld.WaitAsync(TestTimeouts.Default);
        var newer = _server.Http.GetAsync(Endpoint("poll", sessionId, secret));

        using var olderResponse = await older.WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.Conflict, olderResponse.StatusCode);
        Assert.Equal("poll_superseded", await ErrorCodeAsync(olderResponse));

        // The newer poll is the one that gets the data.
        Assert.True(await _server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString("to the newer poll")).AsTask().WaitAsync(TestTimeouts.Default));
        using var newerResponse = await newer.WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.OK, newerResponse.StatusCode);
        Assert.Contains("to the newer poll", await newerResponse.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_poll_acknowledging_more_than_was_sent_or_not_a_number_loses_nothing()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        Assert.True(await _server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString("one")).AsTask().WaitAsync(TestTimeouts.Default));
        using (var first = await _server.Http.GetAsync(Endpoint("poll", sessionId, secret)).WaitAsync(TestTimeouts.Default))
        {
            Assert.Contains("one", await first.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        // An ack beyond what was sent covers only what was sent: the message queued since still comes.
        Assert.True(await _server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString("two")).AsTask().WaitAsync(TestTimeouts.Default));
        using (var second = await _server.Http.GetAsync(new Uri(Endpoint("poll", sessionId, secret) + "&ack=999999")).WaitAsync(TestTimeouts.Default))
        {
            Assert.Equal(HttpStatusCode.OK, second.StatusCode);
            Assert.Contains("two", await second.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        // An ack that is not a number is ignored.
        Assert.True(await _server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString("three")).AsTask().WaitAsync(TestTimeouts.Default));
        using var third = await _server.Http.GetAsync(new Uri(Endpoint("poll", sessionId, secret) + "&ack=-1x")).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.OK, third.StatusCode);
        Assert.Contains("three", await third.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_idle_poll_is_answered_empty_at_the_poll_timeout()
    {
        var (sessionId, secret) = await OpenLongPollingAsync();
        using var response = await _server.Http.GetAsync(Endpoint("poll", sessionId, secret)).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(string.Empty, await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task A_disabled_transport_is_404_transport_not_enabled()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.Transports.Clear();
            o.Transports.Add("websocket");
        });
        var (sessionId, secret, negotiated) = await server.NegotiateRawAsync();
        Assert.Equal(["websocket"], negotiated.GetProperty("transports").EnumerateArray().Select(t => t.GetString()));
        foreach (var path in new[] { "sse", "poll" })
        {
            using var response = await server.Http.GetAsync(new Uri($"{server.BaseUrl}/{path}?session={sessionId}&secret={secret}")).WaitAsync(TestTimeouts.Default);
            Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
            Assert.Equal("transport_not_enabled", await ErrorCodeAsync(response));
        }
    }
}
