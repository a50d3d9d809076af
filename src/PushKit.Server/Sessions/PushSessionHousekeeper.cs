using Microsoft.Extensions.Hosting;

namespace PushKit.Server.Sessions;

/// <summary>
/// Expires sessions whose resume window has passed, and on host shutdown tells every connected client to go
/// away (<see cref="PushCloseCode.GoingAway"/>).
/// </summary>
internal sealed class PushSessionHousekeeper(PushSessionManager sessions, TimeProvider timeProvider) : BackgroundService
{
    /// <summary>How often expiry is checked: a session lives at most this much past its resume window.</summary>
    internal static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(1);

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        foreach (var session in sessions.All())
        {
            session.Engine.CloseConnection(PushCloseCode.GoingAway, "The server is shutting down.", retryAfterMs: 1000);
        }

        await base.StopAsync(cancellationToken).ConfigureAwait(false);
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
