using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Text;
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
/// at once, so that what a client's POSTs hold in server memory is bounded however many it sends. These move megabytes
/// (4 POSTs of 1 MB held at once; 100 messages of 40 KB), so they run alone.
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
        const int Refused = 8;
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

        // A misbehaving client sends 4 POSTs of 1 MB, all the same batch (as a client retrying might): they take the
        // connection's slots, their bodies are read, and they are held.
        var big = Encoding.UTF8.GetBytes(Msg(++seq, new string('b', BigData)));
        var posts = Enumerable.Range(0, HttpServerConnection.MaxOutstandingSends).Select(_ => http.PostAsync(send, new ByteArrayContent(big))).ToList();
        try
        {
            var heldBytes = (long)HttpServerConnection.MaxOutstandingSends * big.Length;
            await Eventually.TrueAsync(() => connection.OutstandingSends == HttpServerConnection.MaxOutstandingSends
                && Interlocked.Read(ref bigBodyBytesRead.Value) == heldBytes);

            // Then 8 more at once, each announcing a 1 MB body it never sends: every one is refused at once, while the
            // application still holds the session up. Were its body read, its answer would never come.
            var refusals = await Task.WhenAll(Enumerable.Range(0, Refused).Select(_ => PostUnsentBodyAsync(server, send, big.Length)));
            foreach (var refusal in refusals)
            {
                Assert.StartsWith("HTTP/1.1 409 ", refusal, StringComparison.Ordinal);
                Assert.Contains("\"send_in_progress\"", refusal, StringComparison.Ordinal);
            }

            // The 4 are still held, and the server read their bodies and nothing more: it holds 4 bodies, not 12.
            Assert.All(posts, p => Assert.False(p.IsCompleted));
            Assert.Equal(HttpServerConnection.MaxOutstandingSends, connection.OutstandingSends);
            Assert.Equal(heldBytes, Interlocked.Read(ref bigBodyBytesRead.Value));
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

    /// <summary>
    /// Sends a POST's head announcing <paramref name="contentLength"/> bytes and none of them, over its own TCP
    /// connection, and returns what the server answers, up to its error code (or until it closes).
    /// </summary>
    private static async Task<string> PostUnsentBodyAsync(PushTestServer server, Uri url, int contentLength)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(server.Root.Host, server.Root.Port).WaitAsync(T);
        var stream = tcp.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"POST {url.PathAndQuery} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\nContent-Length: {contentLength}\r\n\r\n")).AsTask().WaitAsync(T);
        var answer = new StringBuilder();
        var buffer = new byte[4096];
        using var within = new CancellationTokenSource(T);
        while (answer.ToString() is var text
            && !text.Contains("send_in_progress", StringComparison.Ordinal)
            && !text.Contains("\r\n0\r\n\r\n", StringComparison.Ordinal))
        {
            var read = await stream.ReadAsync(buffer, within.Token);
            if (read == 0)
            {
                break;
            }

            answer.Append(Encoding.UTF8.GetString(buffer, 0, read));
        }

        return answer.ToString();
    }

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
