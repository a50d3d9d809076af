namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>
/// A client HTTP handler that holds every long-poll but the first (<c>open=1</c>) until <paramref name="gate"/>
/// completes: the client is then between two polls for as long as a test needs. With
/// <paramref name="newConnectionEachRequest"/>, no connection is reused, as behind a proxy that closes them.
/// </summary>
public sealed class PollGate(Task gate, bool newConnectionEachRequest = false)
    : DelegatingHandler(new SocketsHttpHandler { PooledConnectionLifetime = newConnectionEachRequest ? TimeSpan.Zero : Timeout.InfiniteTimeSpan })
{
    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        if (request.RequestUri!.AbsolutePath.EndsWith("/poll", StringComparison.Ordinal)
            && !request.RequestUri.Query.Contains("open=1", StringComparison.Ordinal))
        {
            await gate.WaitAsync(TestTimeouts.Default, cancellationToken);
        }

        return await base.SendAsync(request, cancellationToken);
    }
}
