using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using PushKit.IntegrationTests.Infrastructure;
using PushKit.Protocol;

namespace PushKit.IntegrationTests;

/// <summary>
/// Every property of a <see cref="PushMessage"/> arrives unchanged, both ways, on every transport (or is
/// refused at the sender with a clear error that affects only that send).
/// </summary>
public sealed class MessageFidelityTests
{
    private static readonly string AllControlChars = new(Enumerable.Range(0, 32).Select(i => (char)i).ToArray());

    public static readonly string[] TrickyTexts =
    [
        "",
        "plain",
        "\"quotes\" and \\backslashes\\ and \\\" mixed \\u0041 literal",
        AllControlChars,
        "\u2028line\u2029paragraph",
        "😀 𝄞 🇩🇪 👨‍👩‍👧 \U0010FFFF",
        "\r\n",
        "\n\n",
        "\r",
        "line1\r\nline2\n\nline3\r\r\n",
        "data: injected\n\nid: 99\nevent: open\ndata: {}\n\n",
        ": comment\nretry: 1\n",
        "\uFEFFbom at start",
        "\u0085 NEL \u000B VT \u000C FF \u007F DEL",
        "{\"type\":\"close\",\"code\":1000}\n{\"type\":\"msg\",\"seq\":999,\"data\":\"x\"}",
        "</script><!-- & ' < > +",
        "\u0080\u00FF\uFFFD\uFFFE\uFFFF\uE000",
        " leading and trailing spaces ",
        string.Concat(Enumerable.Repeat("\0\"\\\n😀é", 20_000)),
    ];

    private static readonly byte[] AllBytes = Enumerable.Range(0, 256).Select(i => (byte)i).ToArray();

    // ---------------------------------------------------------------------------------------------------------------
    // Helpers

    private static async Task<PushMessage> ToServerAsync(IPushChannel client, Collector collector, PushMessage message)
    {
        await client.SendAsync(message).AsTask().WaitAsync(TestTimeouts.Default);
        return (await collector.TakeAsync(1)).Single();
    }

    private static async Task<PushMessage> ToClientAsync(PushTestServer server, IPushChannel client, PushMessage message)
    {
        Assert.True(await server.Sender.SendToSessionAsync(client.SessionId!, message).AsTask().WaitAsync(TestTimeouts.Default));
        return (await client.ReadAsync(1)).Single();
    }

    private static string? Differences(string label, PushMessage expected, PushMessage actual, bool compareId = true)
    {
        var problems = new List<string>();
        if (!expected.Payload.Span.SequenceEqual(actual.Payload.Span))
        {
            problems.Add($"payload differs (sent {expected.Payload.Length} bytes [{Hex(expected.Payload.Span)}], got {actual.Payload.Length} bytes [{Hex(actual.Payload.Span)}])");
        }

        if (expected.ContentType != actual.ContentType)
        {
            problems.Add($"contentType '{Escape(expected.ContentType)}' became '{Escape(actual.ContentType)}'");
        }

        if (compareId && expected.Id != actual.Id)
        {
            problems.Add($"id '{Escape(expected.Id)}' became '{Escape(actual.Id)}'");
        }

        if (expected.Topic != actual.Topic)
        {
            problems.Add($"topic '{Escape(expected.Topic)}' became '{Escape(actual.Topic)}'");
        }

        var expectedHeaders = expected.Headers is { Count: > 0 } e ? e.OrderBy(p => p.Key, StringComparer.Ordinal).ToList() : [];
        var actualHeaders = actual.Headers is { Count: > 0 } a ? a.OrderBy(p => p.Key, StringComparer.Ordinal).ToList() : [];
        if (!expectedHeaders.SequenceEqual(actualHeaders))
        {
            problems.Add($"headers [{string.Join(", ", expectedHeaders.Select(p => $"{Escape(p.Key)}={Escape(p.Value)}"))}] became [{string.Join(", ", actualHeaders.Select(p => $"{Escape(p.Key)}={Escape(p.Value)}"))}]");
        }

        return problems.Count == 0 ? null : $"{label}: {string.Join("; ", problems)}";
    }

