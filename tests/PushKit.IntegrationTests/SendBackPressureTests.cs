using System.Net;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server.Connections;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// <c>POST {base}/send</c> under back-pressure (protocol §9.4): a POST whose batch finds its connection's queue full
/// waits, its answer held, and a connection takes at most <see cref="HttpServerConnection.MaxOutstandingSends"/> POSTs
/// at once, so that what a client's POSTs hold in server memory is bounded however many it sends. These move tens of
/// megabytes (12 concurrent 1 MB POSTs; 100 messages of 40 KB), so they run alone.
/// </summary>
[Collection(LargeBodiesCollection.Name)]
public sealed class SendBackPressureTests
{
    private static readonly TimeSpan T = TestTimeouts.Default;

    private static Uri Url(PushTestServer server, string path, string id, string secret, string extra = "") =>
        new($"{server.BaseUrl}/{path}?session={Uri.EscapeDataString(id)}&secret={Uri.EscapeDataString(secret)}{extra}");

    private static string Msg(long seq, string data) => $"{{\"type\":\"msg\",\"seq\":{seq},\"contentType\":\"text/plain\",\"data\":\"{data}\"}}\n";

    [Fact]
    public async Task Posts_beyond_four_outstanding_are_refused_at_once_unread_and_the_held_ones_lose_nothing()
    {
        const int BigData = 1_000_000;
        const int Concurrent = 12;
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var received = new List<string>();

        // What the endpoint reads of the big bodies (the small ones that fill the queue are not counted).
        var bigBodyBytesRead = new StrongBox<long>();
        await using var server = await PushTestServer.StartAsync(
            push => push.OnMessage(async (_, message, cancellationToken) =>
            {
                await gate.Task.WaitAsync(T, cancellationToken);
                var text = message.GetString();
                lock (received)
                {
                    received.Add(text.Length == BigData ? "big" : text);
                }
            }),
            configureApp: app => app.Use((context, next) =>
            {
                if (context.Request.ContentLength > BigData)
                {
                    context.Request.Body = new CountingStream(context.Request.Body, bigBodyBytesRead);
                }

                return next(context);
            }));
        var (id, secret, _) = await server.NegotiateRawAsync();
        using var http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };

        // An SSE stream, read up to its open event: then it takes the session's POSTs (§9.2).
        using var stream = await http.GetAsync(Url(server, "sse", id, secret), HttpCompletionOption.ResponseHeadersRead).WaitAsync(T);
        Assert.Equal(HttpStatusCode.OK, stream.StatusCode);
        using var events = new StreamReader(await stream.Content.ReadAsStreamAsync().WaitAsync(T));
        while (await events.ReadLineAsync().WaitAsync(T) is { } line && line != "event: open")
        {
        }

        var session = (PushSession)server.Sessions.FindSession(id)!;
        var connection = session.HttpConnection!;
        var send = Url(server, "send", id, secret);

