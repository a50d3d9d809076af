using Microsoft.Extensions.Hosting;

namespace PushKit.Server.Sessions;

/// <summary>
/// Expires sessions whose resume window has passed, and on host shutdown tells every connected client to go
/// away (<see cref="PushCloseCode.GoingAway"/>).
/// </summary>
internal sealed class PushSessionHousekeeper(PushSessionManager sessions, TimeProvider timeProvider, IHostApplicationLifetime lifetime) : BackgroundService
{
    private CancellationTokenRegistration _stopping;

    /// <summary>How often expiry is checked: a session lives at most this much past its resume window.</summary>
    internal static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(1);

    public override Task StartAsync(CancellationToken cancellationToken)
    {
        // ApplicationStopping fires before the web server stops: connections can still be told to go away cleanly.
        _stopping = lifetime.ApplicationStopping.Register(GoingAway);
        return base.StartAsync(cancellationToken);
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        GoingAway();
        await _stopping.DisposeAsync().ConfigureAwait(false);
        await base.StopAsync(cancellationToken).ConfigureAwait(false);
    }

    private void GoingAway()
    {
        foreach (var session in sessions.All())
        {
            session.Engine.CloseConnection(PushCloseCode.GoingAway, "The server is shutting down.", retryAfterMs: 1000);
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(SweepInterval, timeProvider);
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
