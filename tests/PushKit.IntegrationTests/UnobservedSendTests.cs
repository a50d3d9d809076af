using System.Runtime.CompilerServices;
using Microsoft.Extensions.DependencyInjection;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// A send whose caller stopped waiting (its token, or <c>AckTimeout</c>) and that fails later (the channel closes) must
/// not surface as <see cref="TaskScheduler.UnobservedTaskException"/>: the engine fails a completion nobody awaits any
/// more. Runs alone, since the event is process-wide.
/// </summary>
[Collection(GlobalEventsCollection.Name)]
public class UnobservedSendTests
{
    private static readonly TimeSpan s_longAckTimeout = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData("cancelled")]
    [InlineData("timed out")]
    public async Task A_send_whose_wait_ended_leaves_no_unobserved_task_exception_when_the_channel_then_closes(string how)
    {
        var arrived = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(push => push.OnMessage(async (_, _, token) =>
        {
            // The server never acknowledges: the handler holds the message until the session ends.
            arrived.TrySetResult();
            await Task.Delay(Timeout.Infinite, token);
        }));
        var client = await server.ConnectClientAsync("websocket", o => o.AckTimeout = how == "timed out" ? TimeSpan.FromMilliseconds(300) : s_longAckTimeout);
        using var unobserved = new UnobservedExceptions();

        await SendAndStopWaitingAsync(client, how);
        await arrived.Task.WaitAsync(TestTimeouts.Default);

        // The ended wait lets go of the send's completion a moment after the caller saw the exception (Task.WaitAsync
        // unregisters after completing its own task); an application closes much later than that.
        await Task.Delay(200);

        // The message stays queued (documented); closing the channel fails it, with nobody left to observe that.
        await client.CloseAsync().WaitAsync(TestTimeouts.Default);

        var leaked = (await unobserved.CollectAsync(IsPushKits)).Where(IsPushKits).ToList();
        Assert.True(leaked.Count == 0, "Unobserved task exceptions after the close: " + string.Join(Environment.NewLine, leaked.Select(e => e.InnerException)));
    }

    private static bool IsPushKits(AggregateException e) => e.InnerExceptions.Any(i => i is PushException);

    // Kept out of the test method so that nothing on its frame keeps the send's task alive for the GC.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static async Task SendAndStopWaitingAsync(IPushChannel client, string how)
    {
        if (how == "cancelled")
        {
            using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.SendStringAsync("held", cancel.Token).AsTask().WaitAsync(TestTimeouts.Default));
        }
        else
        {
            await Assert.ThrowsAsync<PushAckTimeoutException>(() => client.SendStringAsync("held").AsTask().WaitAsync(TestTimeouts.Default));
        }
    }
}
