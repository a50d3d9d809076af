using System.Net;
using System.Net.Http.Json;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// Bad input, one test per case: each gets its documented error or close code, only the offender is affected,
/// and a bystander session keeps working.
/// </summary>
public sealed class BadInputTests : IAsyncLifetime
{
    private static readonly List<Exception> s_unobserved = [];
    private readonly Collector _collector = new();
    private PushTestServer _server = null!;
    private IPushChannel _bystander = null!;

    static BadInputTests() => TaskScheduler.UnobservedTaskException += (_, e) =>
    {
        lock (s_unobserved)
        {
            s_unobserved.Add(e.Exception);
        }
    };

    public async Task InitializeAsync()
    {
        // Only what surfaces during this test counts: an exception left unobserved by an earlier test (of this class
        // or another) fails at most the one test during which it surfaced, not every test after it.
        TakeUnobserved();
        _server = await PushTestServer.StartAsync(push => push.AddCollector(_collector), o => o.MaxMessageBytes = 64 * 1024);
        _bystander = await _server.ConnectClientAsync();
    }

    public async Task DisposeAsync()
    {
        // The bystander still works end to end after whatever the test did.
        await _bystander.SendStringAsync("bystander").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Contains(_collector.All, m => m.Message.GetString() == "bystander" && m.Session.SessionId == _bystander.SessionId);
        Assert.True(await _server.Sender.SendToSessionAsync(_bystander.SessionId!, PushMessage.FromString("still here")).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal("still here", (await _bystander.ReadAsync(1)).Single().GetString());
        await _server.DisposeAsync();

        var unobserved = TakeUnobserved();
        Assert.True(unobserved.Count == 0, $"Unobserved task exceptions: {string.Join(Environment.NewLine, unobserved)}");
    }

    private static List<Exception> TakeUnobserved()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        lock (s_unobserved)
        {
            var taken = s_unobserved.ToList();
            s_unobserved.Clear();
            return taken;
        }
    }

    private async Task<(HttpStatusCode Status, JsonElement Error)> PostNegotiateAsync(HttpContent? content)
    {
        using var response = await _server.Http.PostAsync(new Uri(_server.BaseUrl + "/negotiate"), content).WaitAsync(TestTimeouts.Default);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        return (response.StatusCode, body.GetProperty("error"));
    }

    [Fact]
    public async Task Negotiate_with_malformed_json_is_400_invalid_request()
    {
        var (status, error) = await PostNegotiateAsync(new StringContent("{not json", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("invalid_request", error.GetProperty("code").GetString());
        Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()));
    }

    [Fact]
    public async Task Negotiate_without_a_body_is_400_invalid_request()
    {
        var (status, error) = await PostNegotiateAsync(null);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("invalid_request", error.GetProperty("code").GetString());
    }

    [Fact]
    public async Task Negotiate_with_a_wrong_protocol_version_is_400_and_lists_the_supported_ones()
    {
        var (status, error) = await PostNegotiateAsync(JsonContent.Create(new { protocolVersion = 99 }));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("unsupported_protocol_version", error.GetProperty("code").GetString());
        Assert.Equal(1, error.GetProperty("supportedVersions")[0].GetInt32());
    }

