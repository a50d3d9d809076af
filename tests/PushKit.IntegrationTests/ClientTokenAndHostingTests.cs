using System.Collections.Concurrent;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>The .NET client's AccessTokenProvider failure modes, its DI registrations, and its events around dispose and reconnect.</summary>
public class ClientTokenAndHostingTests
{
    private static void Only(PushClientOptions o, string transport)
    {
        o.Transports.Clear();
        o.Transports.Add(Transports.ByName(transport));
    }

    private static void FastReconnect(PushClientOptions o)
    {
        o.ReconnectDelay = TimeSpan.FromMilliseconds(50);
        o.MaxReconnectDelay = TimeSpan.FromMilliseconds(200);
    }

    /// <summary>Records every state change, in order, with whether the channel's disposal had returned when it came.</summary>
    private sealed class StateLog
    {
        private readonly List<PushChannelStateChangedEventArgs> _changes = [];

        public StateLog(IPushChannel channel) => channel.StateChanged += (_, e) =>
        {
            lock (_changes)
            {
                _changes.Add(e);
            }
        };

        public PushChannelStateChangedEventArgs[] Changes
        {
            get
            {
                lock (_changes)
                {
                    return [.. _changes];
                }
            }
        }

        /// <summary>Each change starts where the last one ended, nothing follows Closed, and Closed comes once.</summary>
        public void AssertConsistent()
        {
            var changes = Changes;
            var text = string.Join(" | ", changes.Select(c => $"{c.PreviousState}->{c.CurrentState} ({c.Reason})"));
            for (var i = 1; i < changes.Length; i++)
            {
                Assert.True(changes[i].PreviousState == changes[i - 1].CurrentState, "A change does not start where the last ended: " + text);
                Assert.True(changes[i].PreviousState != changes[i].CurrentState, "A change to the same state: " + text);
            }

            Assert.True(changes.Count(c => c.CurrentState == PushChannelState.Closed) <= 1, "Closed twice: " + text);
            var closed = Array.FindIndex(changes, c => c.CurrentState == PushChannelState.Closed);
            Assert.True(closed < 0 || closed == changes.Length - 1, "A change after Closed: " + text);
        }
    }

    // ================================================================ AccessTokenProvider

    public static TheoryData<string> ProviderFailures => new() { "invalid-operation", "http-request" };

