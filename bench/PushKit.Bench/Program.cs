using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using BenchmarkDotNet.Running;
using PushKit.Bench;

// PushKit benchmarks, side by side with ASP.NET Core SignalR and raw ASP.NET Core WebSockets, in one run.
//   dotnet run -c Release --project bench/PushKit.Bench            full run (several minutes)
//   dotnet run -c Release --project bench/PushKit.Bench -- --quick  a smaller run
//   dotnet run -c Release --project bench/PushKit.Bench -- micro    BenchmarkDotNet micro-benchmarks (codec, send path)
// Options: --only fanout,scale,latency,memory   runs only those scenario groups
//          --repeat N                           measured rounds per throughput figure (median; default 7, quick 3)
//          --latency-rounds N                   one-second paced rounds per latency figure, pooled (default 20, quick 5)
//          --systems pushkit,signalr,raw        runs only those systems
//          --transports websocket,sse,longpolling
//          --messages 2000,10000                messages per fan-out round of 100 clients
//          --warmup S                           unmeasured seconds of full rounds before each throughput figure (default 5)
//          --idle S                             seconds the memory scenario's connections sit idle before the second read (default 100)
// PUSHKIT_BENCH_VERBOSE=1 prints each latency round with the GCs, CPU time and thread-pool work items of both
// processes; PUSHKIT_BENCH_ACK_DELAY_MS sets PushKit's client AckDelay.
if (args.Length > 0 && args[0] == "server")
{
    await BenchServer.RunAsync(args[1..]);
    return;
}

if (args.Length > 0 && args[0] == "micro")
{
    BenchmarkSwitcher.FromAssembly(typeof(Micro).Assembly).Run(args[1..]);
    return;
}

var quick = args.Contains("--quick");
string[] Option(string name, string[] all)
{
    var index = Array.IndexOf(args, name);
    return index >= 0 && index + 1 < args.Length ? args[index + 1].Split(',', StringSplitOptions.RemoveEmptyEntries) : all;
}

var groups = Option("--only", ["fanout", "scale", "latency", "memory"]);
var repeats = int.Parse(Option("--repeat", [quick ? "3" : "7"])[0], CultureInfo.InvariantCulture);
// Twenty one-second rounds per latency figure: a p99 rests on the rare slow moments, and on this shared machine a few
// millisecond-long stalls hit every system (raw WebSockets too) in about one round in three.
var latencyRounds = int.Parse(Option("--latency-rounds", [quick ? "5" : "20"])[0], CultureInfo.InvariantCulture);
// Five seconds: with two, PushKit's first scenario ran at half its steady speed (its code was still being tiered up);
// every system gets the same.
var warmUpTime = TimeSpan.FromSeconds(double.Parse(Option("--warmup", ["5"])[0], CultureInfo.InvariantCulture));
// 100 s: the servers' heartbeats (every 15 s) have run several times, and SignalR's clients have closed the idle
// keep-alive connection their negotiate left open (the HTTP handler closes it after 60 s).
var idleTime = TimeSpan.FromSeconds(double.Parse(Option("--idle", ["100"])[0], CultureInfo.InvariantCulture));
// Every latency round and each system's distribution, with both processes' garbage collections and allocations.
var verbose = Environment.GetEnvironmentVariable("PUSHKIT_BENCH_VERBOSE") is not null;
var port = FreePort();
var root = new Uri($"http://127.0.0.1:{port}/");
using var server = StartServer(port);
using var http = new HttpClient { BaseAddress = root, Timeout = TimeSpan.FromMinutes(10) };
await WaitForServerAsync(http);

var results = new List<(string Scenario, string System, string Transport, string Figure, double Value)>();

