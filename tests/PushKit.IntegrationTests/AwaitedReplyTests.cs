using Microsoft.Extensions.DependencyInjection;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;

namespace PushKit.IntegrationTests;

/// <summary>
/// An application that answers each message with an acknowledged send, and awaits the acknowledgement before it takes
/// the next message, keeps up with a burst from the peer: the acknowledgement arrives behind the burst, and the
/// receiving side reads on to reach it instead of stopping at the 64 messages it otherwise queues.
/// </summary>
public class AwaitedReplyTests
{
    private const int Burst = 300;

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_server_handler_that_awaits_an_acknowledged_reply_to_each_message_keeps_up_with_a_burst(string transport)
    {
        var failures = new ReplyingHandler.Failures();
        await using var server = await PushTestServer.StartAsync(
            push =>
            {
                push.Services.AddSingleton(failures);
                push.AddHandler<ReplyingHandler>();
            },
            // The stalled reply used to fail only when this ran out; far below the test's own timeout, so that a stall
            // shows as the handler's failure.
            o => o.AckTimeout = TimeSpan.FromSeconds(10));
        var client = await server.ConnectClientAsync(transport);

        // The client sends the whole burst at once, without awaiting each acknowledgement.
        var sends = Enumerable.Range(1, Burst).Select(i => client.SendStringAsync($"m{i}").AsTask()).ToList();

        var replies = client.ReadAsync(Burst);
        var first = await Task.WhenAny(replies, failures.First.Task).WaitAsync(TestTimeouts.Default);
        if (first == failures.First.Task)
        {
            Assert.Fail($"A reply failed: {(await failures.First.Task).Message}");
        }

        Assert.Equal(Enumerable.Range(1, Burst).Select(i => $"re:m{i}"), (await replies).Select(m => m.GetString()));
        await Task.WhenAll(sends).WaitAsync(TestTimeouts.Default);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_client_that_awaits_an_acknowledged_reply_to_each_message_keeps_up_with_a_burst(string transport)
    {
        // More than the client queues for its reader (1,024) and its delivery loop (64) together.
        const int burst = 1_500;
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport, o => o.AckTimeout = TimeSpan.FromSeconds(10));
        var session = server.Sessions.FindSession(client.SessionId!)!;

        for (var i = 1; i <= burst; i++)
        {
            Assert.True(await server.Sender.SendToSessionAsync(session.SessionId, PushMessage.FromString($"m{i}")));
        }

        // The client's application answers each message, and awaits the acknowledgement before it reads the next.
        using var cts = new CancellationTokenSource(TestTimeouts.Default);
        var answered = 0;
        await foreach (var message in client.ReadAllAsync(cts.Token))
        {
            await client.SendStringAsync("re:" + message.GetString(), cts.Token);
            if (++answered == burst)
            {
                break;
            }
        }

        Assert.Equal(Enumerable.Range(1, burst).Select(i => $"re:m{i}"), (await collector.TakeAsync(burst)).Select(m => m.GetString()));
    }

    private sealed class ReplyingHandler(ReplyingHandler.Failures failures) : PushHandler
    {
        public override async ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken)
        {
            try
            {
                await session.SendAsync(PushMessage.FromString("re:" + message.GetString()), cancellationToken);
            }
            catch (Exception ex)
            {
                failures.First.TrySetResult(ex);
                throw;
            }
        }

        public sealed class Failures
        {
            public TaskCompletionSource<Exception> First { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
    }
}