    private static Exception ProviderFailure(string kind) => kind switch
    {
        "invalid-operation" => new InvalidOperationException("token cache is empty (test)"),
        "http-request" => new HttpRequestException("identity provider unreachable (test)"),
        "timeout" => new TaskCanceledException("The request was canceled due to the configured HttpClient.Timeout of 100 seconds elapsing (test)", new TimeoutException()),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>
    /// getting-started §3.5: "ConnectAsync throws PushConnectException for every connection failure ... Cancelling its own
    /// token throws OperationCanceledException instead." A token provider that fails is a failure to connect; the
    /// documented retry loop (§3.3) catches only PushConnectException.
    /// </summary>
    [Theory]
    [InlineData("invalid-operation")]
    [InlineData("http-request")]
    [InlineData("timeout")]
    public async Task a_token_provider_that_throws_on_the_first_connect_fails_it_with_PushConnectException_and_the_channel_stays_usable(string kind)
    {
        await using var server = await PushTestServer.StartAsync();
        var calls = 0;
        var client = server.CreateClient(o => o.AccessTokenProvider = _ =>
            Interlocked.Increment(ref calls) == 1 ? throw ProviderFailure(kind) : ValueTask.FromResult<string?>("ok"));
        var states = new StateLog(client);

        var error = await Record.ExceptionAsync(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.NotNull(error);
        Assert.Equal(PushChannelState.Disconnected, client.State);
        Assert.Equal([PushChannelState.Connecting, PushChannelState.Disconnected], states.Changes.Select(c => c.CurrentState));
        Assert.True(error is PushConnectException, $"Expected PushConnectException, got {error.GetType().FullName}: {error.Message}");
        Assert.Contains("test", (error.InnerException ?? error).Message, StringComparison.Ordinal);

        // The channel stays usable: the next ConnectAsync works.
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    /// <summary>
    /// The documented generic-host pattern (getting-started §3.3): a BackgroundService that retries ConnectAsync on
    /// PushConnectException. An identity provider that is briefly unreachable at startup must not stop the host.
    /// </summary>
    [Theory]
    [InlineData("http-request")]
    [InlineData("timeout")]
    public async Task the_documented_connect_retry_loop_survives_a_token_provider_failure_at_startup(string kind)
    {
        await using var server = await PushTestServer.StartAsync();
        var calls = 0;
        var host = Host.CreateApplicationBuilder();
        host.Logging.ClearProviders();
        host.Services.AddPushKitClient(o =>
        {
            o.Url = server.BaseUrl;
            o.AccessTokenProvider = _ => Interlocked.Increment(ref calls) == 1
                ? throw ProviderFailure(kind)
                : ValueTask.FromResult<string?>("ok");
        });
        host.Services.AddSingleton<DocumentedConnector>();
        host.Services.AddHostedService(sp => sp.GetRequiredService<DocumentedConnector>());
        using var app = host.Build();
        var channel = app.Services.GetRequiredService<IPushChannel>();
        var connected = channel.NextStateAsync(PushChannelState.Connected);
        var stopping = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        app.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping.Register(() => stopping.TrySetResult());

        await app.StartAsync().WaitAsync(TestTimeouts.Default);
        var connector = app.Services.GetRequiredService<DocumentedConnector>();
        var first = await Task.WhenAny(connected, stopping.Task, connector.ExecuteTask!).WaitAsync(TestTimeouts.Default);
        if (first != connected)
        {
            var execute = connector.ExecuteTask!;
            await Task.WhenAny(execute).WaitAsync(TestTimeouts.Default);
            var hostStopped = execute.IsFaulted && await Task.WhenAny(stopping.Task, Task.Delay(TimeSpan.FromSeconds(5))) == stopping.Task;
            Assert.Fail(
                $"The token provider's {ProviderFailure(kind).GetType().Name} escaped the documented PushConnectException retry loop: " +
                $"the background service ended {execute.Status} without connecting" +
                (hostStopped ? ", and the whole host stopped." : execute.IsCanceled ? ", silently (a cancelled ExecuteAsync is not logged), and the host runs on without a push connection." : "."));
        }
        await app.StopAsync().WaitAsync(TestTimeouts.Default);
        app.Dispose();
        Assert.Equal(PushChannelState.Closed, channel.State);
    }

    /// <summary>getting-started §3.3's PushConnector, with a shorter retry delay.</summary>
    private sealed class DocumentedConnector(IPushChannel channel) : BackgroundService
    {
        public ConcurrentQueue<string> Received { get; } = new();

        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            while (true)
            {
                try
                {
                    await channel.ConnectAsync(stoppingToken);
                    break;
                }
                catch (PushConnectException)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(100), stoppingToken);
                }
            }

            await foreach (var message in channel.ReadAllAsync(stoppingToken))
            {
                Received.Enqueue(message.GetString());
            }
        }
    }

