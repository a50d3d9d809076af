using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>
/// A <see cref="PushHandler"/> is resolved from a new DI scope for each call. When creating it throws (its constructor
/// or a dependency's), or disposing its scope throws, that is the application's failure like a handler that throws:
/// it is logged (event 26), the session carries on over the same connection, and the message counts as delivered. It
/// used to escape: the connection was cut, the client replayed the message, and it failed again, for ever; and when
/// it happened at the first negotiation, no client could ever connect again.
/// </summary>
public class HandlerResolutionTests
{
    private static readonly TimeSpan SendTimeout = TimeSpan.FromSeconds(10);

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_handler_that_cannot_be_created_is_logged_and_the_session_carries_on_over_its_connection(string transport)
    {
        var probe = new Probe { FailConstruction = true };
        await using var server = await StartAsync(probe);
        var logs = server.Services.GetFakeLogCollector();

        // Failing from the start: the first negotiation asks whether any handler is registered.
        var client = await server.ConnectClientAsync(transport);
        var reconnects = CountReconnects(client);

        await client.SendStringAsync("lost").AsTask().WaitAsync(SendTimeout);
        Assert.Contains(logs.GetSnapshot(), r => r.Id.Id == 26 && r.Level == LogLevel.Error && r.Message.Contains("OnMessageAsync", StringComparison.Ordinal));

        probe.FailConstruction = false;
        await client.SendStringAsync("handled").AsTask().WaitAsync(SendTimeout);

        Assert.Equal(["handled"], probe.Received);
        Assert.Equal(0, reconnects.Value);
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_handler_scope_that_fails_to_dispose_is_logged_and_its_message_is_handled_once(string transport)
    {
        var probe = new Probe { FailDispose = true };
        await using var server = await StartAsync(probe);
        var logs = server.Services.GetFakeLogCollector();
        var client = await server.ConnectClientAsync(transport);
        var reconnects = CountReconnects(client);

        await client.SendStringAsync("one").AsTask().WaitAsync(SendTimeout);
        await client.SendStringAsync("two").AsTask().WaitAsync(SendTimeout);

        Assert.Equal(["one", "two"], probe.Received);
        Assert.Contains(logs.GetSnapshot(), r => r.Id.Id == 26 && r.Level == LogLevel.Error);
        Assert.Equal(0, reconnects.Value);
    }

    private static StrongBox<int> CountReconnects(IPushChannel client)
    {
        var count = new StrongBox<int>();
        client.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Reconnecting)
            {
                Interlocked.Increment(ref count.Value);
            }
        };
        return count;
    }

    internal static Task<PushTestServer> StartAsync(Probe probe) =>
        PushTestServer.StartAsync(
            push =>
            {
                push.Services.AddSingleton(probe);
                push.Services.AddScoped<ScopedDependency>();
                push.AddHandler<ProbeHandler>();
            },
            configureBuilder: b => b.Services.AddFakeLogging());

    internal sealed class Probe
    {
        private readonly ConcurrentQueue<string> _received = new();

        public volatile bool FailConstruction;

        public volatile bool FailDispose;

        public string[] Received => [.. _received];

        public void Add(string text) => _received.Enqueue(text);
    }

    /// <summary>A scoped dependency of the handler, whose disposal can fail.</summary>
    internal sealed class ScopedDependency(Probe probe) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() =>
            probe.FailDispose ? throw new InvalidOperationException("test: a scoped dependency that fails to dispose") : default;
    }

    internal sealed class ProbeHandler : PushHandler
    {
        private readonly Probe _probe;

        public ProbeHandler(Probe probe, ScopedDependency dependency)
        {
            ArgumentNullException.ThrowIfNull(dependency);
            if (probe.FailConstruction)
            {
                throw new InvalidOperationException("test: a handler whose constructor throws");
            }

            _probe = probe;
        }

        public override ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken)
        {
            _probe.Add(message.GetString());
            return default;
        }
    }
}

/// <summary>
/// The same failure when the session ends: nobody awaits the end handlers, so what escaped them was an unobserved
/// task exception. Runs alone, because it watches <see cref="TaskScheduler.UnobservedTaskException"/>.
/// </summary>
[Collection(GlobalEventsCollection.Name)]
public class EndHandlerResolutionTests
{
    [Fact]
    public async Task An_end_handler_that_cannot_be_created_is_logged_not_left_unobserved()
    {
        var probe = new HandlerResolutionTests.Probe();
        await using var server = await HandlerResolutionTests.StartAsync(probe);
        var logs = server.Services.GetFakeLogCollector();
        using var unobserved = new UnobservedExceptions();

        var client = await server.ConnectClientAsync("websocket");
        probe.FailConstruction = true;
        await client.CloseAsync().WaitAsync(TestTimeouts.Default);

        await Eventually.TrueAsync(() => logs.GetSnapshot().Any(r => r.Id.Id == 26 && r.Message.Contains("OnSessionEndedAsync", StringComparison.Ordinal)));
        var leaked = (await unobserved.CollectAsync(IsOurs)).Where(IsOurs).ToList();
        Assert.True(leaked.Count == 0, "Unobserved task exceptions: " + string.Join(Environment.NewLine, leaked.Select(e => e.InnerException)));
    }

    private static bool IsOurs(AggregateException e) =>
        e.Flatten().InnerExceptions.Any(x => x.ToString().Contains("test: a handler whose constructor throws", StringComparison.Ordinal));
}