    private static string Hex(ReadOnlySpan<byte> bytes) => bytes.Length > 24 ? Convert.ToHexString(bytes[..24]) + "…" : Convert.ToHexString(bytes);

    private static string Escape(string? s) => s is null ? "<null>"
        : s.Length > 60 ? Escape(s[..60]) + "…"
        : string.Concat(s.Select(c => c is < ' ' or > '~' ? $"\\u{(int)c:X4}" : c.ToString()));

    private static async Task<List<string>> RoundTripAllAsync(string transport, IReadOnlyList<(string Label, PushMessage Message)> cases)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        var failures = new List<string>();
        foreach (var (label, message) in cases)
        {
            var up = await ToServerAsync(client, collector, message);
            if (Differences($"[{transport}] client->server {label}", message, up, compareId: message.Id is not null) is { } d1)
            {
                failures.Add(d1);
            }

            var down = await ToClientAsync(server, client, message);
            if (Differences($"[{transport}] server->client {label}", message, down) is { } d2)
            {
                failures.Add(d2);
            }
        }

        return failures;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Text

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task tricky_text_round_trips_char_for_char_both_ways(string transport)
    {
        var cases = TrickyTexts.Select((t, i) => ($"text #{i} '{Escape(t)}'", PushMessage.FromString(t))).ToList();
        var failures = await RoundTripAllAsync(transport, cases);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task text_reads_back_with_GetString_and_SendStringAsync(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        foreach (var text in TrickyTexts)
        {
            await client.SendStringAsync(text, topic: "t").AsTask().WaitAsync(TestTimeouts.Default);
            var up = (await collector.TakeAsync(1)).Single();
            Assert.Equal(text, up.GetString());
            Assert.Equal(PushMessage.TextContentType, up.ContentType);
            Assert.Equal("t", up.Topic);

            var down = await ToClientAsync(server, client, PushMessage.FromString(text));
            Assert.Equal(text, down.GetString());
            Assert.Equal(PushMessage.TextContentType, down.ContentType);
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Binary

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task binary_payloads_round_trip_byte_for_byte_both_ways(string transport)
    {
        var random = new Random(42);
        var big = new byte[200_000];
        random.NextBytes(big);
        var cases = new List<(string, PushMessage)>
        {
            ("all 256 bytes, default type", new PushMessage(AllBytes)),
            ("all 256 bytes, octet-stream", new PushMessage(AllBytes, "application/octet-stream")),
            ("empty binary", new PushMessage(Array.Empty<byte>(), "application/octet-stream")),
            ("empty binary, null type", new PushMessage(ReadOnlyMemory<byte>.Empty)),
            ("empty, text type", new PushMessage(Array.Empty<byte>(), "text/plain")),
            ("all 256 bytes declared text", new PushMessage(AllBytes, PushMessage.TextContentType)),
            ("all 256 bytes declared json", new PushMessage(AllBytes, "application/json")),
            ("all 256 bytes declared +json", new PushMessage(AllBytes, "application/problem+json")),
            ("BOM + text declared text", new PushMessage(new byte[] { 0xEF, 0xBB, 0xBF, (byte)'x' }, "text/plain")),
            ("CESU lone surrogate bytes declared text", new PushMessage(new byte[] { 0xED, 0xA0, 0x80, (byte)'x' }, "text/plain")),
            ("overlong NUL declared text", new PushMessage(new byte[] { 0xC0, 0x80 }, "text/plain")),
            ("truncated sequence declared text", new PushMessage(new byte[] { (byte)'a', 0xE2, 0x82 }, "text/plain")),
            ("NUL bytes declared text", new PushMessage(new byte[] { 0, 0, 0 }, "text/plain")),
            ("valid UTF-8 declared binary", new PushMessage(Encoding.UTF8.GetBytes("héllo\n"), "application/octet-stream")),
            ("200 KB random", new PushMessage(big, "application/x-protobuf")),
            ("slice of a larger array", new PushMessage(AllBytes.AsMemory(10, 20), "application/octet-stream")),
        };
        var failures = await RoundTripAllAsync(transport, cases);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Content types, ids, topics, headers

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task content_types_round_trip_unchanged(string transport)
    {
        var payload = Encoding.UTF8.GetBytes("héllo");
        var contentTypes = new[]
        {
            "application/x-protobuf",
            "text/plain; charset=iso-8859-1",
            "TEXT/HTML; Charset=\"UTF-8\"",
            "application/vnd.api+json; charset=utf-8",
            "multipart/mixed; boundary=\"a\\\"b\"",
            "text/plain; name=ü日本😀",
            " text/plain ",
            "x",
            "text/plain\r\nX-Injected: 1",
            "application/json",
            PushMessage.TextContentType,
            PushMessage.DefaultContentType,
            new string('a', 2000) + "/b",
        };
        var cases = contentTypes.Select(ct => ($"contentType '{Escape(ct)}'", new PushMessage(payload, ct))).ToList();
        cases.Add(("latin-1 bytes with charset=iso-8859-1", new PushMessage(Encoding.Latin1.GetBytes("héllo"), "text/plain; charset=iso-8859-1")));
        cases.Add(("null content type", new PushMessage(payload, null)));
        cases.Add(("empty content type", new PushMessage(payload, "")));
        var failures = await RoundTripAllAsync(transport, cases);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Assert.Equal(PushMessage.DefaultContentType, new PushMessage(payload, "").ContentType);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task ids_round_trip_unchanged(string transport)
    {
        var ids = new[]
        {
            new string('i', PushMessage.MaxIdLength),
            string.Concat(Enumerable.Repeat("😀", PushMessage.MaxIdLength / 2)),
            "ключ-ü-日本-🇩🇪",
            "\"\\\n\t\u0000<>&' /?#%",
            AllControlChars,
            "\u2028\u2029",
            "a b",
            " ",
            "",
            "id:1\n\ndata: x",
        };
        var cases = ids.Select((id, i) => ($"id #{i} '{Escape(id)}'", new PushMessage(Encoding.UTF8.GetBytes("p" + i), "text/plain") { Id = id })).ToList();
        var failures = await RoundTripAllAsync(transport, cases);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task topics_and_headers_round_trip_unchanged(string transport)
    {
        var cases = new List<(string, PushMessage)>
        {
            ("tricky topic", new PushMessage(AllBytes, "application/octet-stream") { Topic = "news/\"quoted\"\\😀\n\r\u0000\u2028" }),
            ("empty topic", PushMessage.FromString("x", topic: "")),
            ("headers", new PushMessage(Encoding.UTF8.GetBytes("{}"), "application/json")
            {
                Topic = "t",
                Id = "with-headers",
                Headers = new Dictionary<string, string>
                {
                    ["tenant"] = "acme",
                    ["quote\"key\\"] = "value\n\r\u0000😀",
                    [""] = "empty key",
                    ["empty value"] = "",
                    ["type"] = "close",
                    ["seq"] = "1",
                    ["data"] = "not the data",
                    ["ключ"] = "日本\u2028",
                    [AllControlChars] = AllControlChars,
                },
            }),
        };
        var failures = await RoundTripAllAsync(transport, cases);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task absent_id_stays_absent_when_client_does_not_assign_ids(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport, o => o.AssignMessageIds = false);
        var up = await ToServerAsync(client, collector, PushMessage.FromString("no id"));
        Assert.Null(up.Id);
        Assert.Null(up.Topic);
        Assert.Null(up.Headers);
        var down = await ToClientAsync(server, client, PushMessage.FromString("no id"));
        Assert.Null(down.Id);
        Assert.Null(down.Topic);
        Assert.Null(down.Headers);
    }

    [Fact]
    public void an_id_over_128_characters_is_refused_when_set()
    {
        var ex = Assert.Throws<ArgumentException>(() => new PushMessage(AllBytes) { Id = new string('i', PushMessage.MaxIdLength + 1) });
        Assert.Contains("128", ex.Message, StringComparison.Ordinal);

        // 65 astral characters are 130 UTF-16 code units.
        Assert.Throws<ArgumentException>(() => new PushMessage(AllBytes) { Id = string.Concat(Enumerable.Repeat("😀", 65)) });
    }

    // ---------------------------------------------------------------------------------------------------------------
    // JSON

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task json_round_trips_with_and_without_type_info(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        var value = new FidelityOrder(42, "shipped \"now\" \\ \n\u0000\u2028 😀 日本", ["a", "", "\r\n"], 12.5, new() { ["k\"ey"] = "v\u001F" });

#pragma warning disable IL2026, IL3050 // the reflection overloads are part of what is tested
        await client.SendJsonAsync(value).AsTask().WaitAsync(TestTimeouts.Default);
        var up1 = (await collector.TakeAsync(1)).Single();
        Assert.Equal(PushMessage.JsonContentType, up1.ContentType);
        AssertSame(value, up1.GetJson<FidelityOrder>());
        AssertSame(value, up1.GetJson(FidelityJsonContext.Default.FidelityOrder));

        await client.SendJsonAsync(value, FidelityJsonContext.Default.FidelityOrder).AsTask().WaitAsync(TestTimeouts.Default);
        var up2 = (await collector.TakeAsync(1)).Single();
        Assert.Equal(PushMessage.JsonContentType, up2.ContentType);
        AssertSame(value, up2.GetJson<FidelityOrder>());
        AssertSame(value, up2.GetJson(FidelityJsonContext.Default.FidelityOrder));

        var down1 = await ToClientAsync(server, client, PushMessage.FromJson(value, topic: "orders"));
        Assert.Equal(PushMessage.JsonContentType, down1.ContentType);
        Assert.Equal("orders", down1.Topic);
        AssertSame(value, down1.GetJson<FidelityOrder>());
        AssertSame(value, down1.GetJson(FidelityJsonContext.Default.FidelityOrder));

        var down2 = await ToClientAsync(server, client, PushMessage.FromJson(value, FidelityJsonContext.Default.FidelityOrder));
        Assert.Equal(PushMessage.JsonContentType, down2.ContentType);
        AssertSame(value, down2.GetJson<FidelityOrder>());
        AssertSame(value, down2.GetJson(FidelityJsonContext.Default.FidelityOrder));

        // The JSON bytes themselves arrive unchanged.
        var json = PushMessage.FromJson(value);
        Assert.Equal(json.Payload.ToArray(), (await ToClientAsync(server, client, json)).Payload.ToArray());
#pragma warning restore IL2026, IL3050
    }

    private static void AssertSame(FidelityOrder expected, FidelityOrder? actual)
    {
        Assert.NotNull(actual);
        Assert.Equal(expected.OrderId, actual.OrderId);
        Assert.Equal(expected.Status, actual.Status);
        Assert.Equal(expected.Tags, actual.Tags);
        Assert.Equal(expected.Price, actual.Price);
        Assert.Equal(expected.Extra, actual.Extra);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Size limit: the largest message that fits arrives intact; one byte more is refused at the sender, and only that send.

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task largest_binary_under_the_limit_arrives_and_the_next_size_is_refused_locally(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        const int limit = 1024 * 1024;

        var largest = LargestBinaryThatFits(limit, "big");
        var random = new Random(7);
        var bytes = new byte[largest];
        random.NextBytes(bytes);
        var fits = new PushMessage(bytes, "application/octet-stream") { Id = "big" };
        var tooBig = new PushMessage(new byte[largest + 3], "application/octet-stream") { Id = "big" };
        Assert.True(FrameCodec.MaxMessageFrameLength(tooBig) > limit);

        var up = await ToServerAsync(client, collector, fits);
        Assert.True(up.Payload.Span.SequenceEqual(bytes), "client->server payload differs");
        var upError = await Assert.ThrowsAsync<PushMessageTooLargeException>(() => client.SendAsync(tooBig).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal(limit, upError.LimitBytes);

        var down = await ToClientAsync(server, client, fits);
        Assert.True(down.Payload.Span.SequenceEqual(bytes), "server->client payload differs");
        var downError = await Assert.ThrowsAsync<PushMessageTooLargeException>(() => server.Sender.SendToSessionAsync(client.SessionId!, tooBig).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal(limit, downError.LimitBytes);

        // Only those sends failed: the channel carries on both ways.
        Assert.Equal("after", (await ToServerAsync(client, collector, PushMessage.FromString("after"))).GetString());
        Assert.Equal("after", (await ToClientAsync(server, client, PushMessage.FromString("after"))).GetString());
        Assert.Equal(PushChannelState.Connected, client.State);
    }

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task largest_escaped_text_under_the_limit_arrives_intact(string transport)
    {
        // Control characters are escaped six-fold (\u0000): the limit counts the escaped frame.
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        const int limit = 1024 * 1024;
        var probe = PushMessage.FromString("") is var empty ? FrameCodec.MaxMessageFrameLength(new PushMessage(empty.Payload, empty.ContentType) { Id = "t" }) : 0;
        var count = (limit - probe) / 6;
        var text = new string('\u0001', count);
        var fits = new PushMessage(Encoding.UTF8.GetBytes(text), PushMessage.TextContentType) { Id = "t" };
        Assert.True(FrameCodec.MaxMessageFrameLength(fits) <= limit);

        Assert.Equal(text, (await ToServerAsync(client, collector, fits)).GetString());
        Assert.Equal(text, (await ToClientAsync(server, client, fits)).GetString());

        var tooBig = new PushMessage(Encoding.UTF8.GetBytes(text + "\u0001\u0001"), PushMessage.TextContentType) { Id = "t2" };
        Assert.True(FrameCodec.MaxMessageFrameLength(tooBig) > limit);
        await Assert.ThrowsAsync<PushMessageTooLargeException>(() => client.SendAsync(tooBig).AsTask().WaitAsync(TestTimeouts.Default));
        await Assert.ThrowsAsync<PushMessageTooLargeException>(() => server.Sender.SendToSessionAsync(client.SessionId!, tooBig).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal("after", (await ToServerAsync(client, collector, PushMessage.FromString("after"))).GetString());
    }

    private static int LargestBinaryThatFits(int limit, string id)
    {
        var n = (limit / 4 * 3) - 300;
        while (FrameCodec.MaxMessageFrameLength(new PushMessage(new byte[n + 1], "application/octet-stream") { Id = id }) <= limit)
        {
            n++;
        }

        Assert.True(FrameCodec.MaxMessageFrameLength(new PushMessage(new byte[n], "application/octet-stream") { Id = id }) <= limit);
        return n;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Invalid UTF-16 (lone surrogates)

    [Theory]
    [MemberData(nameof(Transports.All), MemberType = typeof(Transports))]
    public async Task lone_surrogate_text_does_not_break_the_connection(string transport)
    {
        var collector = new Collector();
        await using var server = await PushTestServer.StartAsync(push => push.AddCollector(collector));
        var client = await server.ConnectClientAsync(transport);
        var text = "a\uD800b\uDC00c";

        // As FromString's XML docs say: it encodes with Encoding.UTF8, which replaces each lone surrogate with U+FFFD.
        var message = PushMessage.FromString(text);
        Assert.Equal("a\uFFFDb\uFFFDc", message.GetString());

        Assert.Equal("a\uFFFDb\uFFFDc", (await ToServerAsync(client, collector, message)).GetString());
        Assert.Equal("a\uFFFDb\uFFFDc", (await ToClientAsync(server, client, message)).GetString());
        Assert.Equal("next", (await ToServerAsync(client, collector, PushMessage.FromString("next"))).GetString());
        Assert.Equal("next", (await ToClientAsync(server, client, PushMessage.FromString("next"))).GetString());
    }

    /// <summary>
    /// A string field (id, topic, header name or value, content type) holding an unpaired surrogate cannot travel as
    /// UTF-8: the wire carried U+FFFD instead, so the receiver got another string (and two ids that differed only
    /// there became one, the second acknowledged as a repeat and never applied). It is refused when the message is
    /// made, naming the field, before anything can be sent.
    /// </summary>
    [Theory]
    [InlineData("id", "PushMessage.Id")]
    [InlineData("topic", "PushMessage.Topic")]
    [InlineData("headerKey", "PushMessage.Headers name")]
    [InlineData("headerValue", "PushMessage.Headers['k']")]
    [InlineData("contentType", "PushMessage.ContentType")]
    [InlineData("lowFirst", "PushMessage.Id")]
    [InlineData("highAtEnd", "PushMessage.Id")]
    public void An_unpaired_surrogate_in_a_string_field_is_refused_when_the_message_is_made(string field, string named)
    {
        const string bad = "x\uD800y";
        var payload = Encoding.UTF8.GetBytes("payload");
        var error = Assert.Throws<ArgumentException>(() => field switch
        {
            "id" => new PushMessage(payload, "text/plain") { Id = bad },
            "topic" => new PushMessage(payload, "text/plain") { Topic = bad },
            "headerKey" => new PushMessage(payload, "text/plain") { Headers = new Dictionary<string, string> { [bad] = "v" } },
            "headerValue" => new PushMessage(payload, "text/plain") { Headers = new Dictionary<string, string> { ["k"] = bad } },
            "contentType" => new PushMessage(payload, "text/" + bad),
            "lowFirst" => new PushMessage(payload) { Id = "a\uDC00\uD800" },
            "highAtEnd" => new PushMessage(payload) { Id = "ab\uD83D" },
            _ => throw new ArgumentOutOfRangeException(nameof(field)),
        });
        Assert.Contains(named, error.Message, StringComparison.Ordinal);
        Assert.Contains("unpaired surrogate", error.Message, StringComparison.Ordinal);

        // Surrogate pairs (an emoji) are well-formed and accepted everywhere.
        _ = new PushMessage(payload, "text/😀") { Id = "😀", Topic = "😀", Headers = new Dictionary<string, string> { ["😀"] = "😀" } };
    }

    /// <summary>
    /// A header whose value is null (possible at run time despite the annotation) went on the wire as
    /// <c>"headers":{"k":null}</c>, which every receiver refuses as malformed (protocol.md §3.2: "Every value MUST be a
    /// string"): the message could never be delivered, and its replays cut the connection again and again, on every
    /// transport, both ways. It is refused when the message is made.
    /// </summary>
    [Fact]
    public void A_null_header_value_is_refused_when_the_message_is_made()
    {
        var error = Assert.Throws<ArgumentException>(() =>
            new PushMessage(Encoding.UTF8.GetBytes("p"), "text/plain") { Headers = new Dictionary<string, string> { ["k"] = null! } });
        Assert.Contains("PushMessage.Headers['k'] is null", error.Message, StringComparison.Ordinal);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Broadcast: one encoding shared by many recipients on different transports.

    [Fact]
    public async Task a_broadcast_reaches_every_transport_identically()
    {
        await using var server = await PushTestServer.StartAsync();
        var clients = new List<IPushChannel>();
        foreach (var transport in new[] { "websocket", "sse", "longpolling" })
        {
            clients.Add(await server.ConnectClientAsync(transport));
        }

        var message = new PushMessage(AllBytes, "application/x-custom; v=1") { Id = "b-😀", Topic = "t\n", Headers = new Dictionary<string, string> { ["h"] = "\u0000" } };
        var text = PushMessage.FromString(TrickyTexts[3] + TrickyTexts[10]);
        Assert.Equal(3, await server.Sender.BroadcastAsync(message).AsTask().WaitAsync(TestTimeouts.Default));
        Assert.Equal(3, await server.Sender.BroadcastAsync(text).AsTask().WaitAsync(TestTimeouts.Default));
        foreach (var client in clients)
        {
            var got = await client.ReadAsync(2);
            Assert.Null(Differences(client.Transport!, message, got[0]));
            Assert.Null(Differences(client.Transport!, text, got[1]));
        }
    }
}

public sealed record FidelityOrder(int OrderId, string Status, string[] Tags, double Price, Dictionary<string, string> Extra);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(FidelityOrder))]
internal sealed partial class FidelityJsonContext : JsonSerializerContext;