    /// <summary>
    /// Reliability §4.3: the default pipeline retries "every exception except OperationCanceledException and
    /// PushChannelClosedException (a reconnect that finds the channel closed by the application)"; §3.2: no attempt limit.
    /// </summary>
    [Theory]
    [InlineData("invalid-operation")]
    [InlineData("http-request")]
    [InlineData("timeout")]
    public async Task a_token_provider_that_throws_while_reconnecting_keeps_the_channel_reconnecting_until_it_resumes(string kind)
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var failuresLeft = 0;
        await using var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o =>
        {
            Only(o, "websocket");
            FastReconnect(o);
            o.AccessTokenProvider = _ => Interlocked.Decrement(ref failuresLeft) >= 0 ? throw ProviderFailure(kind) : ValueTask.FromResult<string?>("ok");
        }).Build();
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var states = new StateLog(client);
        var session = client.SessionId;

        Volatile.Write(ref failuresLeft, 2);
        var back = client.NextChangeAsync(e => e.CurrentState is PushChannelState.Connected or PushChannelState.Disconnected or PushChannelState.Closed);
        proxy.CutAll();
        var change = await back.WaitAsync(TestTimeouts.Default);
        var text = string.Join(" | ", states.Changes.Select(c => $"{c.PreviousState}->{c.CurrentState} ({c.Reason})"));
        Assert.True(change.CurrentState == PushChannelState.Connected, "The channel gave up instead of retrying: " + text);
        Assert.StartsWith("Resumed:", change.Reason, StringComparison.Ordinal);
        Assert.Equal(session, client.SessionId);
        states.AssertConsistent();
    }

    /// <summary>
    /// A provider that keeps failing while reconnecting (credentials revoked): the default pipeline retries without limit
    /// and the channel stays Reconnecting; no further event is raised per failed attempt (they are logged, event 110).
    /// </summary>
    [Fact]
    public async Task a_token_provider_that_keeps_failing_while_reconnecting_leaves_the_channel_Reconnecting_with_no_event_per_attempt()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var failing = 0;
        var failedCalls = 0;
        var threeFailures = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o =>
        {
            Only(o, "websocket");
            FastReconnect(o);
            o.AccessTokenProvider = _ =>
            {
                if (Volatile.Read(ref failing) == 1)
                {
                    if (Interlocked.Increment(ref failedCalls) == 3)
                    {
                        threeFailures.TrySetResult();
                    }

                    throw new InvalidOperationException("credentials revoked (test)");
                }

                return ValueTask.FromResult<string?>("ok");
            };
        }).Build();
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var states = new StateLog(client);
        Volatile.Write(ref failing, 1);
        proxy.CutAll();
        await threeFailures.Task.WaitAsync(TestTimeouts.Default);
        Assert.Equal(PushChannelState.Reconnecting, client.State);
        var change = Assert.Single(states.Changes);
        Assert.Equal(PushChannelState.Reconnecting, change.CurrentState);
        Assert.DoesNotContain("credentials revoked", change.Reason ?? "", StringComparison.Ordinal);

        // It recovers once the provider does.
        var back = client.NextStateAsync(PushChannelState.Connected);
        Volatile.Write(ref failing, 0);
        Assert.StartsWith("Resumed:", (await back.WaitAsync(TestTimeouts.Default)).Reason, StringComparison.Ordinal);
    }

    /// <summary>
    /// §3.2 ConnectTimeout: "How long negotiation plus all transport attempts may take, for ConnectAsync and for each
    /// reconnect attempt. When ConnectAsync exceeds it, it fails with PushConnectException."
    /// </summary>
    [Fact]
    public async Task a_token_provider_that_hangs_but_honours_its_token_is_bounded_by_ConnectTimeout()
    {
        await using var server = await PushTestServer.StartAsync();
        var client = server.CreateClient(o =>
        {
            o.ConnectTimeout = TimeSpan.FromSeconds(1);
            o.AccessTokenProvider = async ct =>
            {
                await Task.Delay(Timeout.Infinite, ct);
                return "never";
            };
        });
        var error = await Assert.ThrowsAsync<PushConnectException>(() => client.ConnectAsync().WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Contains("ConnectTimeout", error.Message, StringComparison.Ordinal);
        Assert.Equal(PushChannelState.Disconnected, client.State);
    }

    /// <summary>
    /// The same with a provider that does not look at its token (<c>_ =&gt; tokens.GetAsync()</c>, a common form): the
    /// documented bound is the channel's, not the provider's.
    /// </summary>
    [Fact]
    public async Task a_token_provider_that_hangs_ignoring_its_token_is_bounded_by_ConnectTimeout()
    {
        await using var server = await PushTestServer.StartAsync();
        var hang = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var client = server.CreateClient(o =>
        {
            o.ConnectTimeout = TimeSpan.FromSeconds(1);
            o.AccessTokenProvider = _ => new ValueTask<string?>(hang.Task);
        });
        try
        {
            var connect = client.ConnectAsync();
            var error = await Record.ExceptionAsync(() => connect.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.False(error is TimeoutException, "ConnectAsync was still running 10 s after a ConnectTimeout of 1 s.");
            Assert.IsType<PushConnectException>(error);
        }
        finally
        {
            hang.TrySetResult(null);
        }
    }

    /// <summary>
    /// Reliability §4.2: "Each attempt is bounded by ConnectTimeout"; §3.6 step 2: "each attempt bounded by
    /// ConnectTimeout". A reconnect whose token provider hangs (ignoring its token) must fail that attempt and try again,
    /// and the channel must still close promptly.
    /// </summary>
    [Fact]
    public async Task a_reconnect_attempt_whose_token_provider_hangs_is_bounded_and_retried_and_dispose_is_prompt()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var hang = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var hanging = 0;
        var callsWhileHanging = 0;
        var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o =>
        {
            Only(o, "websocket");
            FastReconnect(o);
            o.ConnectTimeout = TimeSpan.FromSeconds(1);
            o.AccessTokenProvider = _ =>
            {
                if (Volatile.Read(ref hanging) == 1)
                {
                    Interlocked.Increment(ref callsWhileHanging);
                    return new ValueTask<string?>(hang.Task);
                }

                return ValueTask.FromResult<string?>("ok");
            };
        }).Build();
        try
        {
            await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
            var states = new StateLog(client);
            Volatile.Write(ref hanging, 1);
            var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
            proxy.CutAll();
            await reconnecting.WaitAsync(TestTimeouts.Default);

            // With a 1 s ConnectTimeout and ≤ 200 ms backoff, a second attempt is due well within 10 s.
            using (var wait = new CancellationTokenSource(TimeSpan.FromSeconds(10)))
            {
                while (Volatile.Read(ref callsWhileHanging) < 2 && !wait.IsCancellationRequested)
                {
                    await Task.Delay(20, CancellationToken.None);
                }
            }

            var calls = Volatile.Read(ref callsWhileHanging);
            var stateThen = client.State;
            var started = TimeProvider.System.GetTimestamp();
            var dispose = client.DisposeAsync().AsTask();
            var disposeError = await Record.ExceptionAsync(() => dispose.WaitAsync(TimeSpan.FromSeconds(15)));
            var disposeTook = TimeProvider.System.GetElapsedTime(started);
            Assert.Null(disposeError);
            Assert.True(disposeTook < TimeSpan.FromSeconds(8), $"DisposeAsync took {disposeTook}.");
            states.AssertConsistent();
            Assert.True(calls >= 2, $"The reconnect attempt stuck in the token provider was never bounded: {calls} attempt(s) in 10 s with ConnectTimeout 1 s (state {stateThen}).");
        }
        finally
        {
            hang.TrySetResult("ok");
            await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
        }
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    public async Task a_token_provider_returning_null_or_empty_sends_no_Authorization_header_on_any_request(string? token)
    {
        var authorizations = new ConcurrentQueue<string>();
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(
            configurePush: p => p.AddCollector(collector),
            configureApp: app => app.Use((context, next) =>
            {
                if (context.Request.Path.StartsWithSegments("/push"))
                {
                    authorizations.Enqueue(context.Request.Headers.Authorization.ToString());
                }

                return next(context);
            }));
        foreach (var transport in new[] { "websocket", "sse", "longpolling" })
        {
            var client = await server.ConnectClientAsync(transport, o => o.AccessTokenProvider = _ => ValueTask.FromResult(token));
            await client.SendStringAsync(transport).AsTask().WaitAsync(TestTimeouts.Default);
            Assert.Equal(transport, (await collector.TakeAsync(1))[0].GetString());
            await client.DisposeAsync();
        }

        Assert.NotEmpty(authorizations);
        Assert.All(authorizations, a => Assert.Equal("", a));
    }

    /// <summary>A slow provider (every request waits for it) slows sends down but changes nothing else: order and acks hold.</summary>
    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task a_slow_token_provider_keeps_sends_in_order_and_all_acknowledged(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(p => p.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport, o => o.AccessTokenProvider = async ct =>
        {
            await Task.Delay(Random.Shared.Next(1, 40), ct);
            return "slow";
        });
        var sends = Enumerable.Range(0, 30).Select(i => client.SendStringAsync(i.ToString(System.Globalization.CultureInfo.InvariantCulture)).AsTask()).ToArray();
        await Task.WhenAll(sends).WaitAsync(TestTimeouts.Default);
        Assert.Equal(Enumerable.Range(0, 30).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)), (await collector.TakeAsync(30)).Select(m => m.GetString()));
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    // ================================================================ dependency injection

    [Fact]
    public async Task AddPushKitClient_is_one_singleton_across_scopes_and_disposing_a_scope_leaves_it_open()
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(p => p.AddCollector(collector));
        var services = new ServiceCollection();
        services.AddPushKitClient(o => o.Url = server.BaseUrl);
        await using var provider = services.BuildServiceProvider(new ServiceProviderOptions { ValidateScopes = true, ValidateOnBuild = true });
        var root = provider.GetRequiredService<IPushChannel>();
        IPushChannel fromScope;
        await using (var scope = provider.CreateAsyncScope())
        {
            fromScope = scope.ServiceProvider.GetRequiredService<IPushChannel>();
            Assert.Same(root, fromScope);
            await fromScope.ConnectAsync().WaitAsync(TestTimeouts.Default);
        }

        Assert.Equal(PushChannelState.Connected, root.State);
        await root.SendStringAsync("after scope").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("after scope", (await collector.TakeAsync(1))[0].GetString());
    }

    /// <summary>
    /// §3.3: "The container disposes it when the host stops, which closes it." §3.7: sends not yet acknowledged fail with
    /// PushChannelClosedException; the server ends the session.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task disposing_the_container_closes_the_channel_fails_a_pending_send_and_does_not_hang(bool synchronous)
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handling = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var ended = new TaskCompletionSource<PushCloseCode>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(p => p
            .OnMessage(async (_, _, ct) =>
            {
                handling.TrySetResult();
                await release.Task.WaitAsync(ct);
            }));
        try
        {
            var services = new ServiceCollection();
            services.AddPushKitClient(o => o.Url = server.BaseUrl);
            var provider = services.BuildServiceProvider();
            var channel = provider.GetRequiredService<IPushChannel>();
            await channel.ConnectAsync().WaitAsync(TestTimeouts.Default);
            var session = server.Sessions.FindSession(channel.SessionId!)!;
            session.StateChanged += (_, e) =>
            {
                if (e.CurrentState == PushChannelState.Closed)
                {
                    ended.TrySetResult(e.CloseCode ?? PushCloseCode.Normal);
                }
            };
            var states = new StateLog(channel);
            var send = channel.SendStringAsync("held").AsTask();
            await handling.Task.WaitAsync(TestTimeouts.Default);

            var started = TimeProvider.System.GetTimestamp();
            if (synchronous)
            {
                await Task.Run(provider.Dispose).WaitAsync(TestTimeouts.Default);
            }
            else
            {
                await provider.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
            }

            var took = TimeProvider.System.GetElapsedTime(started);
            Assert.True(took < TimeSpan.FromSeconds(8), $"Disposing the container took {took}.");
            var error = await Assert.ThrowsAsync<PushChannelClosedException>(() => send.WaitAsync(TestTimeouts.Default));
            Assert.Equal(PushCloseCode.Normal, error.CloseCode);
            Assert.Equal(PushChannelState.Closed, channel.State);
            states.AssertConsistent();
            Assert.Equal(PushChannelState.Closed, states.Changes[^1].CurrentState);
            await Assert.ThrowsAsync<PushChannelClosedException>(() => channel.SendStringAsync("after").AsTask().WaitAsync(TestTimeouts.Default));
        }
        finally
        {
            release.TrySetResult();
        }
    }

    [Fact]
    public async Task two_keyed_clients_to_two_servers_are_independent_of_each_other()
    {
        var first = new Collector();
        var second = new Collector();
        await using var a = await PushTestServer.StartAsync(p => p.AddCollector(first));
        await using var b = await PushTestServer.StartAsync(p => p.AddCollector(second));
        await using var proxyA = new ChaosProxy(a.Root);
        var tokensA = 0;
        var tokensB = 0;
        var services = new ServiceCollection();
        services.AddKeyedPushKitClient("a", o =>
        {
            o.Url = proxyA.PushUrl;
            FastReconnect(o);
            o.AccessTokenProvider = _ => Interlocked.Increment(ref tokensA) > 2 ? throw new InvalidOperationException("a's tokens (test)") : ValueTask.FromResult<string?>("a");
        });
        services.AddKeyedPushKitClient("b", o =>
        {
            o.Url = b.BaseUrl;
            o.AccessTokenProvider = _ => { Interlocked.Increment(ref tokensB); return ValueTask.FromResult<string?>("b"); };
        });
        await using var provider = services.BuildServiceProvider();
        var toA = provider.GetRequiredKeyedService<IPushChannel>("a");
        var toB = provider.GetRequiredKeyedService<IPushChannel>("b");
        Assert.NotSame(toA, toB);
        Assert.Null(provider.GetService<IPushChannel>());
        await toA.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await toB.ConnectAsync().WaitAsync(TestTimeouts.Default);

        // a loses its connection and cannot get a token: b carries on.
        var aReconnecting = toA.NextStateAsync(PushChannelState.Reconnecting);
        proxyA.CutAll();
        await aReconnecting.WaitAsync(TestTimeouts.Default);
        await toB.SendStringAsync("to b").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("to b", (await second.TakeAsync(1))[0].GetString());
        Assert.Equal(PushChannelState.Connected, toB.State);

        // Closing a leaves b connected.
        await toA.CloseAsync().WaitAsync(TestTimeouts.Default);
        await toB.SendStringAsync("still b").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal("still b", (await second.TakeAsync(1))[0].GetString());
        Assert.Equal(0, first.Count);
        Assert.Equal(PushChannelState.Connected, toB.State);
    }

    [Fact]
    public void invalid_options_fail_at_resolve_time_without_a_host_listing_every_problem()
    {
        var services = new ServiceCollection();
        services.AddPushKitClient(o => o.AckTimeout = TimeSpan.Zero);
        services.AddKeyedPushKitClient("k", o => o.ReceiveQueueCapacity = 0);
        using var provider = services.BuildServiceProvider();
        var error = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IPushChannel>());
        Assert.Contains("Url", error.Message, StringComparison.Ordinal);
        Assert.Contains("AckTimeout", error.Message, StringComparison.Ordinal);
        var keyed = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredKeyedService<IPushChannel>("k"));
        Assert.Contains("Url", keyed.Message, StringComparison.Ordinal);
        Assert.Contains("ReceiveQueueCapacity", keyed.Message, StringComparison.Ordinal);

        // A second resolve fails the same way (no half-built singleton is cached).
        Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IPushChannel>());
    }

    /// <summary>The channel keeps the options it was built with: a later IOptionsMonitor change does not reach it.</summary>
    [Fact]
    public async Task an_options_change_after_the_channel_was_built_does_not_reach_it()
    {
        await using var server = await PushTestServer.StartAsync();
        var config = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Push:AckTimeout"] = "00:00:20" }).Build();
        var services = new ServiceCollection();
        services.Configure<PushClientOptions>(config.GetSection("Push"));
        services.AddPushKitClient(o => o.Url = server.BaseUrl);
        await using var provider = services.BuildServiceProvider();
        var channel = provider.GetRequiredService<IPushChannel>();
        var monitor = provider.GetRequiredService<IOptionsMonitor<PushClientOptions>>();
        Assert.Equal(TimeSpan.FromSeconds(20), monitor.CurrentValue.AckTimeout);
        var changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var subscription = monitor.OnChange(_ => changed.TrySetResult());

        config["Push:AckTimeout"] = "00:00:05";
        config.Reload();
        await changed.Task.WaitAsync(TestTimeouts.Default);
        Assert.Equal(TimeSpan.FromSeconds(5), monitor.CurrentValue.AckTimeout);
        Assert.Same(channel, provider.GetRequiredService<IPushChannel>());
        Assert.Equal(TimeSpan.FromSeconds(20), ((PushChannel)channel).Options.AckTimeout);
        await channel.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await channel.SendStringAsync("x").AsTask().WaitAsync(TestTimeouts.Default);
    }

    /// <summary>
    /// A generic host with the documented BackgroundService: connects, reads with ReadAllAsync, and the host's stop ends
    /// the read, closes the channel (the server ends the session with 1000) and returns promptly.
    /// </summary>
    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task a_generic_host_background_service_connects_reads_and_the_host_stop_closes_the_channel(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(p => p.AddCollector(collector));
        var host = Host.CreateApplicationBuilder();
        host.Logging.ClearProviders();
        host.Services.AddPushKitClient(o =>
        {
            o.Url = server.BaseUrl;
            Only(o, transport);
        });
        host.Services.AddSingleton<DocumentedConnector>();
        host.Services.AddHostedService(sp => sp.GetRequiredService<DocumentedConnector>());
        using var app = host.Build();
        var channel = app.Services.GetRequiredService<IPushChannel>();
        var connected = channel.NextStateAsync(PushChannelState.Connected);
        await app.StartAsync().WaitAsync(TestTimeouts.Default);
        await connected.WaitAsync(TestTimeouts.Default);
        await collector.Started.Task.WaitAsync(TestTimeouts.Default);
        var states = new StateLog(channel);

        await server.Sender.SendToSessionAsync(channel.SessionId!, PushMessage.FromString("one"));
        await server.Sender.SendToSessionAsync(channel.SessionId!, PushMessage.FromString("two"));
        var connector = app.Services.GetRequiredService<DocumentedConnector>();
        await Eventually.TrueAsync(() => connector.Received.Count == 2);
        Assert.Equal(["one", "two"], connector.Received);

        var started = TimeProvider.System.GetTimestamp();
        await app.StopAsync().WaitAsync(TestTimeouts.Default);
        app.Dispose();
        var took = TimeProvider.System.GetElapsedTime(started);
        Assert.True(took < TimeSpan.FromSeconds(8), $"Stop + dispose took {took}.");
        Assert.Equal(PushChannelState.Closed, channel.State);
        Assert.Equal(PushCloseCode.Normal, await collector.Ended.Task.WaitAsync(TestTimeouts.Default));
        states.AssertConsistent();
    }

    /// <summary>A host that stops while its BackgroundService is still retrying the first connect (server down) stops promptly.</summary>
    [Fact]
    public async Task a_host_stopping_while_the_first_connect_is_being_retried_stops_promptly()
    {
        // A port with nothing listening: take one and release it.
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();

        var host = Host.CreateApplicationBuilder();
        host.Logging.ClearProviders();
        host.Services.AddPushKitClient(o => o.Url = new Uri($"http://127.0.0.1:{port}/push"));
        host.Services.AddHostedService<DocumentedConnector>();
        using var app = host.Build();
        var channel = app.Services.GetRequiredService<IPushChannel>();
        var failed = channel.NextStateAsync(PushChannelState.Disconnected);
        await app.StartAsync().WaitAsync(TestTimeouts.Default);
        await failed.WaitAsync(TestTimeouts.Default);
        var started = TimeProvider.System.GetTimestamp();
        await app.StopAsync().WaitAsync(TestTimeouts.Default);
        app.Dispose();
        Assert.True(TimeProvider.System.GetElapsedTime(started) < TimeSpan.FromSeconds(8));
        Assert.Equal(PushChannelState.Closed, channel.State);
    }

    // ================================================================ events around dispose and reconnect

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task disposing_while_reconnecting_raises_Closed_once_and_nothing_after_it(string transport)
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o =>
        {
            Only(o, transport);
            FastReconnect(o);
        }).Build();
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var states = new StateLog(client);
        var dropped = 0;
        client.MessagesDropped += (_, _) => Interlocked.Increment(ref dropped);

        // Two losses with a resume between, then a loss with no way back, and a dispose while reconnecting.
        var resumed = client.NextStateAsync(PushChannelState.Connected);
        proxy.CutAll();
        await resumed.WaitAsync(TestTimeouts.Default);
        proxy.RefuseNew = true;
        var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
        proxy.CutAll();
        await reconnecting.WaitAsync(TestTimeouts.Default);
        var started = TimeProvider.System.GetTimestamp();
        await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
        var disposeTook = TimeProvider.System.GetElapsedTime(started);
        var atDispose = states.Changes.Length;

        // Nothing is left to raise anything: a short look for stragglers (negative check; no event to await).
        await Task.Delay(300);
        Assert.Equal(atDispose, states.Changes.Length);
        states.AssertConsistent();
        Assert.Equal(
            [PushChannelState.Reconnecting, PushChannelState.Connected, PushChannelState.Reconnecting, PushChannelState.Closed],
            states.Changes.Select(c => c.CurrentState));
        Assert.Equal(0, dropped);

        // §3.6: "During a reconnect it stops the reconnect within the close grace (2 s)".
        Assert.True(disposeTook < TimeSpan.FromSeconds(3), $"DisposeAsync while Reconnecting took {disposeTook}.");
    }

    /// <summary>§3.6: a handler may dispose the channel synchronously; Closed is reported once, after the handler returns, and nothing follows.</summary>
    [Fact]
    public async Task a_Reconnecting_handler_that_disposes_synchronously_gets_Closed_once_and_no_Connected()
    {
        await using var server = await PushTestServer.StartAsync();
        await using var proxy = new ChaosProxy(server.Root);
        var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o =>
        {
            Only(o, "websocket");
            FastReconnect(o);
        }).Build();
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var states = new StateLog(client);
        var closed = client.NextStateAsync(PushChannelState.Closed);
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                ((IDisposable)client).Dispose();
            }
        };
        proxy.CutAll();
        await closed.WaitAsync(TestTimeouts.Default);
        await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);

        // Nothing may be raised after Closed: a short look for stragglers (an absence; no event to await).
        await Task.Delay(300);
        states.AssertConsistent();
        Assert.Equal([PushChannelState.Reconnecting, PushChannelState.Closed], states.Changes.Select(c => c.CurrentState));
    }

    /// <summary>
    /// Under the server's DropOldest, a client that was away hears of the gap once per skip; a MessagesDropped handler
    /// that disposes the channel synchronously (documented as allowed) does not hang, and nothing is raised after Closed.
    /// </summary>
    [Fact]
    public async Task a_MessagesDropped_handler_that_disposes_synchronously_ends_the_channel_once()
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.BufferFullPolicy = PushBufferFullPolicy.DropOldest;
            o.MaxBufferedMessagesPerSession = 5;
        });
        await using var proxy = new ChaosProxy(server.Root);
        var client = new PushChannelBuilder().WithUrl(proxy.PushUrl).Configure(o =>
        {
            Only(o, "websocket");
            FastReconnect(o);
        }).Build();
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        var states = new StateLog(client);
        var drops = new ConcurrentQueue<(long Count, PushChannelState State)>();
        var droppedOnce = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        client.MessagesDropped += (_, e) =>
        {
            drops.Enqueue((e.Count, client.State));
            droppedOnce.TrySetResult();
            ((IDisposable)client).Dispose();
        };

        proxy.RefuseNew = true;
        var reconnecting = client.NextStateAsync(PushChannelState.Reconnecting);
        proxy.CutAll();
        await reconnecting.WaitAsync(TestTimeouts.Default);
        var session = server.Sessions.FindSession(client.SessionId!)!;
        await session.WaitForStateAsync(PushChannelState.Disconnected);
        for (var i = 0; i < 20; i++)
        {
            await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("m" + i));
        }

        var closed = client.NextStateAsync(PushChannelState.Closed);
        proxy.RefuseNew = false;
        await droppedOnce.Task.WaitAsync(TestTimeouts.Default);
        await closed.WaitAsync(TestTimeouts.Default);
        await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);

        // Nothing may be raised after Closed: a short look for stragglers (an absence; no event to await).
        await Task.Delay(300);
        states.AssertConsistent();
        Assert.Single(drops);
        Assert.Equal(15, drops.Single().Count);
    }
}