// The server process is ended whatever happens here (a failure must not leave it running).
AppDomain.CurrentDomain.ProcessExit += (_, _) => KillQuietly(server);
try
{
    var systems = Option("--systems", ["pushkit", "signalr", "raw"]);
    var transports = Option("--transports", ["websocket", "sse", "longpolling"]);
    Console.WriteLine($"server process id: {server.Id}");
    if (Environment.GetEnvironmentVariable("PUSHKIT_BENCH_START_DELAY_SECONDS") is { } startDelay)
    {
        // For profiling: time to attach a tracer to both processes before the scenarios start.
        await Task.Delay(TimeSpan.FromSeconds(int.Parse(startDelay, CultureInfo.InvariantCulture)));
    }

    // 1. Fan-out: 100 clients, 2,000 (and 10,000) broadcast messages of 256 B.
    var fanOutSizes = Option("--messages", quick ? ["2000"] : ["2000", "10000"]).Select(m => int.Parse(m, CultureInfo.InvariantCulture));
    foreach (var messages in groups.Contains("fanout") ? fanOutSizes : [])
    {
        foreach (var transport in transports)
        {
            var here = systems.Where(system => system != "raw" || transport == "websocket").ToList();
            foreach (var (system, rate) in await FanOutAsync(here, transport, clients: 100, messages))
            {
                results.Add(($"fan-out 100 x {messages} x 256 B", system, transport, "msg/s", rate));
            }
        }
    }

    // 2. Scaling shape: 1,000 clients; and one client at a high rate.
    if (groups.Contains("scale"))
    {
        // As at 100 clients, a short run and a long one: a 200-message round lasts about a tenth of a second, and its
        // median moves by a fifth between runs; 1,000 messages make the same million deliveries as 100 x 10,000.
        foreach (var messages in quick ? [200] : new[] { 200, 1_000 })
        {
            foreach (var (system, rate) in await FanOutAsync(systems, "websocket", clients: 1_000, messages))
            {
                results.Add(($"fan-out 1000 x {messages} x 256 B", system, "websocket", "msg/s", rate));
            }
        }

        var stream = quick ? 20_000 : 50_000;
        foreach (var (system, rate) in await FanOutAsync(systems, "websocket", clients: 1, messages: stream))
        {
            results.Add(($"1 client x {stream} x 256 B", system, "websocket", "msg/s", rate));
        }
    }

    // 3. Latency at a paced rate well below saturation (500 msg/s to 10 clients); the systems take turns, as above.
    foreach (var transport in groups.Contains("latency") ? transports : [])
    {
        var here = systems.Where(system => system != "raw" || transport == "websocket").ToList();
        foreach (var (system, (p50, p99)) in await LatencyAsync(here, transport, clients: 10, perSecond: 500))
        {
            results.Add(("latency @ 500 msg/s, 10 clients", system, transport, "p50 ms", p50));
            results.Add(("latency @ 500 msg/s, 10 clients", system, transport, "p99 ms", p99));
        }
    }

    // 4. Server memory per idle connection, 2,000 connections, each system's server in its own process: read once the
    // connections are made, and again after they have sat idle (heartbeats sent, SignalR's negotiate keep-alive closed).
    if (groups.Contains("memory"))
    {
        var count = quick ? 500 : 2_000;
        // PushKit is measured twice: through MapPushKit alone (the WebSocket handshake is an HTTP request, kept for the
        // connection's life), and with the direct WebSocket listener (ListenOptions.UsePushKitWebSockets), which takes
        // the handshake below the HTTP server. Each gets its rows, the other systems' figures repeated beside it.
        var memorySystems = systems.Contains("pushkit") ? [.. systems, "pushkit-direct"] : systems;
        var memory = await MemoryPerConnectionAsync(memorySystems, count);
        (string Label, string Excluded)[] views = systems.Contains("pushkit")
            ? [(", PushKit via MapPushKit only", "pushkit-direct"), (", PushKit with UsePushKitWebSockets", "pushkit")]
            : [("", "")];
        foreach (var (label, excluded) in views)
        {
            foreach (var (system, atConnect, idle) in memory.Where(m => m.System != excluded))
            {
                var shown = system == "pushkit-direct" ? "pushkit" : system;
                results.Add(($"memory per connection ({count}), at connect{label}", shown, "websocket", "KB", atConnect));
                results.Add(($"memory per idle connection ({count}), after {idleTime.TotalSeconds:N0} s{label}", shown, "websocket", "KB", idle));
            }
        }
    }

}
catch (Exception ex)
{
    Console.Error.WriteLine($"The benchmark failed: {ex}");
    KillQuietly(server);
    return;
}

