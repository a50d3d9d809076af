using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>A session that ends while a client message waits for room in the application's queue logs no error.</summary>
public class SessionEndLogTests
{
    [Fact]
    public async Task A_slow_consumer_ended_while_its_message_waits_for_the_application_queue_logs_no_error()
    {
        // No handler (the application reads with ReadAllAsync, and does not yet); small bounds to get there quickly.
        await using var server = await PushTestServer.StartAsync(
            options: o =>
            {
                o.InboundQueueCapacity = 2;
                o.MaxBufferedMessagesPerSession = 3;
            },
            configureBuilder: b =>
            {
                b.Logging.SetMinimumLevel(LogLevel.Debug);
                b.Services.AddFakeLogging();
            });
        var logs = server.Services.GetFakeLogCollector();
        await using var raw = await server.ConnectRawAsync();
        await raw.SendAsync(string.Concat(Enumerable.Range(1, 20).Select(i => $"{{\"type\":\"msg\",\"seq\":{i},\"data\":\"m{i}\"}}\n")));
        var session = (PushSession)server.Sessions.FindSession(raw.SessionId)!;
        await Eventually.TrueAsync(() => session.Engine.ReceivedThrough == 20);

        // The client never acknowledges: the fourth message fills its buffer and ends the session (4429).
        for (var i = 0; i < 5; i++)
        {
            await server.Sender.SendToSessionAsync(raw.SessionId, PushMessage.FromString($"down{i}")).AsTask().WaitAsync(TestTimeouts.Default);
        }

        Assert.Equal(4429, (await raw.ReceiveCloseAsync()).Status);
        await Eventually.TrueAsync(() => logs.GetSnapshot().Any(r => r.Id.Id is 6 or 9));
        Assert.DoesNotContain(logs.GetSnapshot(), r => r.Level >= LogLevel.Error);
    }
}