/// <summary>AccessTokenProvider failures on a live session's requests, and their tasks: process-wide checks.</summary>
[Collection(GlobalEventsCollection.Name)]
public class ClientTokenUnobservedTests
{
    /// <summary>
    /// A token provider that throws once on an HTTP transport's mid-session request (a send's POST, or a poll) costs
    /// that connection only: the channel reconnects and resumes, the send completes, nothing is lost, and no task
    /// exception goes unobserved.
    /// </summary>
    [Theory]
    [InlineData("sse")]
    [InlineData("longpolling")]
    public async Task a_token_provider_that_throws_on_a_mid_session_request_costs_one_connection_and_loses_nothing(string transport)
    {
        using var unobserved = new UnobservedExceptions();
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(p => p.AddCollector(collector));
        var failNext = 0;
        var client = await server.ConnectClientAsync(transport, o =>
        {
            o.ReconnectDelay = TimeSpan.FromMilliseconds(50);
            o.MaxReconnectDelay = TimeSpan.FromMilliseconds(200);
            o.AccessTokenProvider = _ => Interlocked.Exchange(ref failNext, 0) == 1
                ? throw new InvalidOperationException("token refresh failed (test)")
                : ValueTask.FromResult<string?>("ok");
        });
        await client.SendStringAsync("first").AsTask().WaitAsync(TestTimeouts.Default);
        var changes = new ConcurrentQueue<PushChannelStateChangedEventArgs>();
        client.StateChanged += (_, e) => changes.Enqueue(e);
        var back = client.NextChangeAsync(e => e.CurrentState == PushChannelState.Connected);

        Volatile.Write(ref failNext, 1);
        var send = client.SendStringAsync("second").AsTask();
        await send.WaitAsync(TestTimeouts.Default);
        await client.SendStringAsync("third").AsTask().WaitAsync(TestTimeouts.Default);
        Assert.Equal(["first", "second", "third"], (await collector.TakeAsync(3)).Select(m => m.GetString()));

        await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("down"));
        Assert.Equal("down", (await client.ReadAsync(1))[0].GetString());
        Assert.Equal(0, Volatile.Read(ref failNext));

