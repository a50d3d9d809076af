using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using PushKit.IntegrationTests.Infrastructure;

namespace PushKit.IntegrationTests;

/// <summary>A body that ends before its Content-Length is the sender's problem, not a server error.</summary>
public sealed class IncompleteBodyTests
{
    [Theory]
    [InlineData("negotiate", "{\"protocolVersion\":1")]
    [InlineData("send", "{\"type\":\"ping\"}")]
    public async Task A_body_shorter_than_its_Content_Length_does_not_escape_the_endpoint_as_an_error(string endpoint, string partial)
    {
        // Whatever leaves the endpoint as an exception is logged by the host as an unhandled error with its stack.
        var outcome = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await PushTestServer.StartAsync(configureApp: app => app.Use(async (context, next) =>
        {
            if (context.Request.ContentLength != 1000)
            {
                await next(context);
                return;
            }

            try
            {
                await next(context);
                outcome.TrySetResult(null);
            }
            catch (Exception ex)
            {
                outcome.TrySetResult(ex);
                throw;
            }
        }));
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        if (endpoint == "send")
        {
            // A POST is refused with 409 before its body is read when the session has no connection to take it.
            using var open = await server.Http.GetAsync(new Uri($"{server.BaseUrl}/poll?session={Uri.EscapeDataString(sessionId)}&secret={Uri.EscapeDataString(secret)}&open=1")).WaitAsync(TestTimeouts.Default);
            Assert.Equal(System.Net.HttpStatusCode.OK, open.StatusCode);
        }

        var path = endpoint == "negotiate" ? "/push/negotiate" : $"/push/send?session={Uri.EscapeDataString(sessionId)}&secret={Uri.EscapeDataString(secret)}";

        // The client announces 1,000 bytes, sends a few and stops sending.
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(server.Root.Host, server.Root.Port).WaitAsync(TestTimeouts.Default);
        var request = $"POST {path} HTTP/1.1\r\nHost: {server.Root.Authority}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{partial}";
        await tcp.GetStream().WriteAsync(Encoding.ASCII.GetBytes(request)).AsTask().WaitAsync(TestTimeouts.Default);
        tcp.Client.Shutdown(System.Net.Sockets.SocketShutdown.Send);

        Assert.Null(await outcome.Task.WaitAsync(TestTimeouts.Default));

        // And the session (for send) is untouched: nothing of the partial body was applied, and it still works.
        Assert.NotNull(server.Sessions.FindSession(sessionId));
    }
}