Report(results, quick);
server.Kill(entireProcessTree: true);
return;

// Fan-out for several systems at once: each system's clients are connected and warmed up, then the measured rounds
// take turns (system A, B, C, then B, C, A, ...), so that a noisy moment on the shared machine falls on every system
// rather than on the one whose runs happened to be then. Each figure is the median of its system's rounds.
async Task<Dictionary<string, double>> FanOutAsync(IReadOnlyList<string> systemsHere, string transport, int clients, int messages)
{
    var connected = new Dictionary<string, List<BenchClient>>();
    try
    {
        foreach (var system in systemsHere)
        {
            connected[system] = await ConnectAsync(system, transport, clients);
        }

        // Warm-up: unmeasured full rounds, so that every system runs its steady-state code (tiered JIT, dynamic PGO, a
        // grown thread pool) when measured.
        foreach (var system in systemsHere)
        {
            var warmUp = Stopwatch.StartNew();
            do
            {
                await RoundAsync(connected[system], system, messages);
            }
            while (warmUp.Elapsed < warmUpTime);
        }

        var rates = systemsHere.ToDictionary(s => s, _ => new List<double>());
        var collections = systemsHere.ToDictionary(s => s, _ => new GcCost());
        for (var run = 0; run < repeats; run++)
        {
            for (var turn = 0; turn < systemsHere.Count; turn++)
            {
                var system = systemsHere[(run + turn) % systemsHere.Count];

                // Untimed: PushKit's clients hold their last acks up to AckDelay (100 ms); they are sent and handled
                // here, not in the next system's round.
                await Task.Delay(150);
                var gc = GcSnapshot.Now();
                var stopwatch = Stopwatch.StartNew();
                await RoundAsync(connected[system], system, messages);
                stopwatch.Stop();
                rates[system].Add((double)clients * messages / stopwatch.Elapsed.TotalSeconds);
                collections[system].Add(GcSnapshot.Now() - gc);
            }
        }

        var medians = new Dictionary<string, double>();
        foreach (var system in systemsHere)
        {
            var runs = string.Join(", ", rates[system].Select(r => r.ToString("N0", CultureInfo.InvariantCulture)));
            var sorted = rates[system].Order().ToList();
            medians[system] = sorted[sorted.Count / 2];
            Console.WriteLine($"{system,-8} {transport,-12} {clients,5} clients x {messages,6}: {medians[system],12:N0} msg/s (median of runs {runs})");

            // The client process's garbage collection in this system's rounds: what its client costs beyond the
            // benchmark's own string per message (536 B for 256 characters).
            Console.WriteLine($"  client process: {collections[system].Describe((double)clients * messages * repeats)}");
        }

        return medians;
    }
    finally
    {
        foreach (var clientsOfSystem in connected.Values)
        {
            await DisposeAllAsync(clientsOfSystem);
        }
    }
}

// One broadcast round: every client must receive every message; a round that stalls says who is short.
async Task RoundAsync(List<BenchClient> connected, string system, int messages)
{
    var expectations = connected.Select(c => c.ExpectAsync(messages)).ToArray();
    var all = Task.WhenAll(expectations.Append(BroadcastAsync(system, messages)));
    try
    {
        await all.WaitAsync(TimeSpan.FromSeconds(60));
    }
    catch (TimeoutException)
    {
        var short_ = connected.Where(c => c.Received < messages).Select(c => $"{c.Received} ({c.Describe()})").ToList();
        throw new TimeoutException(
            $"{system}: a round of {messages} stalled; {short_.Count} of {connected.Count} clients short: {string.Join("; ", short_.Take(10))}");
    }
}

