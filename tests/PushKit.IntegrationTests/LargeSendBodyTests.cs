using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.DependencyInjection;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>
/// <c>POST {base}/send</c> bodies above the web server's own default limit (Kestrel's <c>MaxRequestBodySize</c>,
/// 30,000,000 bytes): <c>MaxMessageBytes</c> may be up to 64 MiB, and that is the limit that applies (protocol §6).
/// The bodies are generated as they are sent, so the client holds none of them.
/// </summary>
[Collection(LargeBodiesCollection.Name)]
public sealed class LargeSendBodyTests
{
    private static readonly TimeSpan T = TestTimeouts.Default;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_body_over_30_MB_and_within_MaxMessageBytes_is_accepted_and_delivered(bool chunked)
    {
        const int PayloadBytes = 31_000_000;
        var delivered = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(
            push => push.OnMessage((_, message, _) =>
            {
                delivered.TrySetResult(message.Payload.Length);
                return default;
            }),
            o => o.MaxMessageBytes = 64 * 1024 * 1024);
        var (id, secret, negotiated) = await server.NegotiateRawAsync();
        Assert.Equal(64 * 1024 * 1024, negotiated.GetProperty("limits").GetProperty("maxMessageBytes").GetInt32());
        using var http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        using var stream = await OpenSseAsync(server, http, id, secret);

        var (status, body) = await PostGeneratedAsync(server, id, secret, PayloadBytes, chunked);
        Assert.True(status == 204, $"{status} {body}");
        Assert.Equal(PayloadBytes, await delivered.Task.WaitAsync(T));
    }

    [Fact]
    public async Task A_chunked_body_over_MaxMessageBytes_is_413_message_too_big_above_30_MB_too()
    {
        const int Limit = 31_000_000;
        await using var server = await PushTestServer.StartAsync(push => push.OnMessage((_, _, _) => default), o => o.MaxMessageBytes = Limit);
        var (id, secret, _) = await server.NegotiateRawAsync();
        using var http = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        using var stream = await OpenSseAsync(server, http, id, secret);

        var (status, body) = await PostGeneratedAsync(server, id, secret, Limit, chunked: true);
        Assert.True(status == 413, $"{status} {body}");
        Assert.Contains("\"code\":\"message_too_big\"", body, StringComparison.Ordinal); // the body may come in chunks
    }

    /// <summary>Opens an SSE stream and reads it up to its open event: from then on it takes the session's POSTs.</summary>
    private static async Task<HttpResponseMessage> OpenSseAsync(PushTestServer server, HttpClient http, string id, string secret)
    {
        var url = new Uri($"{server.BaseUrl}/sse?session={Uri.EscapeDataString(id)}&secret={Uri.EscapeDataString(secret)}");
        var response = await http.GetAsync(url, HttpCompletionOption.ResponseHeadersRead).WaitAsync(T);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var events = new StreamReader(await response.Content.ReadAsStreamAsync().WaitAsync(T));
        while (await events.ReadLineAsync().WaitAsync(T) is { } line && line != "event: open")
        {
        }

        return response;
    }

    /// <summary>
    /// POSTs one <c>msg</c> frame whose data is <paramref name="payloadBytes"/> letters, generated while it is sent, over a
    /// raw socket: with a Content-Length or chunked. The server may answer before it has read it all; the answer is read
    /// meanwhile, and sending stops once it is in.
    /// </summary>
    private static async Task<(int Status, string Body)> PostGeneratedAsync(PushTestServer server, string id, string secret, int payloadBytes, bool chunked)
    {
        var prefix = Encoding.UTF8.GetBytes("{\"type\":\"msg\",\"seq\":1,\"contentType\":\"text/plain\",\"data\":\"");
        var suffix = "\"}\n"u8.ToArray();
        var piece = new byte[64 * 1024];
        Array.Fill(piece, (byte)'a');

        using var client = new TcpClient();
        await client.ConnectAsync(server.Root.Host, server.Root.Port).WaitAsync(T);
        var stream = client.GetStream();
        var length = chunked ? "Transfer-Encoding: chunked" : $"Content-Length: {prefix.Length + payloadBytes + suffix.Length}";
        var head = $"POST /push/send?session={Uri.EscapeDataString(id)}&secret={Uri.EscapeDataString(secret)} HTTP/1.1\r\nHost: {server.Root.Authority}\r\nContent-Type: application/x-ndjson\r\n{length}\r\nConnection: close\r\n\r\n";
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head)).AsTask().WaitAsync(T);
        var answer = ReadAnswerAsync(stream);

        async Task WriteAsync(ReadOnlyMemory<byte> data)
        {
            if (chunked)
            {
                await stream.WriteAsync(Encoding.ASCII.GetBytes($"{data.Length:X}\r\n")).AsTask().WaitAsync(T);
                await stream.WriteAsync(data).AsTask().WaitAsync(T);
                await stream.WriteAsync("\r\n"u8.ToArray()).AsTask().WaitAsync(T);
            }
            else
            {
                await stream.WriteAsync(data).AsTask().WaitAsync(T);
            }
        }

        try
        {
            await WriteAsync(prefix);
            for (var left = payloadBytes; left > 0 && !answer.IsCompleted; left -= piece.Length)
            {
                await WriteAsync(piece.AsMemory(0, Math.Min(left, piece.Length)));
            }

            if (!answer.IsCompleted)
            {
                await WriteAsync(suffix);
                if (chunked)
                {
                    await stream.WriteAsync("0\r\n\r\n"u8.ToArray()).AsTask().WaitAsync(T);
                }
            }
        }
        catch (IOException)
        {
            // The server answered and closed before reading everything: its answer is still to be read.
        }

        var response = Encoding.UTF8.GetString(await answer.WaitAsync(T));
        Assert.StartsWith("HTTP/1.1 ", response, StringComparison.Ordinal);
        var status = int.Parse(response.Split(' ', 3)[1], System.Globalization.CultureInfo.InvariantCulture);
        return (status, response[(response.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..]);
    }

    /// <summary>Reads what the server sends until it closes the connection (the request said <c>Connection: close</c>).</summary>
    private static async Task<byte[]> ReadAnswerAsync(NetworkStream stream)
    {
        using var received = new MemoryStream();
        var buffer = new byte[4096];
        try
        {
            int read;
            while ((read = await stream.ReadAsync(buffer).AsTask().WaitAsync(T)) > 0)
            {
                received.Write(buffer, 0, read);
            }
        }
        catch (IOException) when (received.Length > 0)
        {
            // A reset after the answer (the server closed with part of the body unread): the answer is in.
        }

        return received.ToArray();
    }
}