    [Fact]
    public async Task Negotiate_field_names_are_case_sensitive()
    {
        // §3.1 / §2: 'ProtocolVersion' is not 'protocolVersion', so the request names no version.
        var (status, error) = await PostNegotiateAsync(new StringContent("{\"ProtocolVersion\":1}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("unsupported_protocol_version", error.GetProperty("code").GetString());
    }

    [Fact]
    public async Task Negotiate_with_a_version_as_a_string_is_400()
    {
        var (status, error) = await PostNegotiateAsync(new StringContent("{\"protocolVersion\":\"1\"}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("invalid_request", error.GetProperty("code").GetString());
    }

    [Fact]
    public async Task Negotiate_with_a_tiny_client_limit_is_400()
    {
        var (status, error) = await PostNegotiateAsync(JsonContent.Create(new { protocolVersion = 1, maxMessageBytes = 10 }));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("maxMessageBytes", error.GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_server_never_sends_a_client_more_than_the_client_accepts()
    {
        var client = await _server.ConnectClientAsync(o => o.MaxMessageBytes = 4096);
        var error = await Assert.ThrowsAsync<PushMessageTooLargeException>(() => _server.Sender.SendToSessionAsync(client.SessionId!, new PushMessage(new byte[8192])).AsTask());
        Assert.Equal(4096, error.LimitBytes);
        Assert.True(await _server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("small")).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal("small", (await client.ReadAsync(1)).Single().GetString());
    }

    [Fact]
    public async Task Negotiate_with_an_oversize_body_is_413()
    {
        var (status, error) = await PostNegotiateAsync(new StringContent($"{{\"protocolVersion\":1,\"pad\":\"{new string('x', 10_000)}\"}}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, status);
        Assert.Equal("message_too_big", error.GetProperty("code").GetString());
    }

    [Fact]
    public async Task Negotiate_with_an_oversize_chunked_body_is_413()
    {
        // JsonContent announces no length: the body is chunked, and the server's own body limit (set to 4096 for
        // negotiate) is what stops it.
        var (status, error) = await PostNegotiateAsync(JsonContent.Create(new { protocolVersion = 1, pad = new string('x', 10_000) }));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, status);
        Assert.Equal("message_too_big", error.GetProperty("code").GetString());
    }

    [Fact]
    public async Task Negotiate_with_the_wrong_method_is_405()
    {
        using var response = await _server.Http.GetAsync(new Uri(_server.BaseUrl + "/negotiate")).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, response.StatusCode);
    }

    [Fact]
    public async Task WebSocket_endpoint_without_an_upgrade_is_400_websocket_required()
    {
        var (sessionId, secret, _) = await _server.NegotiateRawAsync();
        using var response = await _server.Http.GetAsync(new Uri($"{_server.BaseUrl}/ws?session={sessionId}&secret={secret}")).WaitAsync(TestTimeouts.Default);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("websocket_required", (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("error").GetProperty("code").GetString());
    }

    private async Task<int> UpgradeStatusAsync(Uri url)
    {
        using var socket = new ClientWebSocket();
        socket.Options.CollectHttpResponseDetails = true;
        await Assert.ThrowsAsync<WebSocketException>(() => socket.ConnectAsync(url, CancellationToken.None).WaitAsync(TestTimeouts.Default));
        return (int)socket.HttpStatusCode;
    }

    [Fact]
    public async Task WebSocket_without_session_query_is_400()
    {
        Assert.Equal(400, await UpgradeStatusAsync(new Uri($"ws://{_server.Root.Authority}/push/ws")));
    }

    [Fact]
    public async Task WebSocket_for_an_unknown_session_is_404_session_not_found()
    {
        Assert.Equal(404, await UpgradeStatusAsync(_server.WebSocketUrl("no-such-session", "whatever")));
    }

    [Fact]
    public async Task WebSocket_with_a_forged_secret_is_403_and_the_real_session_is_untouched()
    {
        var (sessionId, secret, _) = await _server.NegotiateRawAsync();
        Assert.Equal(403, await UpgradeStatusAsync(_server.WebSocketUrl(sessionId, secret[..^2] + "AA")));
        await using var real = await RawSocket.ConnectAsync(_server.WebSocketUrl(sessionId, secret), sessionId, secret);
        await real.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"ok\"}");
        Assert.Contains("\"type\":\"ack\",\"seq\":1", await real.ReceiveContainingAsync("ack"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_client_reports_an_unknown_session_clearly()
    {
        var context = new PushTransportContext
        {
            BaseUrl = _server.BaseUrl,
            SessionId = "no-such-session",
            ResumeSecret = "x",
            Options = new PushClientOptions { Url = _server.BaseUrl },
            LoggerFactory = Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance,
            HttpClient = _server.Http,
        };
        var error = await Assert.ThrowsAsync<PushConnectException>(() => PushTransports.WebSocket.ConnectAsync(context).AsTask());
        Assert.Equal(404, error.StatusCode);
        Assert.Equal("session_not_found", error.ErrorCode);
    }

    [Fact]
    public async Task A_malformed_frame_closes_only_that_connection_with_4400()
    {
        await using var raw = await _server.ConnectRawAsync();
        await raw.SendAsync("{\"type\":\"msg\",\"seq\":");
        var (status, closeFrame) = await raw.ReceiveCloseAsync();
        Assert.Equal(4400, status);
        Assert.Contains("\"code\":4400", closeFrame, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Invalid_utf8_in_a_text_message_closes_the_connection_with_1007()
    {
        // The WebSocket layer itself validates text messages (RFC 6455 section 8.1) and closes with 1007.
        await using var raw = await _server.ConnectRawAsync();
        await raw.SendAsync([0xFF, 0xFE, 0x00, 0x7B]);
        Assert.Equal(1007, (await raw.ReceiveCloseAsync()).Status);
    }

    [Fact]
    public async Task A_frame_that_is_not_an_object_closes_the_connection_with_4400()
    {
        await using var raw = await _server.ConnectRawAsync();
        await raw.SendAsync("[\"msg\", 1]");
        Assert.Equal(4400, (await raw.ReceiveCloseAsync()).Status);
    }

    [Fact]
    public async Task An_unknown_frame_type_gets_an_error_frame_and_the_connection_goes_on()
    {
        await using var raw = await _server.ConnectRawAsync();
        await raw.SendAsync("{\"type\":\"teleport\"}");
        var error = await raw.ReceiveContainingAsync("\"type\":\"error\"");
        Assert.Contains("unknown_frame_type", error, StringComparison.Ordinal);

        await raw.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"after unknown\"}");
        await raw.ReceiveContainingAsync("\"type\":\"ack\",\"seq\":1");
        Assert.Contains(_collector.All, m => m.Message.GetString() == "after unknown");
    }

    [Fact]
    public async Task An_oversize_message_closes_that_connection_with_4413()
    {
        await using var raw = await _server.ConnectRawAsync();
        await raw.SendAsync($"{{\"type\":\"msg\",\"seq\":1,\"data\":\"{new string('x', 70 * 1024)}\"}}");
        Assert.Equal(4413, (await raw.ReceiveCloseAsync()).Status);
        Assert.DoesNotContain(_collector.All, m => m.Session.SessionId == raw.SessionId);
    }

    [Fact]
    public async Task A_sequence_gap_closes_the_connection_with_4400()
    {
        await using var raw = await _server.ConnectRawAsync();
        await raw.SendAsync("{\"type\":\"msg\",\"seq\":5,\"data\":\"skipped ahead\"}");
        Assert.Equal(4400, (await raw.ReceiveCloseAsync()).Status);
    }

    [Fact]
    public async Task An_ack_for_messages_never_sent_closes_the_connection_with_4400()
    {
        await using var raw = await _server.ConnectRawAsync();
        await raw.SendAsync("{\"type\":\"ack\",\"seq\":3}");
        Assert.Equal(4400, (await raw.ReceiveCloseAsync()).Status);
    }

    [Fact]
    public async Task A_duplicate_message_is_acknowledged_but_delivered_once()
    {
        await using var raw = await _server.ConnectRawAsync();
        await raw.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"once\"}\n{\"type\":\"msg\",\"seq\":1,\"data\":\"once\"}");
        await raw.ReceiveContainingAsync("\"type\":\"ack\",\"seq\":1");
        await raw.SendAsync("{\"type\":\"msg\",\"seq\":2,\"data\":\"twice?\"}");
        await raw.ReceiveContainingAsync("\"type\":\"ack\",\"seq\":2");
        Assert.Single(_collector.All, m => m.Message.GetString() == "once");
    }

    [Fact]
    public async Task A_second_connection_for_a_session_supersedes_the_first_with_4409()
    {
        await using var first = await _server.ConnectRawAsync();
        await first.SendAsync("{\"type\":\"msg\",\"seq\":1,\"data\":\"from first\"}");
        await first.ReceiveContainingAsync("\"type\":\"ack\",\"seq\":1");

        await using var second = await RawSocket.ConnectAsync(_server.WebSocketUrl(first.SessionId, first.Secret), first.SessionId, first.Secret);
        Assert.Equal(4409, (await first.ReceiveCloseAsync()).Status);

        // The session carries on over the new connection: its sequence continues.
        await second.SendAsync("{\"type\":\"msg\",\"seq\":2,\"data\":\"from second\"}");
        await second.ReceiveContainingAsync("\"type\":\"ack\",\"seq\":2");
        Assert.Equal(["from first", "from second"], _collector.All.Where(m => m.Session.SessionId == first.SessionId).Select(m => m.Message.GetString()));
    }

    [Fact]
    public async Task A_client_send_over_the_limit_throws_and_nothing_is_sent()
    {
        var client = await _server.ConnectClientAsync();
        var error = await Assert.ThrowsAsync<PushMessageTooLargeException>(() => client.SendAsync(new PushMessage(new byte[100 * 1024])).AsTask());
        Assert.Equal(64 * 1024, error.LimitBytes);
        await client.SendStringAsync("fits").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(["fits"], _collector.All.Where(m => m.Session.SessionId == client.SessionId).Select(m => m.Message.GetString()));
    }

    [Fact]
    public async Task A_handler_exception_is_contained_and_the_session_goes_on()
    {
        var client = await _server.ConnectClientAsync();
        await client.SendStringAsync("boom", topic: "throw").AsTask().WaitAsync(TestTimeouts.Default);
        await client.SendStringAsync("after boom").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(["after boom"], _collector.All.Where(m => m.Session.SessionId == client.SessionId).Select(m => m.Message.GetString()));
    }

    [Fact]
    public async Task A_client_that_never_acknowledges_is_disconnected_as_a_slow_consumer_with_4429()
    {
        await using var server = await PushTestServer.StartAsync(options: o => o.MaxBufferedMessagesPerSession = 20);
        await using var slow = await server.ConnectRawAsync();
        var accepted = 0;
        for (var i = 0; i < 100; i++)
        {
            if (await server.Sender.SendToSessionAsync(slow.SessionId, PushMessage.FromString($"m{i}")))
            {
                accepted++;
            }
        }

        Assert.Equal(20, accepted);
        var (status, closeFrame) = await slow.ReceiveCloseAsync();
        Assert.Equal(4429, status);
        Assert.Contains("\"code\":4429", closeFrame, StringComparison.Ordinal);
        Assert.Contains("\"retryAfterMs\":5000", closeFrame, StringComparison.Ordinal);
        Assert.Null(server.Sessions.FindSession(slow.SessionId));
    }

    [Fact]
    public async Task Under_drop_oldest_a_client_that_was_away_is_told_what_it_missed()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.MaxBufferedMessagesPerSession = 3;
            o.BufferFullPolicy = PushBufferFullPolicy.DropOldest;
        });
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        for (var i = 1; i <= 10; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString($"m{i}")));
        }

        await using var raw = await RawSocket.ConnectAsync(server.WebSocketUrl(sessionId, secret), sessionId, secret);
        var batch = await raw.ReceiveContainingAsync("m10");
        Assert.StartsWith("{\"type\":\"skip\",\"seq\":7}", batch, StringComparison.Ordinal);
        Assert.DoesNotContain("\"m7\"", batch, StringComparison.Ordinal);
        Assert.Contains("\"seq\":8,", batch, StringComparison.Ordinal);
    }
}