// Latency for several systems at once: every system's clients stay connected, and one-second paced rounds take turns
// (A, B, C, then B, C, A, ...), so that a hiccup of the shared machine falls on every system, not on whichever was
// being measured then. Each system's p50 and p99 are taken over all the samples of its rounds.
async Task<Dictionary<string, (double P50, double P99)>> LatencyAsync(IReadOnlyList<string> systemsHere, string transport, int clients, int perSecond)
{
    var connected = new Dictionary<string, List<BenchClient>>();
    try
    {
        foreach (var system in systemsHere)
        {
            connected[system] = await ConnectAsync(system, transport, clients);
        }

        // Warm-up: a burst, then two seconds at the paced rate, unmeasured.
        foreach (var system in systemsHere)
        {
            await RoundAsync(connected[system], system, 2_000);
            await PacedRoundAsync(connected[system], system, perSecond * 2, perSecond);
        }

        // Both processes start the measured rounds from a clean heap (see BenchGc).
        BenchGc.FullCollection();
        (await http.PostAsync("/control/collect", null)).EnsureSuccessStatusCode();

        var samples = systemsHere.ToDictionary(s => s, _ => new List<double>(latencyRounds * clients * perSecond));
        var roundP99s = systemsHere.ToDictionary(s => s, _ => new List<double>());
        // Round -1 is a whole turn that is run and thrown away: after the collection, the first round of a run was slow
        // for whichever system went first (p99 1.2-2.5 ms in five runs out of six, 2026-11-26), not for the system.
        for (var run = -1; run < latencyRounds; run++)
        {
            for (var turn = 0; turn < systemsHere.Count; turn++)
            {
                var system = systemsHere[(run + 1 + turn) % systemsHere.Count];
                // Each round leads in for a tenth of a second unrecorded: the messages that first wake a system that sat
                // idle while the others were measured are not the steady state this figure is about.
                var round = new List<double>(clients * (perSecond + perSecond / 10));
                var leadIn = perSecond / 10;
                var recordFrom = Stopwatch.GetTimestamp() + Stopwatch.Frequency / 10;
                foreach (var client in connected[system])
                {
                    client.RecordFrom = recordFrom;
                    client.Latencies = round;
                }

                var clientGc = GcSnapshot.Now();
                var clientCpu = Environment.CpuUsage.TotalTime;
                var clientItems = ThreadPool.CompletedWorkItemCount;
                var serverGc = await http.GetFromJsonAsync<ServerGc>("/control/gc");
                await PacedRoundAsync(connected[system], system, perSecond + leadIn, perSecond);
                var clientGcAfter = GcSnapshot.Now() - clientGc;
                var clientCpuAfter = Environment.CpuUsage.TotalTime - clientCpu;
                var clientItemsAfter = ThreadPool.CompletedWorkItemCount - clientItems;
                var serverGcAfter = await http.GetFromJsonAsync<ServerGc>("/control/gc");
                foreach (var client in connected[system])
                {
                    client.Latencies = null;
                }

                if (run < 0)
                {
                    continue;
                }

                round.Sort();
                roundP99s[system].Add(round[(int)(round.Count * 0.99)]);
                if (verbose)
                {
                    // Why a round was slow: the garbage collections in either process while it ran, the CPU time each
                    // process used (work beyond SignalR's, such as acks, competes with deliveries on two cores), and
                    // how many thread-pool work items each ran (every hop is a wake-up on those two cores).
                    Console.WriteLine($"  {system} round {run}: p99 {round[(int)(round.Count * 0.99)]:N2} max {round[^1]:N2}; >1ms {round.Count(l => l > 1)}; client gc0 {clientGcAfter.Gen0} gc1 {clientGcAfter.Gen1} pause {clientGcAfter.Pauses.TotalMilliseconds:N1}, allocated {clientGcAfter.Allocated / 1024.0 / 1024:N1} MB; server gc0 {serverGcAfter!.Gen0 - serverGc!.Gen0} gc1 {serverGcAfter.Gen1 - serverGc.Gen1} pause {serverGcAfter.PauseMs - serverGc.PauseMs:N1}, allocated {(serverGcAfter.AllocatedBytes - serverGc.AllocatedBytes) / 1024.0 / 1024:N1} MB; cpu client {clientCpuAfter.TotalMilliseconds:N0} ms server {serverGcAfter.CpuMs - serverGc.CpuMs:N0} ms; thread-pool items client {clientItemsAfter:N0} server {serverGcAfter.WorkItems - serverGc.WorkItems:N0}");
                }
                samples[system].AddRange(round);
            }
        }

        var figures = new Dictionary<string, (double P50, double P99)>();
        foreach (var system in systemsHere)
        {
            var all = samples[system];
            all.Sort();
            var p50 = all[(int)(all.Count * 0.50)];
            var p99 = all[(int)(all.Count * 0.99)];
            var rounds = string.Join(", ", roundP99s[system].Select(r => r.ToString("N2", CultureInfo.InvariantCulture)));
            Console.WriteLine($"{system,-8} {transport,-12} latency p50 {p50:N2} ms, p99 {p99:N2} ms ({all.Count:N0} samples; p99 of each round {rounds})");
            if (verbose)
            {
                var shape = string.Join(", ", new[] { 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999 }.Select(q => $"p{q * 100:0.#} {all[(int)(all.Count * q)]:N3}"));
                Console.WriteLine($"  {system} distribution: {shape}");
            }
            figures[system] = (p50, p99);
        }

        if (roundP99s.TryGetValue("pushkit", out var ours) && roundP99s.TryGetValue("signalr", out var theirs))
        {
            // A paired view of the same rounds: each of PushKit's rounds against SignalR's round of the same turn. The
            // pooled p99 rests on the few rounds with a stall of the shared machine; this says how often PushKit's
            // tail was the lower one when both ran in the same stretch of time.
            var lower = ours.Zip(theirs).Count(pair => pair.First <= pair.Second);
            Console.WriteLine($"pushkit vs signalr {transport}: round p99 at or below SignalR's in {lower} of {ours.Count} turns");
        }

        return figures;
    }
    finally
    {
        foreach (var clientsOfSystem in connected.Values)
        {
            await DisposeAllAsync(clientsOfSystem);
        }
    }
}

