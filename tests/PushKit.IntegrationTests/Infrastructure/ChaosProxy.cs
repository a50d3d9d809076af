using System.Net;
using System.Net.Sockets;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>
/// A loopback TCP proxy for fault injection: it forwards bytes to the server and, on demand, cuts every live
/// connection (RST), black-holes traffic (reads and drops it, so connections look alive but carry nothing), or
/// refuses new connections.
/// </summary>
public sealed class ChaosProxy : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _upstream;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Link> _links = [];
    private readonly Task _accepting;
    private volatile bool _blackHole;
    private volatile bool _refuse;
    private volatile bool _dropUpstream;
    private volatile bool _dropDownstream;

    // Counts CutAll calls: a connection accepted before a cut whose link was not set up yet is reset when it is.
    private int _cutGeneration;

    public ChaosProxy(Uri upstream)
    {
        _upstream = new IPEndPoint(IPAddress.Parse(upstream.Host), upstream.Port);
        _listener.Start();
        Root = new Uri($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}/");
        _accepting = AcceptLoopAsync();
    }

    public Uri Root { get; }

    public Uri PushUrl => new(Root, "/push");

    /// <summary>How many connections were cut so far.</summary>
    public int Cuts { get; private set; }

    /// <summary>While true, bytes in both directions are read and dropped.</summary>
    public bool BlackHole
    {
        get => _blackHole;
        set => _blackHole = value;
    }

    /// <summary>
    /// While true, bytes from clients to the server are read and dropped; the server's bytes still reach the clients
    /// (say, a client's acknowledgements are lost while it keeps receiving).
    /// </summary>
    public bool DropUpstream
    {
        get => _dropUpstream;
        set => _dropUpstream = value;
    }

    /// <summary>While true, bytes from the server to clients are read and dropped; the clients' bytes still reach it.</summary>
    public bool DropDownstream
    {
        get => _dropDownstream;
        set => _dropDownstream = value;
    }

    /// <summary>While true, new connections are accepted and reset at once.</summary>
    public bool RefuseNew
    {
        get => _refuse;
        set => _refuse = value;
    }

    /// <summary>Resets every live connection, as a network failure would.</summary>
    public void CutAll()
    {
        Link[] links;
        lock (_links)
        {
            _cutGeneration++;
            links = [.. _links];
            _links.Clear();
        }

        // Stop every link forwarding before resetting any: a client that reacts to the first reset must not get
        // through on a pooled keep-alive connection whose link is not reset yet (RefuseNew only stops new ones).
        foreach (var link in links)
        {
            link.Cut();
        }

        foreach (var link in links)
        {
            link.Reset();
        }

        Cuts += links.Length;
    }

    /// <summary>Cuts all connections every <paramref name="period"/> (± half) until <paramref name="until"/> completes.</summary>
    public async Task CutRepeatedlyAsync(TimeSpan period, Task until, int seed)
    {
        var random = new Random(seed);
        while (!until.IsCompleted)
        {
            var delay = period * (0.5 + random.NextDouble());
            await Task.WhenAny(until, Task.Delay(delay));
            if (!until.IsCompleted)
            {
                CutAll();
            }
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception) when (_stop.IsCancellationRequested)
            {
                return;
            }

            int generation;
            lock (_links)
            {
                generation = _cutGeneration;
            }

            if (_refuse)
            {
                client.LingerState = new LingerOption(true, 0);
                client.Dispose();
                continue;
            }

            _ = StartLinkAsync(client, generation);
        }
    }

    private async Task StartLinkAsync(Socket client, int generation)
    {
        var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        client.NoDelay = true;
        try
        {
            await server.ConnectAsync(_upstream, _stop.Token);
        }
        catch (Exception)
        {
            client.Dispose();
            server.Dispose();
            return;
        }

        var link = new Link(client, server);
        bool live;
        lock (_links)
        {
            // Accepted before a CutAll that could not see it (its upstream connect was still under way): the cut
            // covers it too, or a client could get through on it while the test believes every connection is gone.
            live = generation == _cutGeneration;
            if (live)
            {
                _links.Add(link);
            }
        }

        if (!live)
        {
            link.Reset();
            return;
        }

        await Task.WhenAll(PumpAsync(client, server, link, upstream: true), PumpAsync(server, client, link, upstream: false));
        link.Reset();
        lock (_links)
        {
            _links.Remove(link);
        }
    }

    private async Task PumpAsync(Socket from, Socket to, Link link, bool upstream)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            while (true)
            {
                var read = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token);
                if (read == 0)
                {
                    to.Shutdown(SocketShutdown.Send);
                    return;
                }

                if (_blackHole || link.IsCut || (upstream ? _dropUpstream : _dropDownstream))
                {
                    continue;
                }

                await to.SendAsync(buffer.AsMemory(0, read), SocketFlags.None, _stop.Token);
            }
        }
        catch (Exception)
        {
            link.Reset();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        CutAll();
        try
        {
            await _accepting.WaitAsync(TestTimeouts.Default);
        }
        catch (OperationCanceledException)
        {
        }

        _stop.Dispose();
    }

    private sealed class Link(Socket client, Socket server)
    {
        private int _reset;
        private volatile bool _cut;

        public bool IsCut => _cut;

        public void Cut() => _cut = true;

        public void Reset()
        {
            if (Interlocked.Exchange(ref _reset, 1) != 0)
            {
                return;
            }

            foreach (var socket in new[] { client, server })
            {
                try
                {
                    socket.LingerState = new LingerOption(true, 0);
                    socket.Close();
                }
                catch (Exception)
                {
                    // Already gone.
                }
            }
        }
    }
}
