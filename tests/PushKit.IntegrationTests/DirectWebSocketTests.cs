using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>
/// <c>ListenOptions.UsePushKitWebSockets</c>: a connection whose first request is a PushKit WebSocket handshake is
/// upgraded below the HTTP server; everything else reaches the app unchanged.
/// </summary>
public class DirectWebSocketTests
{
    /// <summary>A server whose endpoint has the direct path, and a count of the WebSocket requests the app's middleware saw.</summary>
    private sealed class DirectServer : IAsyncDisposable
    {
        private int _httpWebSocketRequests;

        public required PushTestServer Server { get; init; }

        /// <summary>Requests for /push/ws that reached the HTTP pipeline (not taken by the direct path).</summary>
        public int HttpWebSocketRequests => Volatile.Read(ref _httpWebSocketRequests);

        public static async Task<DirectServer> StartAsync(
            Action<IPushKitServerBuilder>? push = null,
            Action<WebApplicationBuilder>? builder = null,
            Action<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>? kestrel = null,
            bool explicitEndpoint = false,
            Action<Microsoft.AspNetCore.Server.Kestrel.Core.ListenOptions>? endpoint = null,
            Action<WebApplication>? app = null,
            Action<PushKitDirectWebSocketOptions>? options = null)
        {
            DirectServer? direct = null;
            var server = await PushTestServer.StartAsync(
                push,
                configureBuilder: b =>
                {
                    b.WebHost.ConfigureKestrel(k =>
                    {
                        kestrel?.Invoke(k);
                        if (endpoint is not null)
                        {
                            k.Listen(IPAddress.Loopback, 0, endpoint);
                        }
                        else if (explicitEndpoint)
                        {
                            // Configured while Kestrel's options are being built (not at bind time, as endpoint defaults are).
                            k.Listen(IPAddress.Loopback, 0, l => l.UsePushKitWebSockets("/push", options));
                        }
                        else
                        {
                            k.ConfigureEndpointDefaults(l => l.UsePushKitWebSockets("/push", options));
                        }
                    });
                    builder?.Invoke(b);
                },
                configureApp: web =>
                {
                    web.Use((context, next) =>
                    {
                        if (context.Request.Path.StartsWithSegments("/push/ws"))
                        {
                            Interlocked.Increment(ref direct!._httpWebSocketRequests);
                        }

                        return next(context);
                    });
                    web.MapGet("/hello", () => "hello");
                    app?.Invoke(web);
                });
            direct = new DirectServer { Server = server };
            return direct;
        }

        public ValueTask DisposeAsync() => Server.DisposeAsync();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_client_connects_through_the_direct_path_and_messages_flow_both_ways(bool explicitEndpoint)
    {
        var collector = new Collector();
        await using var direct = await DirectServer.StartAsync(push => push.AddCollector(collector), explicitEndpoint: explicitEndpoint);
        var client = await direct.Server.ConnectClientAsync("websocket");
        Assert.Equal("websocket", await collector.TransportAtStart.Task.WaitAsync(TestTimeouts.Default));

        await client.SendStringAsync("up").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("up", Assert.Single(await collector.TakeAsync(1)).GetString());

        var big = new string('b', 300_000);
        Assert.True(await direct.Server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("down")).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.True(await direct.Server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString(big)).AsTask().WaitAsync(TestTimeouts.Default));
        var received = await client.ReadAsync(2);
        Assert.Equal(["down", big], received.Select(m => m.GetString()));

        // Bigger than any pipe segment, both ways.
        await client.SendStringAsync(big).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(big, Assert.Single(await collector.TakeAsync(1)).GetString());

        Assert.Equal(0, direct.HttpWebSocketRequests);
    }