// One paced round: the server sends count messages at perSecond, each carrying its send time; every client must get
// them all.
async Task PacedRoundAsync(List<BenchClient> connected, string system, int count, int perSecond)
{
    var expectations = connected.Select(c => c.ExpectAsync(count)).ToArray();
    using var response = await http.PostAsync($"/control/paced/{system}?count={count}&perSecond={perSecond}", null);
    response.EnsureSuccessStatusCode();
    await Task.WhenAll(expectations).WaitAsync(TimeSpan.FromMinutes(2));
}

async Task<List<(string System, double AtConnect, double Idle)>> MemoryPerConnectionAsync(IReadOnlyList<string> systemsHere, int clients)
{
    // A fresh server process for each system, so that nothing another system left behind is counted. The systems are
    // connected one after another and then read together once the last has been idle for idleTime (each of the others
    // idle for longer), so that the wait is paid once.
    var measured = new List<(string System, Process Server, HttpClient Http, long Before, double AtConnect, List<BenchClient> Clients)>();
    try
    {
        foreach (var system in systemsHere)
        {
            var memoryPort = FreePort();
            var memoryServer = StartServer(memoryPort, direct: system == "pushkit-direct");
            var memoryHttp = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{memoryPort}/") };
            measured.Add((system, memoryServer, memoryHttp, 0, 0, []));
            await WaitForServerAsync(memoryHttp);
            Console.WriteLine($"{system} memory server process id: {memoryServer.Id}");

            // Warm up (JIT, pools) with a few connections that come and go before the baseline is taken.
            var clientSystem = system == "pushkit-direct" ? "pushkit" : system;
            await DisposeAllAsync(await ConnectAsync(clientSystem, "websocket", 10, memoryHttp.BaseAddress!));
            await Task.Delay(500);
            var before = await ServerMemoryAsync(memoryHttp);
            var connected = await ConnectAsync(clientSystem, "websocket", clients, memoryHttp.BaseAddress!);
            var atConnect = (await ServerMemoryAsync(memoryHttp) - before) / clients / 1024.0;
            measured[^1] = (system, memoryServer, memoryHttp, before, atConnect, connected);
            Console.WriteLine($"{system,-14} memory per connection at connect: {atConnect:N2} KB");
        }

        Console.WriteLine($"waiting {idleTime.TotalSeconds:N0} s with every connection idle");
        await Task.Delay(idleTime);
        if (Environment.GetEnvironmentVariable("PUSHKIT_BENCH_HOLD_SECONDS") is { } hold)
        {
            // For profiling: keep the idle connections open so a heap dump of the server can be taken.
            Console.WriteLine($"holding the idle connections for {hold} s more");
            await Task.Delay(TimeSpan.FromSeconds(int.Parse(hold, CultureInfo.InvariantCulture)));
        }

        var figures = new List<(string, double, double)>();
        foreach (var (system, _, memoryHttp, before, atConnect, _) in measured)
        {
            var idle = (await ServerMemoryAsync(memoryHttp) - before) / clients / 1024.0;
            Console.WriteLine($"{system,-14} memory per idle connection after {idleTime.TotalSeconds:N0} s: {idle:N2} KB");
            figures.Add((system, atConnect, idle));
        }

        return figures;
    }
    finally
    {
        foreach (var (_, memoryServer, memoryHttp, _, _, connected) in measured)
        {
            await DisposeAllAsync(connected);
            memoryServer.Kill(entireProcessTree: true);
            memoryServer.Dispose();
            memoryHttp.Dispose();
        }
    }
}

