using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using PushKit.Client;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>No other test runs beside these: they measure what the whole process allocates.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessAllocationCollection
{
    public const string Name = "Measures what the whole process allocates";
}

/// <summary>
/// The hostile-server probes (see <see cref="HostileServerTests"/>) that bound what the client allocates. They read
/// <see cref="GC.GetTotalAllocatedBytes"/>, which counts every thread of the process, so they run alone: a test
/// beside them once added 10 MB to a figure held under 8.
/// </summary>
[Collection(ProcessAllocationCollection.Name)]
public sealed class HostileServerAllocationTests
{
    private static readonly TimeSpan T = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task HostileServer_negotiate_error_with_a_large_body_keeps_its_status_code()
    {
        await using var server = await FakePushServer.StartAsync(app => app.MapPost("/push/negotiate", async ctx =>
        {
            ctx.Response.StatusCode = 401;
            var chunk = Encoding.ASCII.GetBytes(new string('x', 1024 * 1024));
            for (var i = 0; i < 50 && !ctx.RequestAborted.IsCancellationRequested; i++)
            {
                await ctx.Response.Body.WriteAsync(chunk, ctx.RequestAborted);
            }
        }));
        await using var ch = new PushChannelBuilder().WithUrl(server.BaseUrl).Build();
        var before = GC.GetTotalAllocatedBytes(precise: true);
        var error = await Assert.ThrowsAsync<PushConnectException>(() => ch.ConnectAsync().WaitAsync(T));
        var allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        Assert.Equal(401, error.StatusCode);
        Assert.True(allocated < 8L * 1024 * 1024, $"{allocated / (1024 * 1024)} MB allocated for a 50 MB error body.");
    }

    [Fact]
    public async Task HostileServer_negotiate_200MB_body_is_not_buffered_whole()
    {
        // A real negotiate response is ~400 bytes. This one pads an (ignorable) unknown field to 200 MB.
        const int padMb = 200;
        await using var server = await FakePushServer.StartAsync(app =>
        {
            app.MapPost("/push/negotiate", async ctx =>
            {
                ctx.Response.ContentType = "application/json";
                await ctx.Response.WriteAsync("{\"pad\":\"");
                var chunk = Encoding.ASCII.GetBytes(new string('a', 1024 * 1024));
                for (var i = 0; i < padMb; i++)
                {
                    await ctx.Response.Body.WriteAsync(chunk, ctx.RequestAborted);
                }

                await ctx.Response.WriteAsync("\"," + FakePushServer.NegotiateJson()[1..]);
            });
            FakePushServer.MapWebSocket(app, async (ws, ctx) => await Task.Delay(Timeout.Infinite, ctx.RequestAborted));
        });
        await using var ch = HostileServerTests.Client(server, "websocket", o => o.ConnectTimeout = TimeSpan.FromSeconds(25));
        var before = GC.GetTotalAllocatedBytes(precise: true);
        var ex = await Record.ExceptionAsync(() => ch.ConnectAsync().WaitAsync(T));
        var allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        Assert.True(allocated < 64L * 1024 * 1024,
            $"ConnectAsync {(ex is null ? "succeeded" : "failed: " + ex.Message)} after allocating {allocated / (1024 * 1024)} MB for one negotiate response.");
    }

    [Fact]
    public async Task HostileServer_sse_line_that_never_ends_is_refused_at_MaxMessageBytes()
    {
        var sent = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await FakePushServer.StartAsync(app =>
        {
            FakePushServer.MapNegotiate(app, () => FakePushServer.NegotiateJson(heartbeat: "{\"intervalMs\":60000,\"timeoutMs\":120000}"));
            app.MapGet("/push/sse", async ctx =>
            {
                await FakePushServer.StartSseAsync(ctx);
                await ctx.Response.WriteAsync("data: ");
                var chunk = Encoding.ASCII.GetBytes(new string('a', 64 * 1024));
                for (var i = 0; i < 1024 && !ctx.RequestAborted.IsCancellationRequested; i++)
                {
                    await ctx.Response.Body.WriteAsync(chunk, ctx.RequestAborted);
                }

                sent.TrySetResult();
                await Task.Delay(Timeout.Infinite, ctx.RequestAborted);
            });
        });
        await using var ch = HostileServerTests.Client(server, "sse", o => o.MaxMessageBytes = 1024 * 1024);
        var reconnecting = HostileServerTests.Next(ch, PushChannelState.Reconnecting);
        await ch.ConnectAsync().WaitAsync(T);
        var before = GC.GetTotalAllocatedBytes(precise: true);
        var change = await reconnecting.WaitAsync(T);
        var allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        Assert.Equal(PushCloseCode.MessageTooBig, change.CloseCode);
        Assert.True(allocated < 16L * 1024 * 1024, $"{allocated / (1024 * 1024)} MB allocated before an unterminated SSE line (limit 1 MB) was refused.");
    }
}