        // The failure cost the connection: it was lost and resumed, and the Reconnecting change says why.
        var resumed = await back.WaitAsync(TestTimeouts.Default);
        Assert.StartsWith("Resumed:", resumed.Reason, StringComparison.Ordinal);
        var lost = changes.First(c => c.CurrentState == PushChannelState.Reconnecting);
        Assert.DoesNotContain(changes, c => c.CurrentState is PushChannelState.Disconnected or PushChannelState.Closed);
        await client.DisposeAsync();

        var seen = await unobserved.CollectAsync(e => e.InnerExceptions.Any(i => i.Message.Contains("(test)", StringComparison.Ordinal)));
        Assert.DoesNotContain(seen, e => e.InnerExceptions.Any(i => i.Message.Contains("(test)", StringComparison.Ordinal) || i is PushException));
        Assert.True(
            lost.Reason?.Contains("token refresh failed", StringComparison.Ordinal) == true || lost.Exception?.ToString().Contains("token refresh failed", StringComparison.Ordinal) == true,
            $"The Reconnecting change does not say why the connection was lost: reason '{lost.Reason}', exception '{lost.Exception?.GetType().Name}: {lost.Exception?.Message}'.");
    }

    /// <summary>A failed first connect (token provider throwing) leaves no unobserved task exception behind.</summary>
    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task a_token_provider_failing_in_the_transport_handshake_leaves_no_unobserved_task_exception(string transport)
    {
        using var unobserved = new UnobservedExceptions();
        await using var server = await PushTestServer.StartAsync();
        var calls = 0;

        // Call 1 is negotiate; call 2 is the transport's own request (the WebSocket handshake, the SSE request, the first poll).
        var client = server.CreateClient(o =>
        {
            o.Transports.Clear();
            o.Transports.Add(Transports.ByName(transport));
            o.AccessTokenProvider = _ => Interlocked.Increment(ref calls) == 2
                ? throw new InvalidOperationException("handshake token failed (test)")
                : ValueTask.FromResult<string?>("ok");
        });
        var error = await Record.ExceptionAsync(() => client.ConnectAsync().WaitAsync(TestTimeouts.Default));
        Assert.NotNull(error);
        Assert.Equal(PushChannelState.Disconnected, client.State);
        await client.ConnectAsync().WaitAsync(TestTimeouts.Default);
        await client.SendStringAsync("ok").AsTask().WaitAsync(TestTimeouts.Default);
        await client.DisposeAsync();
        var seen = await unobserved.CollectAsync(e => e.InnerExceptions.Any(i => i.Message.Contains("(test)", StringComparison.Ordinal)));
        Assert.DoesNotContain(seen, e => e.InnerExceptions.Any(i => i.Message.Contains("(test)", StringComparison.Ordinal)));
        Assert.True(error is PushConnectException, $"Expected PushConnectException, got {error!.GetType().FullName}: {error.Message}");
    }
}
