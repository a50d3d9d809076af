using System.Net;
using System.Net.Http.Json;
using System.Security.Claims;
using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Polly;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>How PushKit fits a host app: DI on both ends, options validation, authorization, users.</summary>
public class HostingTests
{
    [Fact]
    public async Task Negotiate_answers_the_documented_json()
    {
        await using var server = await PushTestServer.StartAsync(options: o => o.ResumeWindow = TimeSpan.FromMinutes(3));
        using var response = await server.Http.PostAsync(new Uri(server.BaseUrl + "/negotiate"), JsonContent.Create(new { protocolVersion = 1 }));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("no-store", response.Headers.CacheControl?.ToString());
        var json = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(1, json.GetProperty("protocolVersion").GetInt32());
        Assert.Equal(["websocket", "sse", "longpolling"], json.GetProperty("transports").EnumerateArray().Select(t => t.GetString()));
        Assert.Equal(25_000, json.GetProperty("longPolling").GetProperty("pollTimeoutMs").GetInt64());
        Assert.Equal(1024 * 1024, json.GetProperty("limits").GetProperty("maxMessageBytes").GetInt32());
        Assert.Equal(15_000, json.GetProperty("heartbeat").GetProperty("intervalMs").GetInt64());
        Assert.Equal(30_000, json.GetProperty("heartbeat").GetProperty("timeoutMs").GetInt64());
        Assert.Equal(180_000, json.GetProperty("resumeWindowMs").GetInt64());
        var secret = json.GetProperty("resumeSecret").GetString()!;
        Assert.True(Convert.FromBase64String(secret.Replace('-', '+').Replace('_', '/') + "=").Length >= 16, "≥ 128 random bits");
        Assert.NotNull(server.Sessions.FindSession(json.GetProperty("sessionId").GetString()!));
    }

