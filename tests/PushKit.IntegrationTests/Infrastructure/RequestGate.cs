using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>
/// Holds the next request to a path at the server until released, and says when that request has been answered in
/// full (for a WebSocket request: when its connection has ended).
/// </summary>
public sealed class RequestGate(string path)
{
    private int _armed;

    public TaskCompletionSource Arrived { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TaskCompletionSource Completed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Holds the next request to the path.</summary>
    public void Arm() => Volatile.Write(ref _armed, 1);

    public void Install(WebApplication app) => app.Use(async (HttpContext context, RequestDelegate next) =>
    {
        if (!context.Request.Path.Equals(path, StringComparison.Ordinal) || Interlocked.Exchange(ref _armed, 0) != 1)
        {
            await next(context);
            return;
        }

        Arrived.TrySetResult();
        try
        {
            await Release.Task.WaitAsync(TestTimeouts.Default);
            await next(context);
        }
        finally
        {
            Completed.TrySetResult();
        }
    });
}

/// <summary>Records a channel's state changes in the order one subscriber sees them.</summary>
public sealed class StateLog
{
    private readonly System.Collections.Concurrent.ConcurrentQueue<PushChannelStateChangedEventArgs> _changes = new();

    public StateLog(IPushChannel channel) => channel.StateChanged += (_, e) => _changes.Enqueue(e);

    public string Describe() => string.Join(", ", _changes.Select(c => $"{c.PreviousState}->{c.CurrentState}"));

    /// <summary>Every change starts where the previous one ended, and nothing follows Closed.</summary>
    public void AssertConsistent()
    {
        var changes = _changes.ToArray();
        for (var i = 1; i < changes.Length; i++)
        {
            Assert.True(changes[i].PreviousState == changes[i - 1].CurrentState, "Out of order: " + Describe());
            Assert.True(changes[i - 1].CurrentState != PushChannelState.Closed, "A change after Closed: " + Describe());
        }
    }
}