    [Fact]
    public async Task The_negotiate_response_on_a_direct_endpoint_closes_its_connection_and_elsewhere_does_not()
    {
        // The direct path sees only a connection's first request: the client's handshake must come on a new one.
        await using (var direct = await DirectServer.StartAsync())
        {
            using var response = await direct.Server.Http.PostAsync(new Uri(direct.Server.BaseUrl + "/negotiate"), JsonContent.Create(new { protocolVersion = 1 }))
                .WaitAsync(TestTimeouts.Default);
            response.EnsureSuccessStatusCode();
            Assert.True(response.Headers.ConnectionClose);
        }

        await using var plain = await PushTestServer.StartAsync();
        using var plainResponse = await plain.Http.PostAsync(new Uri(plain.BaseUrl + "/negotiate"), JsonContent.Create(new { protocolVersion = 1 }))
            .WaitAsync(TestTimeouts.Default);
        plainResponse.EnsureSuccessStatusCode();
        Assert.NotEqual(true, plainResponse.Headers.ConnectionClose);
    }

    public static TheoryData<string, int, string> RefusedHandshakes => new()
    {
        { "wrong secret", 403, "invalid_session_secret" },
        { "unknown session", 404, "session_not_found" },
        { "no secret", 400, "invalid_request" },
        { "not an upgrade", 400, "websocket_required" },
        { "WebSocket version 8", 400, "websocket_required" },
    };

    [Theory]
    [MemberData(nameof(RefusedHandshakes))]
    public async Task A_handshake_the_direct_path_does_not_take_gets_the_http_endpoints_documented_answer(string kind, int status, string code)
    {
        await using var direct = await DirectServer.StartAsync();
        var (sessionId, secret, _) = await direct.Server.NegotiateRawAsync();
        var query = kind switch
        {
            "wrong secret" => $"session={sessionId}&secret=wrong",
            "unknown session" => $"session=nope&secret={secret}",
            "no secret" => $"session={sessionId}",
            _ => $"session={sessionId}&secret={Uri.EscapeDataString(secret)}",
        };
        var upgrade = kind == "not an upgrade"
            ? ""
            : $"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {(kind == "WebSocket version 8" ? 8 : 13)}\r\n";

        var (statusCode, body) = await SendFirstRequestAsync(direct.Server, $"GET /push/ws?{query} HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n");

        Assert.Equal(status, statusCode);
        Assert.Equal(code, JsonDocument.Parse(body).RootElement.GetProperty("error").GetProperty("code").GetString());
        Assert.Equal(1, direct.HttpWebSocketRequests);

        // The session is untouched: a right handshake still connects directly.
        if (kind != "unknown session")
        {
            var (okStatus, _) = await SendFirstRequestAsync(direct.Server, Handshake(sessionId, secret), headOnly: true);
            Assert.Equal(101, okStatus);
            Assert.Equal(1, direct.HttpWebSocketRequests);
        }
    }

    [Theory]
    [InlineData("sse")]
    [InlineData("longpolling")]
    public async Task Every_other_request_on_a_direct_endpoint_reaches_the_app(string transport)
    {
        var collector = new Collector();
        await using var direct = await DirectServer.StartAsync(push => push.AddCollector(collector));
        Assert.Equal("hello", await direct.Server.Http.GetStringAsync(new Uri(direct.Server.Root, "/hello")).WaitAsync(TestTimeouts.Default));

        var client = await direct.Server.ConnectClientAsync(transport);
        await client.SendStringAsync("up").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("up", Assert.Single(await collector.TakeAsync(1)).GetString());
        Assert.True(await direct.Server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("down")).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal("down", Assert.Single(await client.ReadAsync(1)).GetString());
    }

    [Fact]
    public async Task A_handshake_that_arrives_a_byte_at_a_time_is_taken()
    {
        var collector = new Collector();
        await using var direct = await DirectServer.StartAsync(push => push.AddCollector(collector));
        var (sessionId, secret, _) = await direct.Server.NegotiateRawAsync();

        using var tcp = await OpenAsync(direct.Server);
        var stream = tcp.GetStream();
        foreach (var b in Encoding.ASCII.GetBytes(Handshake(sessionId, secret)))
        {
            await stream.WriteAsync(new[] { b }).AsTask().WaitAsync(TestTimeouts.Default);
            await stream.FlushAsync().WaitAsync(TestTimeouts.Default);
        }

        var (status, _) = await ReadResponseAsync(stream, headOnly: true);
        Assert.Equal(101, status);
        Assert.Equal("websocket", await collector.TransportAtStart.Task.WaitAsync(TestTimeouts.Default));
        Assert.Equal(0, direct.HttpWebSocketRequests);
    }

