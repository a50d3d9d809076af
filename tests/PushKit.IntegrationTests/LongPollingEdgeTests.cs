using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Server;
using PushKit.Server.Connections;
using PushKit.Server.Sessions;

namespace PushKit.IntegrationTests;

/// <summary>
/// The long-polling server transport as a raw HTTP client sees it (protocol §9.3, §9.4, §5, §10): racing polls,
/// polls during a write, the <c>open</c> and <c>ack</c> query parameters, takeover by another transport, ended
/// sessions, lost responses, abandonment and heartbeats, methods other than GET.
/// </summary>
public sealed class LongPollingEdgeTests
{
    private static readonly TimeSpan T = TestTimeouts.Default;

    // ------------------------------------------------------------------------------------------------------ helpers

    private static Task<PushTestServer> StartAsync(Action<PushKitServerOptions>? options = null, Action<IPushKitServerBuilder>? push = null) =>
        PushTestServer.StartAsync(push, options);

    private static PushSession Session(PushTestServer server, string sessionId) =>
        server.Services.GetRequiredService<PushSessionManager>().Find(sessionId)!;

    private static LongPollingServerConnection Connection(PushTestServer server, string sessionId) =>
        (LongPollingServerConnection)Session(server, sessionId).HttpConnection!;

    /// <summary>Waits until the connection holds a poll (no event is raised for a poll that starts waiting).</summary>
    private static Task UntilHeldAsync(LongPollingServerConnection connection) =>
        Eventually.TrueAsync(() => connection.HoldsPoll);

    private static async Task SendAsync(PushTestServer server, string sessionId, string text) =>
        Assert.True(await server.Sender.SendToSessionAsync(sessionId, PushMessage.FromString(text)).AsTask().WaitAsync(T));

    private sealed record Answer(HttpStatusCode Status, string Body, string? ContentType, long? ContentLength, string? CacheControl)
    {
        public List<JsonElement> Frames =>
            [.. Body.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone())];

        public List<(long Seq, string Data)> Messages =>
            [.. Frames.Where(f => TypeOf(f) == "msg").Select(f => (f.GetProperty("seq").GetInt64(), f.GetProperty("data").GetString()!))];

        public List<long> Seqs => [.. Messages.Select(m => m.Seq)];

        public int? CloseCode => Frames.Where(f => TypeOf(f) == "close").Select(f => (int?)f.GetProperty("code").GetInt32()).FirstOrDefault();

        public long? Ack => Frames.Where(f => TypeOf(f) == "ack").Select(f => (long?)f.GetProperty("seq").GetInt64()).LastOrDefault();

        public bool Has(string type) => Frames.Any(f => TypeOf(f) == type);

        public string? ErrorCode => Body.Length == 0 ? null : JsonDocument.Parse(Body).RootElement.GetProperty("error").GetProperty("code").GetString();

        private static string? TypeOf(JsonElement frame) => frame.GetProperty("type").GetString();