async Task<List<BenchClient>> ConnectAsync(string system, string transport, int count, Uri? at = null)
{
    var clients = new List<BenchClient>(count);
    foreach (var batch in Enumerable.Range(0, count).Chunk(50))
    {
        var created = batch.Select(_ => BenchClient.Create(system, transport, at ?? root)).ToArray();
        await Task.WhenAll(created.Select(c => c.ConnectAsync()));
        clients.AddRange(created);
    }

    return clients;
}

static async Task DisposeAllAsync(List<BenchClient> clients)
{
    foreach (var batch in clients.Chunk(100))
    {
        await Task.WhenAll(batch.Select(c => c.DisposeAsync().AsTask()));
    }
}

async Task BroadcastAsync(string system, int count)
{
    using var response = await http.PostAsync($"/control/broadcast/{system}?count={count}&size=256", null);
    response.EnsureSuccessStatusCode();
}

static async Task<long> ServerMemoryAsync(HttpClient http)
{
    var memory = await http.GetFromJsonAsync<MemoryReport>("/control/memory");
    return memory!.ManagedBytes;
}

static void Report(List<(string Scenario, string System, string Transport, string Figure, double Value)> results, bool quick)
{
    var report = new StringBuilder();
    report.AppendLine(CultureInfo.InvariantCulture, $"PushKit benchmark — {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC — {Environment.ProcessorCount} cores, .NET {Environment.Version}{(quick ? " (quick run)" : "")}");
    report.AppendLine("PushKit runs with acknowledgements on (every message is acknowledged by each client).");
    report.AppendLine();
    report.AppendLine("| scenario | transport | figure | PushKit | SignalR | raw WebSocket | PushKit / SignalR | PushKit / raw |");
    report.AppendLine("|---|---|---|---:|---:|---:|---:|---:|");
    foreach (var group in results.GroupBy(r => (r.Scenario, r.Transport, r.Figure)))
    {
        double? Get(string system) => group.Where(r => r.System == system).Select(r => (double?)r.Value).FirstOrDefault();
        var pushkit = Get("pushkit");
        var signalr = Get("signalr");
        var raw = Get("raw");
        string F(double? v) => v is { } x ? x.ToString(x >= 100 ? "N0" : "N2", CultureInfo.InvariantCulture) : "—";
        string Ratio(double? a, double? b) => a is { } x && b is { } y && y > 0 ? (x / y).ToString("N2", CultureInfo.InvariantCulture) + "×" : "—";
        report.AppendLine(CultureInfo.InvariantCulture, $"| {group.Key.Scenario} | {group.Key.Transport} | {group.Key.Figure} | {F(pushkit)} | {F(signalr)} | {F(raw)} | {Ratio(pushkit, signalr)} | {Ratio(pushkit, raw)} |");
    }

    Console.WriteLine();
    Console.WriteLine(report);
    var path = Path.Combine(AppContext.BaseDirectory, "bench-results.md");
    File.WriteAllText(path, report.ToString());
    Console.WriteLine($"(also written to {path})");
}

