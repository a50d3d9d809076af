using System.Security.Claims;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using PushKit.Client;
using PushKit.Server;
using PushKit.Server.Sessions;

namespace PushKit.Tests.Options;

public class OptionsValidationTests
{
    [Fact]
    public void Server_options_list_every_problem_at_once()
    {
        var options = new PushKitServerOptions
        {
            MaxMessageBytes = 10,
            AckTimeout = TimeSpan.Zero,
            ResumeWindow = TimeSpan.FromSeconds(-1),
            HeartbeatInterval = TimeSpan.FromSeconds(10),
            HeartbeatTimeout = TimeSpan.FromSeconds(5),
            InboundQueueCapacity = 0,
        };
        options.Transports.Add("carrier-pigeon");

        var result = new PushKitServerOptionsValidator().Validate(null, options);

        Assert.True(result.Failed);
        var failures = result.Failures!.ToArray();
        Assert.Equal(6, failures.Length);
        Assert.Contains(failures, f => f.Contains("MaxMessageBytes", StringComparison.Ordinal));
        Assert.Contains(failures, f => f.Contains("AckTimeout", StringComparison.Ordinal));
        Assert.Contains(failures, f => f.Contains("ResumeWindow", StringComparison.Ordinal));
        Assert.Contains(failures, f => f.Contains("HeartbeatTimeout", StringComparison.Ordinal));
        Assert.Contains(failures, f => f.Contains("carrier-pigeon", StringComparison.Ordinal));
        Assert.Contains(failures, f => f.Contains("InboundQueueCapacity", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(14, false)]
    [InlineData(15, false)]
    [InlineData(16, true)]
    public void The_heartbeat_timeout_must_exceed_one_and_a_half_intervals(int timeoutSeconds, bool valid)
    {
        // An idle peer's ping can come 1.5 intervals after its last frame: a shorter timeout drops healthy connections.
        var options = new PushKitServerOptions { HeartbeatInterval = TimeSpan.FromSeconds(10), HeartbeatTimeout = TimeSpan.FromSeconds(timeoutSeconds) };
        var result = new PushKitServerOptionsValidator().Validate(null, options);
        Assert.Equal(valid, result.Succeeded);
    }

    [Fact]
    public void Durations_beyond_what_timers_and_clients_take_are_refused_by_name_not_met_later()
    {
        // A timer or Task.WaitAsync fails with ArgumentOutOfRangeException past about 49.7 days, and Polly refuses a
        // delay over a day: each must be a validation error naming the option, not a failure on first use.
        var server = new PushKitServerOptions
        {
            AckTimeout = TimeSpan.FromDays(60),
            HeartbeatInterval = TimeSpan.FromDays(100),
            HeartbeatTimeout = TimeSpan.FromDays(200),
            SseKeepAliveInterval = TimeSpan.MaxValue,
        };
        var failures = new PushKitServerOptionsValidator().Validate(null, server).Failures!.ToArray();
        foreach (var name in new[] { "AckTimeout must be positive and at most 1 day", "HeartbeatInterval must be at least 100 ms and at most 1 hour", "HeartbeatTimeout must be at most 2 hours", "SseKeepAliveInterval must be positive and at most 1 day" })
        {
            Assert.Contains(failures, f => f.Contains(name, StringComparison.Ordinal));
        }

        var client = new PushClientOptions
        {
            Url = new Uri("http://127.0.0.1/push"),
            AckTimeout = TimeSpan.MaxValue,
            ConnectTimeout = TimeSpan.MaxValue,
            TransportDetectionTimeout = TimeSpan.FromDays(60),
            MaxReconnectDelay = TimeSpan.FromDays(2),
        };
        var error = Assert.Throws<ArgumentException>(client.Validate);
        foreach (var name in new[] { "AckTimeout must be positive and at most 1 day", "ConnectTimeout must be positive and at most 1 day", "TransportDetectionTimeout must be positive and at most 1 day", "MaxReconnectDelay, which must be at most 1 day" })
        {
            Assert.Contains(name, error.Message, StringComparison.Ordinal);
        }

        // A day is accepted.
        var longest = new PushClientOptions
        {
            Url = new Uri("http://127.0.0.1/push"),
            AckTimeout = TimeSpan.FromDays(1),
            ConnectTimeout = TimeSpan.FromDays(1),
            TransportDetectionTimeout = TimeSpan.FromDays(1),
            MaxReconnectDelay = TimeSpan.FromDays(1),
        };
        longest.Validate();
    }

    [Fact]
    public void Default_server_options_are_valid()
    {
        Assert.True(new PushKitServerOptionsValidator().Validate(null, new PushKitServerOptions()).Succeeded);
    }

    [Fact]
    public void AddPushKit_validates_options_when_resolved()
    {
        var services = new ServiceCollection();
        services.AddPushKit(o => o.MaxMessageBytes = 1);
        using var provider = services.BuildServiceProvider();
        var error = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IOptions<PushKitServerOptions>>().Value);
        Assert.Contains("MaxMessageBytes", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Client_options_list_every_problem_at_once()
    {
        var options = new PushClientOptions { AckTimeout = TimeSpan.Zero, ConnectTimeout = TimeSpan.Zero, MaxMessageBytes = 1, ReceiveQueueCapacity = 0 };
        options.Transports.Clear();
        var error = Assert.Throws<ArgumentException>(options.Validate);
        foreach (var name in new[] { "Url", "Transports", "AckTimeout", "ConnectTimeout", "MaxMessageBytes", "ReceiveQueueCapacity" })
        {
            Assert.Contains(name, error.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Client_rejects_a_relative_or_foreign_url()
    {
        Assert.Throws<ArgumentException>(() => new PushChannelBuilder().WithUrl("/push"));
        var error = Assert.Throws<ArgumentException>(() => new PushChannelBuilder().WithUrl("ftp://example.com/push").Build());
        Assert.Contains("http", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Client_rejects_a_relative_or_foreign_Uri_as_it_does_a_string()
    {
        Assert.Throws<ArgumentException>(() => new PushChannelBuilder().WithUrl(new Uri("/push", UriKind.Relative)));
        Assert.Throws<ArgumentException>(() => new PushChannelBuilder().WithUrl(new Uri("ftp://example.com/push")));
        Assert.Throws<ArgumentNullException>(() => new PushChannelBuilder().WithUrl((Uri)null!));
    }

    [Fact]
    public void A_copy_of_client_options_carries_every_setting_and_shares_no_collection()
    {
        // Every settable property gets a value other than its default: a property added later and left out of Clone
        // fails here.
        var options = new PushClientOptions();
        var settable = typeof(PushClientOptions).GetProperties().Where(p => p.CanWrite).ToArray();
        foreach (var property in settable)
        {
            property.SetValue(options, NonDefault(property.PropertyType, property.GetValue(options)));
        }

        options.Transports.RemoveAt(0);
        options.Headers["X-Tenant"] = "a";

        var copy = options.Clone();
        foreach (var property in settable)
        {
            Assert.Equal(property.GetValue(options), property.GetValue(copy));
        }

        Assert.Equal(options.Transports, copy.Transports);
        Assert.Equal(options.Headers, copy.Headers);
        copy.Transports.Clear();
        copy.Headers["X-Tenant"] = "b";
        Assert.Equal(2, options.Transports.Count);
        Assert.Equal("a", options.Headers["X-Tenant"]);
        Assert.Equal(StringComparer.OrdinalIgnoreCase, ((Dictionary<string, string>)copy.Headers).Comparer);
    }

    [Fact]
    public void A_built_channel_keeps_the_options_it_was_built_with()
    {
        var builder = new PushChannelBuilder().WithUrl("http://127.0.0.1/push").Configure(o => o.Headers["X-Tenant"] = "a");
        var first = (PushChannel)builder.Build();

        // Changing the builder afterwards, even to something invalid, builds other channels; the first keeps its own.
        builder.Configure(o =>
        {
            o.Headers["X-Tenant"] = "b";
            o.Transports.Clear();
            o.AckTimeout = TimeSpan.FromSeconds(-5);
        });
        Assert.Equal("a", first.Options.Headers["X-Tenant"]);
        Assert.Equal(3, first.Options.Transports.Count);
        Assert.Equal(TimeSpan.FromSeconds(30), first.Options.AckTimeout);
        Assert.Throws<ArgumentException>(builder.Build);
    }

    private static object? NonDefault(Type type, object? current) => type switch
    {
        _ when type == typeof(Uri) => new Uri("http://example.com/copied"),
        _ when type == typeof(bool) => !(bool)current!,
        _ when type == typeof(int) => (int)current! - 1,
        _ when type == typeof(long) => (long)current! - 1,
        _ when type == typeof(TimeSpan) || type == typeof(TimeSpan?) => TimeSpan.FromMilliseconds(123),
        _ when type == typeof(PushBufferFullPolicy) => PushBufferFullPolicy.DropOldest,
        _ when type == typeof(TimeProvider) => new FakeTimeProvider(),
        _ when type == typeof(Polly.ResiliencePipeline) => Polly.ResiliencePipeline.Empty,
        _ when type == typeof(Func<CancellationToken, ValueTask<string?>>) => (Func<CancellationToken, ValueTask<string?>>)(_ => ValueTask.FromResult<string?>("t")),
        _ when type == typeof(Func<HttpMessageHandler>) => (Func<HttpMessageHandler>)(() => new SocketsHttpHandler()),
        _ when type == typeof(Action<System.Net.WebSockets.ClientWebSocketOptions>) => (Action<System.Net.WebSockets.ClientWebSocketOptions>)(_ => { }),
        _ => throw new InvalidOperationException($"Give the test a value for a {type}."),
    };

    [Fact]
    public void Transport_context_builds_endpoint_urls_with_the_session_id_but_never_the_secret()
    {
        var context = new PushTransportContext
        {
            BaseUrl = new Uri("https://example.com/app/push/"),
            SessionId = "s1",
            ResumeSecret = "a+b/c",
            Options = new PushClientOptions(),
            LoggerFactory = Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance,
            HttpClient = new HttpClient(),
        };
        Assert.Equal("wss://example.com/app/push/ws?session=s1", context.GetEndpointUrl("ws", webSocket: true).AbsoluteUri);
        Assert.Equal("https://example.com/app/push/send?session=s1", context.GetEndpointUrl("send", webSocket: false).AbsoluteUri);
    }

    [Fact]
    public void Sessions_expire_after_the_resume_window_and_not_before()
    {
        var time = new FakeTimeProvider();
        var services = new ServiceCollection();
        services.AddSingleton<TimeProvider>(time);
        services.AddPushKit(o => o.ResumeWindow = TimeSpan.FromMinutes(2));
        using var provider = services.BuildServiceProvider();
        var manager = provider.GetRequiredService<PushSessionManager>();

        var session = manager.Create(new ClaimsPrincipal(), out var secret);
        var pending = session.Engine.Enqueue(PushMessage.FromString("waiting"), trackAck: true)!;
        Assert.True(session.VerifySecret(secret));
        Assert.False(session.VerifySecret(secret + "x"));

        time.Advance(TimeSpan.FromMinutes(2) - TimeSpan.FromSeconds(1));
        Assert.Equal(0, manager.ExpireIdleSessions());
        Assert.Same(session, manager.Find(session.SessionId));

        time.Advance(TimeSpan.FromSeconds(2));
        Assert.Equal(1, manager.ExpireIdleSessions());
        Assert.Null(manager.Find(session.SessionId));
        Assert.Equal(PushChannelState.Closed, session.State);
        var error = Assert.Throws<AggregateException>(() => pending.Wait()).InnerException;
        Assert.Equal(PushCloseCode.SessionNotFound, Assert.IsType<PushChannelClosedException>(error).CloseCode);
    }

    [Fact]
    public void Session_ids_and_secrets_are_long_random_and_url_safe()
    {
        var services = new ServiceCollection();
        services.AddPushKit();
        using var provider = services.BuildServiceProvider();
        var manager = provider.GetRequiredService<PushSessionManager>();
        var seen = new HashSet<string>();
        for (var i = 0; i < 100; i++)
        {
            var session = manager.Create(new ClaimsPrincipal(), out var secret);
            Assert.True(seen.Add(session.SessionId) && seen.Add(secret));
            Assert.True(session.SessionId.Length >= 22, "≥ 128 bits of id");
            Assert.True(secret.Length >= 43, "≥ 256 bits of secret");
            Assert.Matches("^[A-Za-z0-9_-]+$", secret);
        }
    }

    [Fact]
    public void Message_ids_are_remembered_per_user_across_sessions_and_per_session_for_anonymous_clients()
    {
        var services = new ServiceCollection();
        services.AddPushKit(o => o.IdempotencyCacheSize = 2);
        using var provider = services.BuildServiceProvider();
        var manager = provider.GetRequiredService<PushSessionManager>();
        var alice = new ClaimsPrincipal(new ClaimsIdentity([new Claim(ClaimTypes.NameIdentifier, "alice")], "test"));

        var first = manager.Create(alice, out _);
        var second = manager.Create(alice, out _);
        Assert.True(manager.RecentIds(first)!.TryAdd("m1"));
        Assert.False(manager.RecentIds(second)!.TryAdd("m1"));

        var anonymous1 = manager.Create(new ClaimsPrincipal(), out _);
        var anonymous2 = manager.Create(new ClaimsPrincipal(), out _);
        Assert.True(manager.RecentIds(anonymous1)!.TryAdd("m1"));
        Assert.True(manager.RecentIds(anonymous2)!.TryAdd("m1"));
        Assert.False(manager.RecentIds(anonymous1)!.TryAdd("m1"));

        // Bounded: the oldest id is forgotten once the capacity is exceeded.
        var recent = manager.RecentIds(anonymous1)!;
        Assert.True(recent.TryAdd("m2"));
        Assert.True(recent.TryAdd("m3"));
        Assert.True(recent.TryAdd("m1"));
    }
}

public class AckDelayOptionTests
{
    [Theory]
    [InlineData(-1)]
    [InlineData(1001)]
    public void An_AckDelay_below_zero_or_above_one_second_is_refused(int milliseconds)
    {
        var options = new PushClientOptions { Url = new Uri("http://127.0.0.1/push"), AckDelay = TimeSpan.FromMilliseconds(milliseconds) };
        var error = Assert.Throws<ArgumentException>(options.Validate);
        Assert.Contains("AckDelay", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(null)]
    [InlineData(0)]
    [InlineData(1000)]
    public void No_AckDelay_zero_and_up_to_one_second_are_accepted(int? milliseconds)
    {
        var options = new PushClientOptions
        {
            Url = new Uri("http://127.0.0.1/push"),
            AckDelay = milliseconds is { } ms ? TimeSpan.FromMilliseconds(ms) : null,
        };
        options.Validate();
    }
}