        // The application holds message 1 and 69 wait for it, so the session stops reading (§5.3); then the connection's
        // queue is filled.
        long seq = 0;
        var first = string.Concat(Enumerable.Range(1, 70).Select(_ => Msg(++seq, $"m{seq}")));
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, send, first));
        await Eventually.TrueAsync(() => session.Engine.IsReadPaused);
        while (connection.QueuedBatches < HttpServerConnection.InboundQueueCapacity)
        {
            Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, send, Msg(++seq, $"m{seq}")));
        }

        // A misbehaving client sends 12 POSTs at once (all the same 1 MB batch, as a client retrying might).
        var big = Encoding.UTF8.GetBytes(Msg(++seq, new string('b', BigData)));
        var posts = Enumerable.Range(0, Concurrent).Select(_ => http.PostAsync(send, new ByteArrayContent(big))).ToList();
        try
        {
            // All but 4 are answered at once, while the application still holds the session up.
            var refused = Concurrent - HttpServerConnection.MaxOutstandingSends;
            using (var within = new CancellationTokenSource(T))
            {
                while (posts.Count(p => p.IsCompleted) < refused)
                {
                    try
                    {
                        await Task.WhenAny(posts.Where(p => !p.IsCompleted)).WaitAsync(within.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        Assert.Fail($"{posts.Count(p => p.IsCompleted)} of the {refused} refusals came within {T}: {connection.OutstandingSends} slots taken, {connection.QueuedBatches} batches queued, {Interlocked.Read(ref bigBodyBytesRead.Value)} bytes of the big bodies read.");
                    }
                }
            }

            foreach (var post in posts.Where(p => p.IsCompleted))
            {
                using var response = await post;
                Assert.Equal(HttpStatusCode.Conflict, response.StatusCode);
                Assert.Equal("send_in_progress", await ErrorCodeAsync(response));
            }

            // The other 4 are held, their bodies read: the refused ones were not read at all, so the server holds 4
            // bodies, not 20.
            Assert.Equal(HttpServerConnection.MaxOutstandingSends, posts.Count(p => !p.IsCompleted));
            Assert.Equal(HttpServerConnection.MaxOutstandingSends, connection.OutstandingSends);
            var heldBytes = (long)HttpServerConnection.MaxOutstandingSends * big.Length;
            await Eventually.TrueAsync(() => Interlocked.Read(ref bigBodyBytesRead.Value) == heldBytes);
        }
        finally
        {
            gate.TrySetResult();
        }

        // Released, the held ones are accepted: the batch is delivered once (the others repeat its seq), after all before it.
        var held = await Task.WhenAll(posts).WaitAsync(T);
        Assert.Equal(HttpServerConnection.MaxOutstandingSends, held.Count(r => r.StatusCode == HttpStatusCode.NoContent));
        foreach (var response in held)
        {
            response.Dispose();
        }

        // One more batch behind the repeats: once it is delivered, everything before it has been handled.
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, send, Msg(++seq, "last")));
        await Eventually.TrueAsync(() =>
        {
            lock (received)
            {
                return received.Contains("last");
            }
        });
        lock (received)
        {
            Assert.Equal([.. Enumerable.Range(1, (int)seq - 2).Select(i => $"m{i}"), "big", "last"], received);
        }

        Assert.Equal(0, connection.OutstandingSends);
    }

    [Theory]
    [InlineData("sse")]
    [InlineData("longpolling")]
    public async Task The_dotnet_client_posts_one_at_a_time_and_is_never_refused_while_the_application_is_behind(string transport)
    {
        const int Messages = 100;
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var received = new List<string>();
        var outstanding = 0;
        var mostOutstanding = 0;
        var refused = 0;
        await using var server = await PushTestServer.StartAsync(
            push => push.OnMessage(async (_, message, cancellationToken) =>
            {
                await gate.Task.WaitAsync(T, cancellationToken);
                lock (received)
                {
                    received.Add(message.GetString()[..8]);
                }
            }),
            configureApp: app => app.Use(async (context, next) =>
            {
                if (!context.Request.Path.Value!.EndsWith("/send", StringComparison.Ordinal))
                {
                    await next(context);
                    return;
                }

                var now = Interlocked.Increment(ref outstanding);
                InterlockedMax(ref mostOutstanding, now);
                try
                {
                    await next(context);
                }
                finally
                {
                    Interlocked.Decrement(ref outstanding);
                    if (context.Response.StatusCode != StatusCodes.Status204NoContent)
                    {
                        Interlocked.Increment(ref refused);
                    }
                }
            }));
        var client = await server.ConnectClientAsync(transport);
        var reconnected = client.NextStateAsync(PushChannelState.Reconnecting);
        var session = (PushSession)server.Sessions.FindSession(client.SessionId!)!;
        var connection = session.HttpConnection!;

        // 40 KB each: one message per POST, so the client keeps POSTing while the application holds the session up.
        var sends = Enumerable.Range(1, Messages).Select(i => client.SendStringAsync($"{i:D8}{new string('x', 40_000)}").AsTask()).ToList();
        try
        {
            // The session stops reading, the connection's queue fills, and the client's next POST is held.
            await Eventually.TrueAsync(() => session.Engine.IsReadPaused
                && connection.QueuedBatches == HttpServerConnection.InboundQueueCapacity
                && Volatile.Read(ref outstanding) == 1);
        }
        finally
        {
            gate.TrySetResult();
        }

        await Task.WhenAll(sends).WaitAsync(T);
        lock (received)
        {
            Assert.Equal(Enumerable.Range(1, Messages).Select(i => $"{i:D8}"), received);
        }

        Assert.Equal(1, Volatile.Read(ref mostOutstanding));
        Assert.Equal(0, Volatile.Read(ref refused));
        Assert.False(reconnected.IsCompleted);
    }

    private static void InterlockedMax(ref int location, int value)
    {
        var current = Volatile.Read(ref location);
        while (value > current)
        {
            var seen = Interlocked.CompareExchange(ref location, value, current);
            if (seen == current)
            {
                return;
            }

            current = seen;
        }
    }

    private static async Task<HttpStatusCode> PostAsync(HttpClient http, Uri url, string body)
    {
        using var response = await http.PostAsync(url, new StringContent(body, Encoding.UTF8, "application/x-ndjson")).WaitAsync(T);
        return response.StatusCode;
    }

    private static async Task<string?> ErrorCodeAsync(HttpResponseMessage response) =>
        JsonDocument.Parse(await response.Content.ReadAsStringAsync().WaitAsync(T)).RootElement.GetProperty("error").GetProperty("code").GetString();

    /// <summary>A request body that counts what is read from it.</summary>
    private sealed class CountingStream(Stream inner, StrongBox<long> count) : Stream
    {
        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }

        public override int Read(byte[] buffer, int offset, int count) => Counted(inner.Read(buffer, offset, count));

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            Counted(await inner.ReadAsync(buffer, cancellationToken));

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        private int Counted(int read)
        {
            Interlocked.Add(ref count.Value, read);
            return read;
        }
    }
}