static void KillQuietly(Process process)
{
    try
    {
        process.Kill(entireProcessTree: true);
    }
    catch (Exception ex) when (ex is InvalidOperationException or System.ComponentModel.Win32Exception)
    {
        // Already gone.
    }
}

static int FreePort()
{
    var listener = new TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    var port = ((IPEndPoint)listener.LocalEndpoint).Port;
    listener.Stop();
    return port;
}

static Process StartServer(int port, bool direct = false)
{
    var start = new ProcessStartInfo("dotnet", [typeof(Micro).Assembly.Location, "server", "--urls", $"http://127.0.0.1:{port}"])
    {
        RedirectStandardOutput = true,
        UseShellExecute = false,
    };
    if (direct)
    {
        start.Environment["PUSHKIT_BENCH_DIRECT"] = "1";
    }

    return Process.Start(start)!;
}

static async Task WaitForServerAsync(HttpClient http)
{
    for (var i = 0; i < 100; i++)
    {
        try
        {
            using var response = await http.GetAsync("/control/memory");
            if (response.IsSuccessStatusCode)
            {
                return;
            }
        }
        catch (HttpRequestException)
        {
        }

        await Task.Delay(100);
    }

    throw new InvalidOperationException("The benchmark server did not start.");
}

internal sealed record MemoryReport(long ManagedBytes, long WorkingSet);

/// <summary>The server process's garbage collection counters at one moment (<c>/control/gc</c>).</summary>
internal sealed record ServerGc(int Gen0, int Gen1, int Gen2, double PauseMs, long AllocatedBytes, double CpuMs, long WorkItems);

/// <summary>
/// A full, compacting collection of the process. The latency rounds start after one in both processes: otherwise the
/// first collection after the warm-up, which promotes what connecting and warming up every system left behind and
/// paused for up to 10 ms on this VM, lands in whichever system's round happens to exhaust the budget.
/// </summary>
internal static class BenchGc
{
    public static void FullCollection()
    {
        System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
    }
}

/// <summary>The client process's garbage collection counters at one moment, or their change over some rounds.</summary>
internal readonly record struct GcSnapshot(long Allocated, int Gen0, int Gen1, int Gen2, TimeSpan Pauses)
{
    public static GcSnapshot Now() =>
        new(GC.GetTotalAllocatedBytes(precise: true), GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2), GC.GetTotalPauseDuration());

    public static GcSnapshot operator -(GcSnapshot a, GcSnapshot b) =>
        new(a.Allocated - b.Allocated, a.Gen0 - b.Gen0, a.Gen1 - b.Gen1, a.Gen2 - b.Gen2, a.Pauses - b.Pauses);

    public static GcSnapshot operator +(GcSnapshot a, GcSnapshot b) =>
        new(a.Allocated + b.Allocated, a.Gen0 + b.Gen0, a.Gen1 + b.Gen1, a.Gen2 + b.Gen2, a.Pauses + b.Pauses);
}

/// <summary>The client process's garbage collection summed over one system's measured rounds.</summary>
internal sealed class GcCost
{
    private GcSnapshot _total;

    public void Add(GcSnapshot change) => _total += change;

    public string Describe(double delivered) =>
        $"{_total.Allocated / delivered:N0} B allocated per delivered message; GCs gen0 {_total.Gen0}, gen1 {_total.Gen1}, " +
        $"gen2 {_total.Gen2}; pauses {_total.Pauses.TotalMilliseconds:N0} ms";
}