    [Fact]
    public async Task Invalid_options_stop_the_host_at_start_with_every_error_listed()
    {
        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => PushTestServer.StartAsync(options: o =>
        {
            o.MaxMessageBytes = 0;
            o.AckTimeout = TimeSpan.Zero;
        }));
        Assert.Contains("MaxMessageBytes", error.Message, StringComparison.Ordinal);
        Assert.Contains("AckTimeout", error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(".;", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Invalid_client_options_stop_the_host_at_start_with_every_error_listed()
    {
        var host = Host.CreateApplicationBuilder();
        host.Logging.ClearProviders();
        host.Services.AddPushKitClient(o => o.AckTimeout = TimeSpan.Zero);
        using var app = host.Build();
        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => app.StartAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("Url", error.Message, StringComparison.Ordinal);
        Assert.Contains("AckTimeout", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keyed_clients_talk_to_their_own_servers_and_are_validated_at_start()
    {
        var first = new Collector();
        var second = new Collector();
        await using var a = await PushTestServer.StartAsync(push => push.AddCollector(first));
        await using var b = await PushTestServer.StartAsync(push => push.AddCollector(second));

        var host = Host.CreateApplicationBuilder();
        host.Logging.ClearProviders();
        host.Services.AddKeyedPushKitClient("a", o => o.Url = a.BaseUrl);
        host.Services.AddKeyedPushKitClient("b", o =>
        {
            o.Url = b.BaseUrl;
            o.Headers["X-Tenant"] = "b";
        });
        using var app = host.Build();
        await app.StartAsync().WaitAsync(TestTimeouts.Default);
        var toA = app.Services.GetRequiredKeyedService<IPushChannel>("a");
        var toB = app.Services.GetRequiredKeyedService<IPushChannel>("b");
        Assert.NotSame(toA, toB);
        Assert.Same(toA, app.Services.GetRequiredKeyedService<IPushChannel>("a"));

        await toA.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await toB.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await toA.SendStringAsync("to a").AsTask().WaitAsync(TestTimeouts.Default);
        await toB.SendStringAsync("to b").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("to a", Assert.Single(await first.TakeAsync(1)).GetString());
        Assert.Equal("to b", Assert.Single(await second.TakeAsync(1)).GetString());
        await app.StopAsync().WaitAsync(TestTimeouts.Default);

        var invalid = Host.CreateApplicationBuilder();
        invalid.Logging.ClearProviders();
        invalid.Services.AddKeyedPushKitClient("c", o => o.AckTimeout = TimeSpan.Zero);
        using var invalidApp = invalid.Build();
        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => invalidApp.StartAsync().WaitAsync(TestTimeouts.Default));
        Assert.Contains("Url", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task MapPushKit_without_AddPushKit_explains_what_is_missing()
    {
        var builder = WebApplication.CreateSlimBuilder();
        await using var app = builder.Build();
        var error = Assert.Throws<InvalidOperationException>(() => app.MapPushKit("/push"));
        Assert.Contains("AddPushKit", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_client_from_dependency_injection_connects_and_exchanges_messages()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));

        var host = Host.CreateApplicationBuilder();
        host.Logging.ClearProviders();
        host.Services.AddPushKitClient(o =>
        {
            o.Url = server.BaseUrl;
            o.AckTimeout = TimeSpan.FromSeconds(20);
        });
        using var app = host.Build();
        var channel = app.Services.GetRequiredService<IPushChannel>();
        Assert.Same(channel, app.Services.GetRequiredService<IPushChannel>());

        await channel.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await channel.SendJsonAsync(new Note("from DI")).AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(new Note("from DI"), (await collector.TakeAsync(1)).Single().GetJson<Note>());

        await server.Sender.SendToSessionAsync(channel.SessionId!, PushMessage.FromJson(new Note("to DI")));
        Assert.Equal(new Note("to DI"), (await channel.ReadAsync(1)).Single().GetJson<Note>());
        await channel.DisposeAsync();
    }

    [Theory]
    [InlineData("/app/page", "text/html")]
    [InlineData("/api/other", "application/json")]
    public async Task A_connect_to_an_address_that_a_catch_all_route_answers_fails_clearly_and_says_what_to_check(string path, string contentType)
    {
        // A single-page app's fallback answers every path with its page (200 text/html), an API with some JSON.
        await using var server = await PushTestServer.StartAsync(configureApp: app => app.MapFallback(() =>
            contentType == "text/html" ? Results.Content("<html><body>app</body></html>", contentType) : Results.Json(new { items = Array.Empty<int>() })));
        var client = new PushChannelBuilder().WithUrl(new Uri(server.Root, path)).Build();
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Equal(200, error.StatusCode);
        Assert.Contains(new Uri(server.Root, path + "/negotiate").ToString(), error.Message, StringComparison.Ordinal);
        Assert.Contains(contentType, error.Message, StringComparison.Ordinal);
        Assert.Contains("not a PushKit negotiate response", error.Message, StringComparison.Ordinal);
        Assert.Contains("MapPushKit", error.Message, StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Disconnected, client.State);
        await client.DisposeAsync();
    }

    [Fact]
    public async Task A_connect_to_an_address_with_no_PushKit_endpoint_fails_clearly_and_says_what_to_check()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = new PushChannelBuilder().WithUrl(new Uri(server.Root, "/not-push")).Build();
        var states = new List<PushChannelState>();
        client.StateChanged += (_, e) => states.Add(e.CurrentState);
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.Equal(404, error.StatusCode);
        Assert.Null(error.ErrorCode);
        Assert.Contains("no PushKit endpoint answered at " + new Uri(server.Root, "/not-push/negotiate"), error.Message, StringComparison.Ordinal);
        Assert.Contains("MapPushKit", error.Message, StringComparison.Ordinal);
        Assert.Equal([PushChannelState.Connecting, PushChannelState.Disconnected], states);

        // A failed connect leaves the channel usable: the app may simply try again.
        await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        await client.DisposeAsync();
    }

    [Fact]
    public async Task A_server_side_send_that_is_never_acknowledged_times_out_deterministically()
    {
        var time = new FakeTimeProvider();
        await using var server = await PushTestServer.StartAsync(
            options: o => o.AckTimeout = TimeSpan.FromSeconds(10),
            configureBuilder: b => b.Services.AddSingleton<TimeProvider>(time));
        await using var raw = await server.ConnectRawAsync();
        var session = server.Sessions.FindSession(raw.SessionId)!;
        await session.WaitForStateAsync(PushChannelState.Connected);

        var send = session.SendAsync(PushMessage.FromString("ack me if you can")).AsTask();
        await raw.ReceiveContainingAsync("ack me if you can");
        time.Advance(TimeSpan.FromSeconds(9));
        Assert.False(send.IsCompleted);
        time.Advance(TimeSpan.FromSeconds(2));
        await Assert.ThrowsAsync<PushAckTimeoutException>(() => send.WaitAsync(TestTimeouts.Default));

        // The message stays queued: a late ack is still accepted.
        await raw.SendAsync("{\"type\":\"ack\",\"seq\":1}");
        await raw.SendAsync("{\"type\":\"ping\"}");
        await raw.ReceiveContainingAsync("pong");
    }

    [Fact]
    public async Task RequireAuthorization_protects_every_endpoint_and_sessions_are_bound_to_their_user()
    {
        await using var server = await PushTestServer.StartAsync(
            configureBuilder: b =>
            {
                b.Services.AddAuthentication(HeaderAuthHandler.SchemeName).AddScheme<AuthenticationSchemeOptions, HeaderAuthHandler>(HeaderAuthHandler.SchemeName, null);
                b.Services.AddAuthorization();
            },
            configureApp: app =>
            {
                app.UseAuthentication();
                app.UseAuthorization();
            },
            configureEndpoints: endpoints => endpoints.RequireAuthorization());

        using (var anonymous = await server.Http.PostAsync(new Uri(server.BaseUrl + "/negotiate"), JsonContent.Create(new { protocolVersion = 1 })))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
        }

        var alice1 = await server.ConnectClientAsync(o => o.Headers[HeaderAuthHandler.Header] = "alice");
        var alice2 = await server.ConnectClientAsync(o => o.Headers[HeaderAuthHandler.Header] = "alice");
        var bob = await server.ConnectClientAsync(o => o.Headers[HeaderAuthHandler.Header] = "bob");
        Assert.Equal("alice", server.Sessions.FindSession(alice1.SessionId!)!.UserId);
        Assert.Equal(2, server.Sessions.GetSessions("alice").Count);

        Assert.Equal(2, await server.Sender.SendToUserAsync("alice", PushMessage.FromString("for alice")));
        Assert.Equal("for alice", (await alice1.ReadAsync(1)).Single().GetString());
        Assert.Equal("for alice", (await alice2.ReadAsync(1)).Single().GetString());
        await server.Sender.SendToSessionAsync(bob.SessionId!, PushMessage.FromString("for bob"));
        Assert.Equal("for bob", (await bob.ReadAsync(1)).Single().GetString());

        // Mallory has alice's session id and secret but is not alice: refused.
        using var negotiate = new HttpRequestMessage(HttpMethod.Post, new Uri(server.BaseUrl + "/negotiate")) { Content = JsonContent.Create(new { protocolVersion = 1 }) };
        negotiate.Headers.Add(HeaderAuthHandler.Header, "alice");
        using var negotiated = await server.Http.SendAsync(negotiate);
        var json = await negotiated.Content.ReadFromJsonAsync<JsonElement>();
        using var socket = new System.Net.WebSockets.ClientWebSocket();
        socket.Options.CollectHttpResponseDetails = true;
        socket.Options.SetRequestHeader(HeaderAuthHandler.Header, "mallory");
        await Assert.ThrowsAsync<System.Net.WebSockets.WebSocketException>(() => socket.ConnectAsync(
            server.WebSocketUrl(json.GetProperty("sessionId").GetString()!, json.GetProperty("resumeSecret").GetString()!), CancellationToken.None));
        Assert.Equal(HttpStatusCode.Forbidden, socket.HttpStatusCode);
    }

    [Fact]
    public async Task A_reconnect_pipeline_registered_in_DI_replaces_the_default()
    {
        await using var server = await PushTestServer.StartAsync();
        var attempts = 0;
        var host = Host.CreateApplicationBuilder();
        host.Logging.ClearProviders();
        host.Services.AddKeyedSingleton(PushKitClientServiceCollectionExtensions.ReconnectPipelineKey, (_, _) =>
            new Polly.ResiliencePipelineBuilder()
                .AddRetry(new Polly.Retry.RetryStrategyOptions
                {
                    MaxRetryAttempts = 1,
                    Delay = TimeSpan.FromMilliseconds(1),
                    OnRetry = _ =>
                    {
                        Interlocked.Increment(ref attempts);
                        return default;
                    },
                })
                .Build());
        host.Services.AddPushKitClient(o => o.Url = server.BaseUrl);
        using var app = host.Build();
        var channel = app.Services.GetRequiredService<IPushChannel>();
        await channel.ConnectAsync().WaitAsync(TestTimeouts.Default);

        // The server goes away for good: the app's pipeline makes one retry, then the channel gives up.
        var gaveUp = new TaskCompletionSource<PushChannelStateChangedEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        channel.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Disconnected)
            {
                gaveUp.TrySetResult(e);
            }
        };
        await server.DisposeAsync();
        var change = await gaveUp.Task.WaitAsync(TestTimeouts.Default);
        Assert.Contains("gave up", change.Reason, StringComparison.Ordinal);
        Assert.Equal(1, attempts);
        await channel.DisposeAsync();
    }

    private sealed record Note(string Text);

    /// <summary>Authenticates whoever names themselves in the X-Test-User header (tests only).</summary>
    private sealed class HeaderAuthHandler(IOptionsMonitor<AuthenticationSchemeOptions> options, ILoggerFactory logger, UrlEncoder encoder)
        : AuthenticationHandler<AuthenticationSchemeOptions>(options, logger, encoder)
    {
        public const string SchemeName = "TestHeader";
        public const string Header = "X-Test-User";

        protected override Task<AuthenticateResult> HandleAuthenticateAsync()
        {
            if (!Request.Headers.TryGetValue(Header, out var user) || string.IsNullOrEmpty(user))
            {
                return Task.FromResult(AuthenticateResult.NoResult());
            }

            var identity = new ClaimsIdentity([new Claim(ClaimTypes.NameIdentifier, user.ToString())], SchemeName);
            return Task.FromResult(AuthenticateResult.Success(new AuthenticationTicket(new ClaimsPrincipal(identity), SchemeName)));
        }
    }
}
