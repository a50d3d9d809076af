using Microsoft.Extensions.Hosting;

namespace PushKit.Server.Sessions;

/// <summary>
/// Expires sessions whose resume window has passed, and on host shutdown tells every connected client to go
/// away (<see cref="PushCloseCode.GoingAway"/>).
/// </summary>
internal sealed class PushSessionHousekeeper(PushSessionManager sessions, TimeProvider timeProvider, IHostApplicationLifetime lifetime)
    : BackgroundService, IHostedLifecycleService
{
    private CancellationTokenRegistration _stopping;
    private PeriodicTimer? _sweep;

    /// <summary>How often expiry is checked: a session lives at most this much past its resume window.</summary>
    internal static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(1);

    /// <summary>How long the host's stop waits for connections to deliver their close before the web server stops.</summary>
    internal static readonly TimeSpan CloseOnStopTimeout = TimeSpan.FromSeconds(5);

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>
    /// Runs before any hosted service stops, the web server included: every connection is asked to close with
    /// <see cref="PushCloseCode.GoingAway"/>, and the stop waits (at most <see cref="CloseOnStopTimeout"/>) until they
    /// have. A long-polling client collects its close with its next poll, and a web server that is stopping refuses
    /// new requests: without the wait, a client between two polls would see a broken connection instead of 1001.
    /// </summary>
    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        sessions.GoAway();
        var runs = sessions.All().Select(s => s.CurrentRun).OfType<Task>().ToArray();
        if (runs.Length == 0)
        {
            return;
        }

        // Not on the application's clock: shutdown is bounded in real time, whatever clock the sessions run on. A
        // connection that has not closed by then is cut by the web server's own shutdown.
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        await Task.WhenAny(Task.WhenAll(runs), Task.Delay(CloseOnStopTimeout, TimeProvider.System, bound.Token)).ConfigureAwait(false);
        await bound.CancelAsync().ConfigureAwait(false);
    }

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override Task StartAsync(CancellationToken cancellationToken)
    {
        // The sweep's timer exists once the host has started: ExecuteAsync may run later, on the thread pool (it does on
        // .NET 10), and a timer made there would start late, or, on a test's fake clock, miss a move made before it.
        _sweep = new PeriodicTimer(SweepInterval, timeProvider);
        // ApplicationStopping fires before the web server stops: connections can still be told to go away cleanly.
        _stopping = lifetime.ApplicationStopping.Register(sessions.GoAway);
        return base.StartAsync(cancellationToken);
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        sessions.GoAway();
        await _stopping.DisposeAsync().ConfigureAwait(false);
        await base.StopAsync(cancellationToken).ConfigureAwait(false);
        _sweep?.Dispose();
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = _sweep!;
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
            {
                sessions.ExpireIdleSessions();
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }
}
