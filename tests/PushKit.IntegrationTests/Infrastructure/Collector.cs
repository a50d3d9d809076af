using System.Threading.Channels;
using Microsoft.Extensions.DependencyInjection;
using PushKit.Server;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>Collects what server-side handlers see, so tests can await it.</summary>
public sealed class Collector
{
    private readonly Channel<(IPushSession Session, PushMessage Message)> _messages = Channel.CreateUnbounded<(IPushSession, PushMessage)>();

    public List<(IPushSession Session, PushMessage Message)> All { get; } = [];

    public TaskCompletionSource<PushCloseCode> Ended { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public TaskCompletionSource<IPushSession> Started { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>What <see cref="IPushSession.Transport"/> said inside <c>OnSessionStartedAsync</c>.</summary>
    public TaskCompletionSource<string?> TransportAtStart { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>When set, <c>OnSessionStartedAsync</c> waits for it: the session's first connection is held mid-attach.</summary>
    public TaskCompletionSource? HoldStart { get; init; }

    public ValueTask AddAsync(IPushSession session, PushMessage message)
    {
        lock (All)
        {
            All.Add((session, message));
        }

        return _messages.Writer.WriteAsync((session, message));
    }

    public async Task<List<PushMessage>> TakeAsync(int count)
    {
        using var cts = new CancellationTokenSource(TestTimeouts.Default);
        var result = new List<PushMessage>(count);
        while (result.Count < count)
        {
            result.Add((await _messages.Reader.ReadAsync(cts.Token)).Message);
        }

        return result;
    }

    public int Count
    {
        get
        {
            lock (All)
            {
                return All.Count;
            }
        }
    }
}

/// <summary>A handler that records everything into the <see cref="Collector"/> singleton.</summary>
public sealed class CollectingHandler(Collector collector) : PushHandler
{
    public override ValueTask OnSessionStartedAsync(IPushSession session, CancellationToken cancellationToken)
    {
        collector.TransportAtStart.TrySetResult(session.Transport);
        collector.Started.TrySetResult(session);
        return collector.HoldStart is { } hold ? new ValueTask(hold.Task.WaitAsync(TestTimeouts.Default, cancellationToken)) : default;
    }

    public override ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken)
    {
        if (message.Topic == "throw")
        {
            throw new InvalidOperationException("handler failure requested by the test");
        }

        return collector.AddAsync(session, message);
    }

    public override ValueTask OnSessionEndedAsync(IPushSession session, PushCloseCode closeCode)
    {
        collector.Ended.TrySetResult(closeCode);
        return default;
    }
}

public static class CollectorExtensions
{
    public static IPushKitServerBuilder AddCollector(this IPushKitServerBuilder builder, Collector collector)
    {
        Microsoft.Extensions.DependencyInjection.ServiceCollectionServiceExtensions.AddSingleton(builder.Services, collector);
        return builder.AddHandler<CollectingHandler>();
    }
}