        public override string ToString() => $"{(int)Status} [{Body}]";
    }

    private static async Task<Answer> ReadAsync(HttpResponseMessage response)
    {
        // The headers first: Content-Length is read as sent, before the body is buffered.
        var length = response.Content.Headers.ContentLength;
        var type = response.Content.Headers.ContentType?.ToString();
        var body = await response.Content.ReadAsStringAsync().WaitAsync(T);
        return new Answer(response.StatusCode, body, type, length, response.Headers.CacheControl?.ToString());
    }

    /// <summary>A raw long-polling client of one session.</summary>
    private sealed class Poller(PushTestServer server, string sessionId, string secret)
    {
        public string SessionId => sessionId;

        public string Secret => secret;

        public Uri Url(string path, string extra = "") =>
            new($"{server.BaseUrl}/{path}?session={Uri.EscapeDataString(sessionId)}&secret={Uri.EscapeDataString(secret)}{extra}",
                new UriCreationOptions { DangerousDisablePathAndQueryCanonicalization = true });

        public Task<Answer> PollAsync(string extra = "") => SendAsync(new HttpRequestMessage(HttpMethod.Get, Url("poll", extra)));

        public Task<Answer> PostAsync(string body) =>
            SendAsync(new HttpRequestMessage(HttpMethod.Post, Url("send")) { Content = new StringContent(body, Encoding.UTF8, "application/x-ndjson") });

        public async Task<Answer> SendAsync(HttpRequestMessage request)
        {
            using (request)
            {
                using var response = await server.Http.SendAsync(request).WaitAsync(T);
                return await ReadAsync(response);
            }
        }

        /// <summary>Polls until a message with <paramref name="until"/> as its data arrived; returns every message seen.</summary>
        public async Task<List<(long Seq, string Data)>> PollUntilAsync(string until, string extra = "", int maxPolls = 12)
        {
            var seen = new List<(long Seq, string Data)>();
            var answers = new StringBuilder();
            for (var i = 0; i < maxPolls; i++)
            {
                var answer = await PollAsync(extra);
                answers.Append(answer).Append(' ');
                Assert.True(answer.Status == HttpStatusCode.OK, "a poll failed: " + answers);
                seen.AddRange(answer.Messages);
                if (seen.Any(m => m.Data == until))
                {
                    return seen;
                }
            }

            Assert.Fail($"'{until}' never arrived; polls answered: {answers}");
            return seen;
        }
    }

    private static async Task<Poller> OpenAsync(PushTestServer server)
    {
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        var poller = new Poller(server, sessionId, secret);
        var opened = await poller.PollAsync("&open=1");
        Assert.Equal(HttpStatusCode.OK, opened.Status);
        Assert.Equal(string.Empty, opened.Body);
        return poller;
    }

    // ----------------------------------------------------------------------------------------------- two polls at once

    [Fact]
    public async Task Two_polls_racing_sends_lose_nothing_repeat_nothing_and_a_superseded_poll_carries_no_frames()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        var lp = await OpenAsync(server);
        const int Rounds = 12;
        var seen = new List<long>();
        for (var round = 0; round < Rounds; round++)
        {
            var older = lp.PollAsync();
            var first = SendAsync(server, lp.SessionId, $"r{round}a");
            var newer = lp.PollAsync();
            var second = SendAsync(server, lp.SessionId, $"r{round}b");
            await Task.WhenAll(first, second).WaitAsync(T);
            foreach (var answer in await Task.WhenAll(older, newer).WaitAsync(T))
            {
                if (answer.Status == HttpStatusCode.Conflict)
                {
                    // §9.3: the loser gets 409 poll_superseded (a JSON error body), never frames.
                    Assert.Equal("poll_superseded", answer.ErrorCode);
                    Assert.StartsWith("application/json", answer.ContentType, StringComparison.Ordinal);
                }
                else
                {
                    Assert.Equal(HttpStatusCode.OK, answer.Status);
                    seen.AddRange(answer.Seqs);
                }
            }
        }

        // Whatever is still waiting comes with the next polls (a poll answered at its timeout ends the drain).
        while (seen.Count < 2 * Rounds)
        {
            var rest = await lp.PollAsync();
            Assert.Equal(HttpStatusCode.OK, rest.Status);
            if (rest.Seqs.Count == 0)
            {
                break;
            }

            seen.AddRange(rest.Seqs);
        }

        Assert.Equal(Enumerable.Range(1, 2 * Rounds).Select(i => (long)i), seen.Order());
        Assert.Equal(seen.Count, seen.Distinct().Count());
    }

    [Fact]
    public async Task A_poll_that_arrives_while_the_previous_answer_is_being_written_is_held_for_the_next_frames_and_both_answers_are_whole()
    {
        await using var server = await StartAsync(o =>
        {
            o.MaxMessageBytes = 8 * 1024 * 1024;
            o.LongPollingTimeout = TimeSpan.FromSeconds(10);
        });
        var lp = await OpenAsync(server);
        var session = Session(server, lp.SessionId);

        // About 8 MB waiting: more than loopback socket buffers take, so the answer is still being written when the
        // next poll comes.
        var big = new string('x', 1_900_000);
        for (var i = 1; i <= 4; i++)
        {
            await SendAsync(server, lp.SessionId, big + i.ToString(CultureInfo.InvariantCulture));
        }

        await Eventually.TrueAsync(() => session.Engine.SentThrough == 4);
        using var slowClient = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        using var slow = await slowClient.GetAsync(lp.Url("poll"), HttpCompletionOption.ResponseHeadersRead).WaitAsync(T);
        Assert.Equal(HttpStatusCode.OK, slow.StatusCode);
        var announced = slow.Content.Headers.ContentLength;

        // Its headers are out: the older poll has taken the frames. A newer poll must not take them from it nor be
        // answered 409; it waits for what comes next.
        var newer = lp.PollUntilAsync("after");
        await SendAsync(server, lp.SessionId, "after");
        var later = await newer.WaitAsync(T);

        var body = await slow.Content.ReadAsByteArrayAsync().WaitAsync(T);
        Assert.Equal(announced, body.Length);
        var older = new Answer(slow.StatusCode, Encoding.UTF8.GetString(body), null, announced, null);
        Assert.Equal(Enumerable.Range(1, 5).Select(i => (long)i), older.Seqs.Concat(later.Select(m => m.Seq)));
    }

    // ------------------------------------------------------------------------------------------------ ack in the query

    [Theory]
    [InlineData("&ack=2&ack=oops")]
    [InlineData("&ack=2&ack=")]
    [InlineData("&ack=2&ack=0")]
    [InlineData("&ack=2&ack=-1")]
    [InlineData("&ack=oops&ack=2")]
    [InlineData("&ack=1&ack=2")]
    public async Task A_repeated_ack_parameter_acknowledges_even_when_another_of_its_values_is_not_a_positive_integer(string query)
    {
        // §9.3: "a value that is not a positive integer is ignored" - ignored, so it cannot undo the valid one.
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        var lp = await OpenAsync(server);
        await SendAsync(server, lp.SessionId, "one");
        await SendAsync(server, lp.SessionId, "two");
        Assert.Equal([1L, 2L], (await lp.PollUntilAsync("two")).Select(m => m.Seq));

        var acking = await lp.PollAsync(query);
        Assert.Equal(HttpStatusCode.OK, acking.Status);

        // A new connection replays from lastAcked + 1 (S4): after the ack of 2, only the new message comes.
        Assert.Equal(HttpStatusCode.OK, (await lp.PollAsync("&open=1")).Status);
        await SendAsync(server, lp.SessionId, "three");
        Assert.Equal([3L], (await lp.PollUntilAsync("three")).Select(m => m.Seq));
    }

    [Theory]
    [InlineData("&ack=1", true)]
    [InlineData("&ack=%31", true)]
    [InlineData("&ack=0001", true)]
    [InlineData("&ack=99999", true)]
    [InlineData("&ack=-1", false)]
    [InlineData("&ack=0", false)]
    [InlineData("&ack=abc", false)]
    [InlineData("&ack=1.0", false)]
    [InlineData("&ack=1e0", false)]
    [InlineData("&ack=", false)]
    public async Task An_ack_on_a_poll_applies_when_it_is_a_positive_integer_is_clamped_above_what_was_sent_and_is_ignored_otherwise(string query, bool acknowledges)
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        var lp = await OpenAsync(server);
        await SendAsync(server, lp.SessionId, "one");
        Assert.Equal([1L], (await lp.PollUntilAsync("one")).Select(m => m.Seq));

        // Any answer but a close: an ack beyond what was sent is clamped, not a protocol error (§9.3).
        var acking = await lp.PollAsync(query);
        Assert.Equal(HttpStatusCode.OK, acking.Status);
        Assert.Null(acking.CloseCode);

        Assert.Equal(HttpStatusCode.OK, (await lp.PollAsync("&open=1")).Status);
        await SendAsync(server, lp.SessionId, "two");
        Assert.Equal(acknowledges ? [2L] : [1L, 2L], (await lp.PollUntilAsync("two")).Select(m => m.Seq));
    }

    // ------------------------------------------------------------------------------------------------ open in the query

    [Fact]
    public async Task An_open_parameter_whose_value_is_percent_encoded_still_opens_a_new_connection_that_replays()
    {
        // §9.0 asks clients to percent-encode query values, and the server decodes session, secret and ack: open=%31 is open=1.
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        var lp = await OpenAsync(server);
        await SendAsync(server, lp.SessionId, "one");
        Assert.Equal([1L], (await lp.PollUntilAsync("one")).Select(m => m.Seq));

        // The answer to 'one' is treated as lost: the client opens a new connection, which must replay it (S4).
        var reopened = await lp.PollAsync("&open=%31");
        Assert.Equal(HttpStatusCode.OK, reopened.Status);
        Assert.Equal(string.Empty, reopened.Body);
        await SendAsync(server, lp.SessionId, "two");
        Assert.Equal([1L, 2L], (await lp.PollUntilAsync("two")).Select(m => m.Seq));
    }

    [Fact]
    public async Task An_open_poll_while_an_older_poll_is_held_answers_the_older_200_and_replays_from_the_last_ack()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(2));
        var lp = await OpenAsync(server);
        foreach (var text in new[] { "one", "two", "three" })
        {
            await SendAsync(server, lp.SessionId, text);
        }

        Assert.Equal([1L, 2L, 3L], (await lp.PollUntilAsync("three")).Select(m => m.Seq));

        // The client acknowledges 1 on a poll that is then held; the rest of that connection's answers are lost.
        var old = Connection(server, lp.SessionId);
        var held = lp.PollAsync("&ack=1");
        await UntilHeldAsync(old);

        var reopened = await lp.PollAsync("&open=1");
        Assert.Equal(HttpStatusCode.OK, reopened.Status);
        Assert.Equal(string.Empty, reopened.Body);

        // §9.3: the connection the server still held is ended first; its held poll gets 200 (the connection ended),
        // not 409 (a newer poll on the same connection) and not a hang.
        var oldAnswer = await held.WaitAsync(T);
        Assert.Equal(HttpStatusCode.OK, oldAnswer.Status);
        Assert.Empty(oldAnswer.Seqs);

        await SendAsync(server, lp.SessionId, "four");
        Assert.Equal([2L, 3L, 4L], (await lp.PollUntilAsync("four")).Select(m => m.Seq));
    }

    // ------------------------------------------------------------------------------------------ POST /send, no poll held

    [Fact]
    public async Task A_send_while_no_poll_is_held_is_accepted_and_its_ack_and_pong_wait_for_the_next_poll()
    {
        var collector = new Collector();
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(10), push => push.AddCollector(collector));
        var lp = await OpenAsync(server);

        var posted = await lp.PostAsync("{\"type\":\"msg\",\"seq\":1,\"contentType\":\"text/plain\",\"data\":\"up\"}\n{\"type\":\"ping\"}\n");
        Assert.Equal(HttpStatusCode.NoContent, posted.Status);
        Assert.Equal("up", (await collector.TakeAsync(1)).Single().GetString());

        // The next poll collects what was queued meanwhile (held, if need be, until the ack is written).
        var frames = new List<Answer>();
        while (frames.Count < 5 && !(frames.Any(f => f.Ack == 1) && frames.Any(f => f.Has("pong"))))
        {
            frames.Add(await lp.PollAsync());
        }

        Assert.Contains(frames, f => f.Ack == 1);
        Assert.Contains(frames, f => f.Has("pong"));
    }

    // ------------------------------------------------------------------------------------ takeover by another transport

    [Theory]
    [InlineData("websocket")]
    [InlineData("sse")]
    public async Task A_held_poll_gets_4409_when_another_transport_takes_the_session_over_and_the_newcomer_gets_the_replay(string transport)
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(10));
        var lp = await OpenAsync(server);
        await SendAsync(server, lp.SessionId, "one");
        Assert.Equal([1L], (await lp.PollUntilAsync("one")).Select(m => m.Seq));

        var held = lp.PollAsync();
        await UntilHeldAsync(Connection(server, lp.SessionId));

        if (transport == "websocket")
        {
            await using var socket = await RawSocket.ConnectAsync(server.WebSocketUrl(lp.SessionId, lp.Secret), lp.SessionId, lp.Secret);
            var superseded = await held.WaitAsync(T);
            Assert.Equal(HttpStatusCode.OK, superseded.Status);
            Assert.Equal(4409, superseded.CloseCode);
            Assert.Contains("\"seq\":1", await socket.ReceiveContainingAsync("\"msg\""), StringComparison.Ordinal);

            // §9.4: while the session is on a WebSocket, a POST has no connection to go to.
            var posted = await lp.PostAsync("{\"type\":\"ping\"}");
            Assert.Equal(HttpStatusCode.Conflict, posted.Status);
            Assert.Equal("no_open_connection", posted.ErrorCode);
        }
        else
        {
            using var sseClient = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
            using var stream = await sseClient.GetAsync(lp.Url("sse"), HttpCompletionOption.ResponseHeadersRead).WaitAsync(T);
            Assert.Equal(HttpStatusCode.OK, stream.StatusCode);
            var superseded = await held.WaitAsync(T);
            Assert.Equal(HttpStatusCode.OK, superseded.Status);
            Assert.Equal(4409, superseded.CloseCode);
            using var reader = new StreamReader(await stream.Content.ReadAsStreamAsync().WaitAsync(T));
            string? line;
            do
            {
                line = await reader.ReadLineAsync().WaitAsync(T);
            }
            while (line is not null && !(line.StartsWith("data: ", StringComparison.Ordinal) && line.Contains("\"msg\"", StringComparison.Ordinal)));

            Assert.NotNull(line);
            Assert.Contains("\"seq\":1", line, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_plain_poll_after_a_websocket_took_over_opens_a_new_connection_and_the_websocket_is_superseded_with_4409()
    {
        // §9.3: any poll when the session has no live long-polling connection opens one; C1: the older one gets 4409.
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(2));
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        var lp = new Poller(server, sessionId, secret);
        await using var socket = await RawSocket.ConnectAsync(server.WebSocketUrl(sessionId, secret), sessionId, secret);
        await SendAsync(server, sessionId, "one");
        Assert.Contains("\"seq\":1", await socket.ReceiveContainingAsync("\"msg\""), StringComparison.Ordinal);

        var opened = await lp.PollAsync();
        Assert.Equal(HttpStatusCode.OK, opened.Status);
        Assert.Equal(string.Empty, opened.Body);
        var (status, closeFrame) = await socket.ReceiveCloseAsync();
        Assert.Equal(4409, status);
        Assert.Contains("4409", closeFrame, StringComparison.Ordinal);

        // Never acknowledged on the WebSocket: replayed on the new long-polling connection.
        await SendAsync(server, sessionId, "two");
        Assert.Equal([1L, 2L], (await lp.PollUntilAsync("two")).Select(m => m.Seq));
    }

    // ---------------------------------------------------------------------------------------------- ended sessions

    [Fact]
    public async Task After_the_client_closes_its_session_with_1000_its_polls_end_in_404_session_not_found()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        var lp = await OpenAsync(server);
        Assert.Equal(HttpStatusCode.NoContent, (await lp.PostAsync("{\"type\":\"close\",\"code\":1000}")).Status);

        // A poll racing the close may still be answered 200 (the connection ended); then the session is gone.
        var answers = new List<Answer>();
        for (var i = 0; i < 4 && (answers.Count == 0 || answers[^1].Status == HttpStatusCode.OK); i++)
        {
            answers.Add(await lp.PollAsync());
        }

        Assert.Equal(HttpStatusCode.NotFound, answers[^1].Status);
        Assert.Equal("session_not_found", answers[^1].ErrorCode);
        Assert.All(answers.Where(a => a.Status == HttpStatusCode.OK), a => Assert.Empty(a.Seqs));
    }

    [Fact]
    public async Task A_server_close_reaches_the_held_poll_and_a_returning_client_hears_1000_again_not_new_frames()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(10));
        var lp = await OpenAsync(server);
        var session = Session(server, lp.SessionId);
        var held = lp.PollAsync();
        await UntilHeldAsync(Connection(server, lp.SessionId));

        await session.CloseAsync();
        var closed = await held.WaitAsync(T);
        Assert.Equal(HttpStatusCode.OK, closed.Status);
        Assert.Equal(1000, closed.CloseCode);

        // §5.6: the close is held for the resume window; a returning client's opening poll is answered at once,
        // empty, and the next poll collects the close again.
        var reopened = await lp.PollAsync("&open=1");
        Assert.Equal(HttpStatusCode.OK, reopened.Status);
        Assert.Equal(string.Empty, reopened.Body);
        var again = await lp.PollAsync();
        Assert.True(again.CloseCode == 1000 && again.Seqs.Count == 0, "the poll after the opening one got " + again);
    }

    [Fact]
    public async Task A_returning_client_of_a_session_the_server_closed_hears_1000_not_the_frames_left_in_an_older_long_polling_connection()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(10));
        var lp = await OpenAsync(server);
        var session = Session(server, lp.SessionId);
        var polling = Connection(server, lp.SessionId);

        // A message waits on the long-polling connection, never collected: the client moved to a WebSocket.
        await SendAsync(server, lp.SessionId, "one");
        await Eventually.TrueAsync(() => polling.HasPending);
        var socket = await RawSocket.ConnectAsync(server.WebSocketUrl(lp.SessionId, lp.Secret), lp.SessionId, lp.Secret);
        try
        {
            Assert.Contains("\"seq\":1", await socket.ReceiveContainingAsync("\"msg\""), StringComparison.Ordinal);
            await socket.SendAsync("{\"type\":\"ack\",\"seq\":1}");
            await Eventually.TrueAsync(() => session.Engine.UnacknowledgedCount == 0);

            // The application closes the session; the WebSocket hears 1000 but is cut before it answers.
            await session.CloseAsync();
            Assert.Contains("1000", await socket.ReceiveContainingAsync("\"close\""), StringComparison.Ordinal);
            socket.Socket.Abort();
        }
        finally
        {
            await socket.DisposeAsync();
        }

        await Eventually.TrueAsync(() => session.CurrentRun is null);

        // §5.6: the client comes back (on long-polling): the opening poll is answered at once, empty, and the next
        // poll collects the held 1000. Nothing of the connection the WebSocket superseded belongs in either.
        var reopened = await lp.PollAsync("&open=1");
        Assert.True(reopened.Status == HttpStatusCode.OK && reopened.Body.Length == 0, "the opening poll got " + reopened);
        var closed = await lp.PollAsync();
        Assert.True(closed.CloseCode == 1000 && closed.Seqs.Count == 0, "the next poll got " + closed);
    }

    // ------------------------------------------------------------------------------------------------- lost answers

    [Fact]
    public async Task A_client_that_drops_a_poll_mid_answer_gets_that_batch_again_on_its_next_connection()
    {
        await using var server = await StartAsync(o =>
        {
            o.MaxMessageBytes = 8 * 1024 * 1024;
            o.LongPollingTimeout = TimeSpan.FromSeconds(2);
        });
        var lp = await OpenAsync(server);
        var session = Session(server, lp.SessionId);
        var big = new string('y', 1_900_000);
        for (var i = 1; i <= 4; i++)
        {
            await SendAsync(server, lp.SessionId, big + i.ToString(CultureInfo.InvariantCulture));
        }

        await Eventually.TrueAsync(() => session.Engine.SentThrough == 4);
        using (var dropping = new HttpClient { Timeout = Timeout.InfiniteTimeSpan })
        {
            using var answer = await dropping.GetAsync(lp.Url("poll"), HttpCompletionOption.ResponseHeadersRead).WaitAsync(T);
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
            await using var body = await answer.Content.ReadAsStreamAsync().WaitAsync(T);
            var some = new byte[100];
            await body.ReadExactlyAsync(some).AsTask().WaitAsync(T);
        }

        // §9.3 "Lost responses": replayed on the session's next connection (S4).
        Assert.Equal(HttpStatusCode.OK, (await lp.PollAsync("&open=1")).Status);
        await SendAsync(server, lp.SessionId, "after");
        Assert.Equal(Enumerable.Range(1, 5).Select(i => (long)i), (await lp.PollUntilAsync("after")).Select(m => m.Seq));
    }

    // ---------------------------------------------------------------------------------- timeouts, heartbeats, abandon

    [Fact]
    public async Task An_idle_held_poll_carries_the_servers_ping_before_the_poll_timeout_and_a_pong_post_is_accepted()
    {
        await using var server = await StartAsync(o =>
        {
            o.HeartbeatInterval = TimeSpan.FromMilliseconds(500);
            o.HeartbeatTimeout = TimeSpan.FromSeconds(2);
            o.LongPollingTimeout = TimeSpan.FromSeconds(20);
        });
        var lp = await OpenAsync(server);

        // Answered long before the 20 s poll timeout, which would answer it empty (§9.3, H2).
        var pinged = await lp.PollAsync();
        Assert.True(pinged.Status == HttpStatusCode.OK && pinged.Has("ping"), "got " + pinged);
        Assert.Equal(HttpStatusCode.NoContent, (await lp.PostAsync("{\"type\":\"pong\"}")).Status);

        // The connection goes on: more pings come, no close for silence.
        var next = await lp.PollAsync();
        Assert.True(next.Status == HttpStatusCode.OK && next.Has("ping") && next.CloseCode is null, "got " + next);
        Assert.Equal(PushChannelState.Connected, Session(server, lp.SessionId).State);
    }

    [Fact]
    public async Task A_connection_abandoned_by_its_client_is_lost_and_the_next_plain_poll_opens_a_new_one_that_replays()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        var lp = await OpenAsync(server);
        var session = Session(server, lp.SessionId);
        await SendAsync(server, lp.SessionId, "one");
        Assert.Equal([1L], (await lp.PollUntilAsync("one")).Select(m => m.Seq));

        // No poll for pollTimeout + 10 s: the connection is lost, the session kept (§9.3, §5.6).
        var disconnected = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        session.StateChanged += (_, e) =>
        {
            if (e.CurrentState == PushChannelState.Disconnected)
            {
                disconnected.TrySetResult();
            }
        };
        await disconnected.Task.WaitAsync(T);

        var opened = await lp.PollAsync();
        Assert.Equal(HttpStatusCode.OK, opened.Status);
        Assert.Equal(string.Empty, opened.Body);
        await SendAsync(server, lp.SessionId, "two");
        Assert.Equal([1L, 2L], (await lp.PollUntilAsync("two")).Select(m => m.Seq));
    }

    [Fact]
    public async Task Every_poll_answer_has_the_documented_status_headers_and_length()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        var lp = new Poller(server, sessionId, secret);

        var opened = await lp.PollAsync("&open=1");
        Assert.Equal((HttpStatusCode.OK, "application/x-ndjson", 0L, "no-store"), (opened.Status, opened.ContentType, opened.ContentLength, opened.CacheControl));

        await SendAsync(server, sessionId, "héllo");
        var data = await lp.PollAsync();
        Assert.Equal((HttpStatusCode.OK, "application/x-ndjson", "no-store"), (data.Status, data.ContentType, data.CacheControl));
        Assert.Equal(Encoding.UTF8.GetByteCount(data.Body), data.ContentLength);
        Assert.EndsWith("\n", data.Body, StringComparison.Ordinal);
        Assert.Equal("héllo", Assert.Single(data.Messages).Data);

        var idle = await lp.PollAsync();
        Assert.Equal((HttpStatusCode.OK, "application/x-ndjson", 0L, "no-store"), (idle.Status, idle.ContentType, idle.ContentLength, idle.CacheControl));
    }

    [Fact]
    public async Task Poll_bodies_stay_within_the_clients_limit_plus_one_byte_and_lose_nothing()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(2));
        using var negotiated = await server.Http.PostAsync(new Uri(server.BaseUrl + "/negotiate"),
            new StringContent("{\"protocolVersion\":1,\"maxMessageBytes\":1024}", Encoding.UTF8, "application/json")).WaitAsync(T);
        var json = JsonDocument.Parse(await negotiated.Content.ReadAsStringAsync()).RootElement;
        var lp = new Poller(server, json.GetProperty("sessionId").GetString()!, json.GetProperty("resumeSecret").GetString()!);
        Assert.Equal(HttpStatusCode.OK, (await lp.PollAsync("&open=1")).Status);

        const int Count = 30;
        for (var i = 1; i <= Count; i++)
        {
            await SendAsync(server, lp.SessionId, new string('z', 200) + i.ToString(CultureInfo.InvariantCulture));
        }

        var seqs = new List<long>();
        for (var polls = 0; polls < 3 * Count && seqs.Count < Count; polls++)
        {
            var answer = await lp.PollAsync(seqs.Count > 0 ? "&ack=" + seqs[^1].ToString(CultureInfo.InvariantCulture) : "");
            Assert.Equal(HttpStatusCode.OK, answer.Status);
            Assert.True(Encoding.UTF8.GetByteCount(answer.Body) <= 1025, $"a poll body of {Encoding.UTF8.GetByteCount(answer.Body)} bytes");
            seqs.AddRange(answer.Seqs);
        }

        Assert.Equal(Enumerable.Range(1, Count).Select(i => (long)i), seqs);
    }

    // ------------------------------------------------------------------------------------------------ other methods

    [Theory]
    [InlineData("HEAD")]
    [InlineData("OPTIONS")]
    [InlineData("PUT")]
    [InlineData("DELETE")]
    [InlineData("PATCH")]
    public async Task Methods_other_than_GET_on_the_poll_endpoint_are_405_and_open_no_connection(string method)
    {
        await using var server = await StartAsync();
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        var lp = new Poller(server, sessionId, secret);
        var answer = await lp.SendAsync(new HttpRequestMessage(new HttpMethod(method), lp.Url("poll", "&open=1")));
        Assert.Equal(HttpStatusCode.MethodNotAllowed, answer.Status);

        // Nothing was opened: a POST still finds no connection (§9.4 check 3).
        var posted = await lp.PostAsync("{\"type\":\"ping\"}");
        Assert.Equal(HttpStatusCode.Conflict, posted.Status);
        Assert.Equal("no_open_connection", posted.ErrorCode);
    }

    [Fact]
    public async Task A_poll_with_the_secret_in_the_header_and_a_repeated_session_parameter_uses_the_first_session()
    {
        await using var server = await StartAsync(o => o.LongPollingTimeout = TimeSpan.FromSeconds(1));
        var (sessionId, secret, _) = await server.NegotiateRawAsync();
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri($"{server.BaseUrl}/poll?session={sessionId}&session=other&open=1&secret=wrong"));
        request.Headers.Add("PushKit-Secret", secret);
        var lp = new Poller(server, sessionId, secret);
        var answer = await lp.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, answer.Status);
        Assert.Equal(string.Empty, answer.Body);
    }
}
