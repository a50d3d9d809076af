using System.Diagnostics;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// A process that could not run for a while (a long garbage collection pause, a suspended virtual machine, a starved
/// thread pool) must not drop its healthy connections the moment it resumes: the silence was its own, and what the
/// peers sent meanwhile is waiting in the socket buffers. Here the whole thread pool is blocked for a second (server
/// and client share the process, so both stall), under the shortest accepted heartbeat (100 ms, timeout 160 ms).
/// </summary>
[Collection(GlobalEventsCollection.Name)]
public class ProcessStallTests
{
    private static readonly TimeSpan s_stall = TimeSpan.FromSeconds(1);

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task A_process_that_stalled_for_a_second_keeps_its_healthy_connections(string transport)
    {
        await using var server = await PushTestServer.StartAsync(options: o =>
        {
            o.HeartbeatInterval = TimeSpan.FromMilliseconds(100);
            o.HeartbeatTimeout = TimeSpan.FromMilliseconds(160);
        });
        var client = await server.ConnectClientAsync(transport);
        var changes = new List<string>();
        client.StateChanged += (_, e) =>
        {
            lock (changes)
            {
                changes.Add($"{e.CurrentState} {e.CloseCode} {e.Reason}");
            }
        };

        var stalled = await StallThreadPoolAsync(s_stall);
        Assert.True(stalled >= s_stall * 0.8, $"the thread pool was meant to be stalled for {s_stall}, but work ran after {stalled}");

        // Ten intervals of running time after the stall: a connection taken for dead would be dropped (4408) in this
        // time, and nothing else happens that an event could signal, so this waits.
        await Task.Delay(TimeSpan.FromSeconds(1));
        lock (changes)
        {
            Assert.True(changes.Count == 0, "a healthy connection was dropped after the process stalled: " + string.Join("; ", changes));
        }

        // And it carries messages as before.
        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, PushMessage.FromString("after the stall")).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal("after the stall", (await client.ReadAsync(1)).Single().GetString());
        await client.DisposeAsync().AsTask().WaitAsync(TestTimeouts.Default);
    }

    /// <summary>
    /// Blocks every thread-pool thread, and the ones the pool adds meanwhile, for <paramref name="stall"/>; returns how
    /// long a work item queued at the start waited to run.
    /// </summary>
    private static async Task<TimeSpan> StallThreadPoolAsync(TimeSpan stall)
    {
        // Not disposed: blocked threads may still be leaving Wait after the marker ran.
        var release = new ManualResetEventSlim();
        var blockers = ThreadPool.ThreadCount + 64;
        for (var i = 0; i < blockers; i++)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static state => ((ManualResetEventSlim)state!).Wait(), release);
        }

        var watch = Stopwatch.StartNew();
        var marker = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
        ThreadPool.UnsafeQueueUserWorkItem(_ => marker.SetResult(watch.Elapsed), null);
        var releaser = new Thread(() =>
        {
            Thread.Sleep(stall);
            release.Set();
        })
        {
            IsBackground = true,
            Name = "stall releaser",
        };
        releaser.Start();
        return await marker.Task.WaitAsync(TestTimeouts.Default);
    }
}
