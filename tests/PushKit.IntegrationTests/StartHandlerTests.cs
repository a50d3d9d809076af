using Microsoft.Extensions.DependencyInjection;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// <see cref="PushHandler.OnSessionStartedAsync"/> runs while the session's first connection already carries it: the
/// handler can await an acknowledged send (a welcome, the history), and the client's messages wait until it returns.
/// </summary>
public class StartHandlerTests
{
    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_start_handler_can_await_an_acknowledged_send_to_its_session(string transport)
    {
        var welcome = new WelcomeHandler.Outcome();

        // The send used to wait for its ack until AckTimeout: the connection started only after the handler.
        await using var server = await StartWelcomeServerAsync(welcome);

        var client = await server.ConnectClientAsync(transport);

        var received = await client.ReadAsync(1);
        Assert.Equal("welcome", received[0].GetString());
        await welcome.Sent.Task.WaitAsync(TestTimeouts.Default);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_client_message_that_arrives_during_the_start_handler_is_handled_after_it_returns(string transport)
    {
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var collector = new Collector { HoldStart = hold };
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        var session = (PushSession)await collector.Started.Task.WaitAsync(TestTimeouts.Default);

        // The message reaches the session while the start handler still runs, and waits there.
        var send = client.SendStringAsync("first").AsTask();
        await Eventually.TrueAsync(() => session.Engine.ReceivedThrough >= 1);
        Assert.Equal(0, collector.Count);
        Assert.False(send.IsCompleted);

        hold.SetResult();
        await send.WaitAsync(TestTimeouts.Default);
        Assert.Equal(["first"], (await collector.TakeAsync(1)).Select(m => m.GetString()));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_client_message_waiting_for_a_start_handler_that_turns_the_client_away_is_never_handled(string transport)
    {
        var hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var collector = new Collector { HoldStart = hold };
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        var closed = client.NextStateAsync(PushChannelState.Closed);
        var session = (PushSession)await collector.Started.Task.WaitAsync(TestTimeouts.Default);
        _ = client.SendStringAsync("first").AsTask();
        await Eventually.TrueAsync(() => session.Engine.ReceivedThrough >= 1);

        // The handler turns the client away, then returns.
        await session.CloseAsync();
        hold.SetResult();

        Assert.Equal(PushCloseCode.Normal, (await closed.WaitAsync(TestTimeouts.Default)).CloseCode);

        // Once the connection's run is over, its deliveries are too: the message was not handed over.
        await Eventually.TrueAsync(() => session.CurrentRun is null);
        Assert.Equal(0, collector.Count);
    }

    [Fact]
    public async Task A_start_handler_s_token_is_cancelled_when_the_session_ends_not_when_its_connection_is_lost()
    {
        var probe = new TokenProbeHandler.Probe();
        await using var server = await PushTestServer.StartAsync(push =>
        {
            push.Services.AddSingleton(probe);
            push.AddHandler<TokenProbeHandler>();
        });
        var (id, secret, _) = await server.NegotiateRawAsync();
        var socket = await RawSocket.ConnectAsync(server.WebSocketUrl(id, secret), id, secret);
        var token = await probe.Token.Task.WaitAsync(TestTimeouts.Default);
        var session = (PushSession)server.Sessions.FindSession(id)!;

        // The connection is lost: the session goes on, and so does the handler's work.
        socket.Socket.Abort();
        await socket.DisposeAsync();
        await Eventually.TrueAsync(() => session.State == PushChannelState.Disconnected);
        Assert.False(token.IsCancellationRequested);

        // The session ends: the handler is told to stop.
        await session.CloseAsync();
        await probe.Stopped.Task.WaitAsync(TestTimeouts.Default);
        Assert.True(token.IsCancellationRequested);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_start_handler_still_running_when_the_session_ends_is_told_to_stop(string transport)
    {
        // On long-polling the handler used to get no token at all (CancellationToken.None).
        var probe = new TokenProbeHandler.Probe();
        await using var server = await PushTestServer.StartAsync(push =>
        {
            push.Services.AddSingleton(probe);
            push.AddHandler<TokenProbeHandler>();
        });
        var client = await server.ConnectClientAsync(transport);
        var token = await probe.Token.Task.WaitAsync(TestTimeouts.Default);
        Assert.False(token.IsCancellationRequested);

        await server.Sessions.FindSession(client.SessionId!)!.CloseAsync();

        await probe.Stopped.Task.WaitAsync(TestTimeouts.Default);
        Assert.True(token.IsCancellationRequested);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_start_handler_gets_the_acknowledgement_of_its_send_behind_a_burst_the_client_sent_meanwhile(string transport)
    {
        const int burst = 300;
        var welcome = new WelcomeHandler.Outcome { Hold = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = await StartWelcomeServerAsync(welcome);
        var client = await server.ConnectClientAsync(transport);
        var session = (PushSession)server.Sessions.FindSession(client.SessionId!)!;

        // The client's burst waits for the start handler, and the connection stops reading with 64 of it queued.
        var sends = Enumerable.Range(1, burst).Select(i => client.SendStringAsync($"m{i}").AsTask()).ToList();
        await Eventually.TrueAsync(() => session.Engine.IsReadPaused && session.Engine.ReceivedThrough > 64);

        // The handler now sends and awaits the acknowledgement, which the client wrote behind the rest of its burst.
        welcome.Hold.SetResult();
        await welcome.Sent.Task.WaitAsync(TestTimeouts.Default);
        Assert.Equal("welcome", (await client.ReadAsync(1))[0].GetString());
        await Task.WhenAll(sends).WaitAsync(TestTimeouts.Default);
        Assert.Equal(Enumerable.Range(1, burst).Select(i => $"m{i}"), welcome.Received.Select(m => m.GetString()));
    }

    /// <summary>
    /// A server whose start handler sends a welcome and awaits its ack; a stalled ack fails the handler after 10 s, well
    /// within the tests' own timeouts.
    /// </summary>
    private static Task<PushTestServer> StartWelcomeServerAsync(WelcomeHandler.Outcome welcome) =>
        PushTestServer.StartAsync(
            push =>
            {
                push.Services.AddSingleton(welcome);
                push.AddHandler<WelcomeHandler>();
            },
            o => o.AckTimeout = TimeSpan.FromSeconds(10));

    private sealed class TokenProbeHandler(TokenProbeHandler.Probe probe) : PushHandler
    {
        public override async ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken)
        {
            probe.Token.TrySetResult(cancellationToken);
            try
            {
                await Task.Delay(Timeout.Infinite, cancellationToken);
            }
            finally
            {
                probe.Stopped.TrySetResult();
            }
        }

        public sealed class Probe
        {
            public TaskCompletionSource<CancellationToken> Token { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

            public TaskCompletionSource Stopped { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
    }

    private sealed class WelcomeHandler(WelcomeHandler.Outcome outcome) : PushHandler
    {
        public override async ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken)
        {
            try
            {
                if (outcome.Hold is { } hold)
                {
                    await hold.Task.WaitAsync(TestTimeouts.Default, cancellationToken);
                }

                await session.SendAsync(PushMessage.FromString("welcome"), cancellationToken);
                outcome.Sent.TrySetResult();
            }
            catch (Exception ex)
            {
                outcome.Sent.TrySetException(ex);
            }
        }

        public override ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken)
        {
            // Messages are handed over one at a time, in order.
            outcome.Received.Add(message);
            return default;
        }

        public sealed class Outcome
        {
            /// <summary>When set, the start handler waits for it before it sends.</summary>
            public TaskCompletionSource? Hold { get; init; }

            public TaskCompletionSource Sent { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

            public List<PushMessage> Received { get; } = [];
        }
    }
}