    [Fact]
    public async Task A_handshake_that_stops_half_way_is_cut_after_the_request_headers_timeout()
    {
        await using var direct = await DirectServer.StartAsync(kestrel: k => k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(1));
        using var tcp = await OpenAsync(direct.Server);
        var stream = tcp.GetStream();
        await stream.WriteAsync("GET /push/ws?session=a&secret=b HTTP/1.1\r\nHost: x\r\n"u8.ToArray()).AsTask().WaitAsync(TestTimeouts.Default);

        var watch = Stopwatch.StartNew();
        var buffer = new byte[256];
        int read;
        try
        {
            read = await stream.ReadAsync(buffer).AsTask().WaitAsync(TestTimeouts.Default);
        }
        catch (IOException)
        {
            read = 0;
        }

        Assert.Equal(0, read);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"cut after {watch.Elapsed}");
    }

    [Fact]
    public async Task A_connection_silent_past_the_request_headers_timeout_is_then_served_by_the_http_server()
    {
        // The direct path waits for a first request at most that long, then hands the connection over untouched.
        await using var direct = await DirectServer.StartAsync(kestrel: k => k.Limits.RequestHeadersTimeout = TimeSpan.FromMilliseconds(300));
        using var tcp = await OpenAsync(direct.Server);
        var stream = tcp.GetStream();
        // Nothing to await: the hand-over has no outward sign, so wait past it.
        await Task.Delay(TimeSpan.FromMilliseconds(600));

        await stream.WriteAsync("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray()).AsTask().WaitAsync(TestTimeouts.Default);
        var (status, body) = await ReadResponseAsync(stream, headOnly: false);
        Assert.Equal(200, status);
        Assert.Equal("hello", body);
    }

    [Fact]
    public async Task A_handshake_as_a_connections_second_request_goes_through_the_http_server_and_still_connects()
    {
        var collector = new Collector();
        await using var direct = await DirectServer.StartAsync(push => push.AddCollector(collector));
        var (sessionId, secret, _) = await direct.Server.NegotiateRawAsync();
        using var tcp = await OpenAsync(direct.Server);
        var stream = tcp.GetStream();
        await stream.WriteAsync("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray()).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(200, (await ReadResponseAsync(stream, headOnly: false)).Status);

        await stream.WriteAsync(Encoding.ASCII.GetBytes(Handshake(sessionId, secret))).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(101, (await ReadResponseAsync(stream, headOnly: true)).Status);
        Assert.Equal("websocket", await collector.TransportAtStart.Task.WaitAsync(TestTimeouts.Default));
        Assert.Equal(1, direct.HttpWebSocketRequests);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Over_https_the_direct_path_takes_handshakes_after_UseHttps_and_stays_out_of_the_way_before_it(bool afterHttps)
    {
        using var certificate = SelfSignedCertificate();
        await using var direct = await DirectServer.StartAsync(builder: b => b.Services.AddFakeLogging(), endpoint: l =>
        {
            if (afterHttps)
            {
                l.UseHttps(certificate);
                l.UsePushKitWebSockets("/push");
            }
            else
            {
                // Before TLS, the path sees a TLS handshake, which is not an HTTP request: it passes it on at once.
                l.UsePushKitWebSockets("/push");
                l.UseHttps(certificate);
            }
        });
        Assert.Equal("https", direct.Server.Root.Scheme);

        using var http = new HttpClient(new HttpClientHandler { ServerCertificateCustomValidationCallback = HttpClientHandler.DangerousAcceptAnyServerCertificateValidator });
        using var negotiate = await http.PostAsync(new Uri(direct.Server.BaseUrl + "/negotiate"), JsonContent.Create(new { protocolVersion = 1 })).WaitAsync(TestTimeouts.Default);
        negotiate.EnsureSuccessStatusCode();
        var json = await negotiate.Content.ReadFromJsonAsync<JsonElement>().WaitAsync(TestTimeouts.Default);
        Assert.Equal(afterHttps, negotiate.Headers.ConnectionClose == true);

        using var tcp = await OpenAsync(direct.Server);
        await using var tls = new System.Net.Security.SslStream(tcp.GetStream(), leaveInnerStreamOpen: false, (_, _, _, _) => true);
        await tls.AuthenticateAsClientAsync("127.0.0.1").WaitAsync(TestTimeouts.Default);
        await tls.WriteAsync(Encoding.ASCII.GetBytes(Handshake(json.GetProperty("sessionId").GetString()!, json.GetProperty("resumeSecret").GetString()!)))
            .AsTask().WaitAsync(TestTimeouts.Default);

        Assert.Equal(101, (await ReadResponseAsync(tls, headOnly: true)).Status);
        Assert.Equal(afterHttps ? 0 : 1, direct.HttpWebSocketRequests);

        // In the wrong order the path can never take anything: the log says so, once.
        var warnings = direct.Server.Services.GetFakeLogCollector().GetSnapshot().Where(r => r.Id.Id == 50).ToList();
        if (afterHttps)
        {
            Assert.Empty(warnings);
        }
        else
        {
            var warning = Assert.Single(warnings);
            Assert.Equal(LogLevel.Warning, warning.Level);
            Assert.Equal("PushKit.Server.DirectWebSockets", warning.Category);
            Assert.Contains("after UseHttps()", warning.Message, StringComparison.Ordinal);
        }
    }

    private static System.Security.Cryptography.X509Certificates.X509Certificate2 SelfSignedCertificate()
    {
        using var key = System.Security.Cryptography.RSA.Create(2048);
        var request = new System.Security.Cryptography.X509Certificates.CertificateRequest(
            "CN=127.0.0.1", key, System.Security.Cryptography.HashAlgorithmName.SHA256, System.Security.Cryptography.RSASignaturePadding.Pkcs1);
        var names = new System.Security.Cryptography.X509Certificates.SubjectAlternativeNameBuilder();
        names.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_users_session_goes_through_the_http_endpoint_unless_the_listener_authenticates_user_sessions_by_secret(bool bySecret)
    {
        await using var direct = await DirectServer.StartAsync(
            builder: b =>
            {
                b.Services.AddAuthentication(HostingSurfaceTests.HeaderAuth.SchemeName)
                    .AddScheme<Microsoft.AspNetCore.Authentication.AuthenticationSchemeOptions, HostingSurfaceTests.HeaderAuth>(HostingSurfaceTests.HeaderAuth.SchemeName, null);
                b.Services.AddAuthorization();
            },
            app: web =>
            {
                web.UseAuthentication();
                web.UseAuthorization();
            },
            options: o => o.AuthenticateUserSessionsBySecret = bySecret);
        using var negotiate = new HttpRequestMessage(HttpMethod.Post, new Uri(direct.Server.BaseUrl + "/negotiate")) { Content = JsonContent.Create(new { protocolVersion = 1 }) };
        negotiate.Headers.Add(HostingSurfaceTests.HeaderAuth.Header, "alice");
        using var negotiated = await direct.Server.Http.SendAsync(negotiate).WaitAsync(TestTimeouts.Default);
        var json = await negotiated.Content.ReadFromJsonAsync<JsonElement>().WaitAsync(TestTimeouts.Default);
        var (sessionId, secret) = (json.GetProperty("sessionId").GetString()!, json.GetProperty("resumeSecret").GetString()!);

        // With her credentials: connected either way, through the HTTP endpoint unless the listener takes the secret alone.
        var (status, _) = await SendFirstRequestAsync(direct.Server, Handshake(sessionId, secret, $"{HostingSurfaceTests.HeaderAuth.Header}: alice\r\n"), headOnly: true);
        Assert.Equal(101, status);
        Assert.Equal(bySecret ? 0 : 1, direct.HttpWebSocketRequests);

        // Her session's secret without her credentials: refused, as the caller is not the session's user, unless the
        // listener was told to take the secret alone.
        (status, _) = await SendFirstRequestAsync(direct.Server, Handshake(sessionId, secret), headOnly: true);
        Assert.Equal(bySecret ? 101 : 403, status);
    }

    [Fact]
    public async Task A_connection_that_never_sends_a_request_does_not_hold_up_the_hosts_stop()
    {
        var direct = await DirectServer.StartAsync();
        using var tcp = await OpenAsync(direct.Server);
        var watch = Stopwatch.StartNew();
        await direct.DisposeAsync();

        // The HTTP server closes its idle connections when it stops; the direct path must not wait for the head
        // timeout (30 s) or the host's shutdown timeout.
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"stop took {watch.Elapsed}");
        Assert.Equal(0, await tcp.GetStream().ReadAsync(new byte[16]).AsTask().WaitAsync(TestTimeouts.Default));
    }

    [Fact]
    public async Task The_head_timeout_counts_from_the_first_byte()
    {
        // Idle for most of the timeout after connecting, then a handshake in two parts: it has the whole timeout from
        // its first byte, as a request has on the HTTP server.
        var collector = new Collector();
        await using var direct = await DirectServer.StartAsync(push => push.AddCollector(collector), kestrel: k => k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(2));
        var (sessionId, secret, _) = await direct.Server.NegotiateRawAsync();
        using var tcp = await OpenAsync(direct.Server);
        var stream = tcp.GetStream();
        var handshake = Encoding.ASCII.GetBytes(Handshake(sessionId, secret));

        // No event marks "most of the timeout has passed": the test waits it out.
        await Task.Delay(TimeSpan.FromSeconds(1.5));
        await stream.WriteAsync(handshake.AsMemory(0, 20)).AsTask().WaitAsync(TestTimeouts.Default);
        await Task.Delay(TimeSpan.FromSeconds(1));
        await stream.WriteAsync(handshake.AsMemory(20)).AsTask().WaitAsync(TestTimeouts.Default);

        Assert.Equal(101, (await ReadResponseAsync(stream, headOnly: true)).Status);
        Assert.Equal("websocket", await collector.TransportAtStart.Task.WaitAsync(TestTimeouts.Default));
    }

    [Fact]
    public async Task A_session_resumes_through_the_direct_path_after_its_connection_is_cut_and_loses_nothing()
    {
        await using var direct = await DirectServer.StartAsync();
        await using var proxy = new ChaosProxy(direct.Server.Root);
        var client = await direct.Server.ConnectClientAsync("websocket", o =>
        {
            o.Url = proxy.PushUrl;
            o.ReconnectDelay = TimeSpan.FromMilliseconds(20);
        });
        var sessionId = client.SessionId!;

        var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
        proxy.CutAll();
        await reconnecting.WaitAsync(TestTimeouts.Default);
        for (var i = 0; i < 5; i++)
        {
            await direct.Server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString($"m{i}")).AsTask().WaitAsync(TestTimeouts.Default);
        }

        var received = await client.ReadAsync(5);
        Assert.Equal(["m0", "m1", "m2", "m3", "m4"], received.Select(m => m.GetString()));
        Assert.Equal(sessionId, client.SessionId);
        Assert.Equal(0, direct.HttpWebSocketRequests);
    }

    [Fact]
    public async Task Stopping_the_host_tells_a_direct_connection_to_go_away_and_stops_promptly()
    {
        var direct = await DirectServer.StartAsync(builder: b => b.Services.AddFakeLogging());
        var logs = direct.Server.Services.GetFakeLogCollector();
        var client = HostingSurfaceTests.OutlivingClient(direct.Server, "websocket");
        await using (client)
        {
            await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
            var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
            var watch = Stopwatch.StartNew();
            await direct.DisposeAsync();
            watch.Stop();
            Assert.Equal(PushCloseCode.GoingAway, (await reconnecting.WaitAsync(TestTimeouts.Default)).CloseCode);
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(7), $"stop took {watch.Elapsed}");
            Assert.DoesNotContain(logs.GetSnapshot(), r => r.Level >= LogLevel.Error);
        }

        Assert.Equal(0, direct.HttpWebSocketRequests);
    }

    [Fact]
    public void The_pattern_must_be_a_plain_path_and_the_pushkit_services_must_be_there()
    {
        var options = new Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions { ApplicationServices = new ServiceCollection().BuildServiceProvider() };
        options.Listen(IPAddress.Loopback, 0, l =>
        {
            var missing = Assert.Throws<InvalidOperationException>(() => l.UsePushKitWebSockets("/push"));
            Assert.Contains("AddPushKit", missing.Message, StringComparison.Ordinal);
        });

        var services = new ServiceCollection().AddLogging();
        services.AddPushKit();
        options = new Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions { ApplicationServices = services.BuildServiceProvider() };
        options.Listen(IPAddress.Loopback, 0, l =>
        {
            var error = Assert.Throws<ArgumentException>(() => l.UsePushKitWebSockets("/push/{id}"));
            Assert.Equal("pattern", error.ParamName);
            Assert.Throws<ArgumentException>(() => l.UsePushKitWebSockets(" "));
            Assert.Same(l, l.UsePushKitWebSockets("push/"));
        });
    }

    private static string Handshake(string sessionId, string secret, string extraHeaders = "") =>
        $"GET /push/ws?session={Uri.EscapeDataString(sessionId)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        $"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nPushKit-Secret: {secret}\r\n{extraHeaders}\r\n";

    /// <summary>A new TCP connection to <paramref name="server"/> (each write goes out at once).</summary>
    private static async Task<TcpClient> OpenAsync(PushTestServer server)
    {
        var tcp = new TcpClient { NoDelay = true };
        await tcp.ConnectAsync(server.Root.Host, server.Root.Port).WaitAsync(TestTimeouts.Default);
        return tcp;
    }

    /// <summary>Sends <paramref name="request"/> as the first request of a new connection and reads the response.</summary>
    private static async Task<(int Status, string Body)> SendFirstRequestAsync(PushTestServer server, string request, bool headOnly = false)
    {
        using var tcp = await OpenAsync(server);
        var stream = tcp.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(request)).AsTask().WaitAsync(TestTimeouts.Default);
        return await ReadResponseAsync(stream, headOnly);
    }

    private static async Task<(int Status, string Body)> ReadResponseAsync(Stream stream, bool headOnly)
    {
        var received = new MemoryStream();
        var buffer = new byte[4096];
        while (true)
        {
            var text = Encoding.ASCII.GetString(received.ToArray());
            var headEnd = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (headEnd >= 0)
            {
                var status = int.Parse(text.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
                if (headOnly)
                {
                    return (status, "");
                }

                var lengthLine = text[..headEnd].Split("\r\n").FirstOrDefault(l => l.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase));
                var length = lengthLine is null ? -1 : int.Parse(lengthLine["Content-Length:".Length..].Trim(), System.Globalization.CultureInfo.InvariantCulture);
                var body = text[(headEnd + 4)..];
                if (length >= 0 && body.Length >= length)
                {
                    return (status, body[..length]);
                }

                if (length < 0 && text.Contains("transfer-encoding: chunked", StringComparison.OrdinalIgnoreCase))
                {
                    // One chunk: its size line, the JSON, then the terminator.
                    var end = body.IndexOf("\r\n0\r\n\r\n", StringComparison.Ordinal);
                    if (end >= 0)
                    {
                        return (status, body[(body.IndexOf("\r\n", StringComparison.Ordinal) + 2)..end]);
                    }
                }
            }

            var read = await stream.ReadAsync(buffer).AsTask().WaitAsync(TestTimeouts.Default);
            if (read == 0)
            {
                throw new InvalidOperationException($"The server closed the connection after: {text}");
            }

            received.Write(buffer, 0, read);
        }
    }
}
