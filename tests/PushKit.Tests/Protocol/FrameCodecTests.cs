using System.Buffers;
using System.Text;
using PushKit.Protocol;

namespace PushKit.Tests.Protocol;

public class FrameCodecTests
{
    private static string Encode(Action<IBufferWriter<byte>> write)
    {
        var buffer = new ArrayBufferWriter<byte>();
        write(buffer);
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    private static Frame ParseOk(string json)
    {
        var status = FrameCodec.TryParse(Encoding.UTF8.GetBytes(json), out var frame, out var error);
        Assert.True(status == FrameParseStatus.Ok, $"{status}: {error}");
        return frame;
    }

    private static Frame RoundTrip(long sequence, PushMessage message) =>
        ParseOk(Encode(w => FrameCodec.WriteMessage(w, sequence, message)));

    [Fact]
    public void AckNow_is_written_only_when_asked_and_read_by_both_paths()
    {
        var message = PushMessage.FromString("awaited");
        var plain = Encode(w => FrameCodec.WriteMessage(w, 3, message));
        var urgent = Encode(w => FrameCodec.WriteMessage(w, 3, message, ackNow: true));
        Assert.DoesNotContain("ackNow", plain, StringComparison.Ordinal);
        Assert.StartsWith("{\"type\":\"msg\",\"seq\":3,\"ackNow\":true,", urgent, StringComparison.Ordinal);
        Assert.False(ParseOk(plain).AckNow);
        Assert.True(ParseOk(urgent).AckNow);
        Assert.True(FrameCodec.TryParseCanonical(Encoding.UTF8.GetBytes(urgent), out var fast) && fast.AckNow);

        // Another peer may place it anywhere, or say false.
        Assert.True(ParseOk("{\"data\":\"x\",\"ackNow\":true,\"seq\":1,\"type\":\"msg\"}").AckNow);
        Assert.False(ParseOk("{\"type\":\"msg\",\"seq\":1,\"ackNow\":false,\"data\":\"x\"}").AckNow);
        Assert.Equal(FrameParseStatus.Malformed, FrameCodec.TryParse("{\"type\":\"msg\",\"seq\":1,\"ackNow\":\"yes\",\"data\":\"x\"}"u8, out _, out var error));
        Assert.Equal("'ackNow' must be true or false.", error);
    }

    [Fact]
    public void Text_message_round_trips_with_every_field()
    {
        var message = new PushMessage("héllo \"wörld\"\n\t\\ 😀"u8.ToArray(), "text/plain; charset=utf-8")
        {
            Id = "m-1",
            Topic = "chat/room-1",
            Headers = new Dictionary<string, string> { ["k"] = "v", ["x-émoji"] = "😀" },
        };

        var json = Encode(w => FrameCodec.WriteMessage(w, 42, message));
        Assert.StartsWith("{\"type\":\"msg\",\"seq\":42,", json, StringComparison.Ordinal);
        Assert.Contains("\"data\":", json, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', json);

        var frame = ParseOk(json);
        Assert.Equal(FrameType.Message, frame.Type);
        Assert.Equal(42, frame.Sequence);
        Assert.Equal(message.Payload.ToArray(), frame.Message!.Payload.ToArray());
        Assert.Equal("m-1", frame.Message.Id);
        Assert.Equal("chat/room-1", frame.Message.Topic);
        Assert.Equal(message.ContentType, frame.Message.ContentType);
        Assert.Equal(message.Headers, frame.Message.Headers);
    }

    [Fact]
    public void Binary_payload_travels_as_base64_and_round_trips_byte_for_byte()
    {
        var payload = new byte[4096];
        new Random(7).NextBytes(payload);
        var json = Encode(w => FrameCodec.WriteMessage(w, 1, new PushMessage(payload)));
        Assert.Contains("\"dataBase64\":", json, StringComparison.Ordinal);
        var frame = ParseOk(json);
        Assert.Equal(payload, frame.Message!.Payload.ToArray());
        Assert.Equal(PushMessage.DefaultContentType, frame.Message.ContentType);
    }

    [Fact]
    public void Textual_content_type_with_invalid_utf8_falls_back_to_base64()
    {
        byte[] payload = [0xC3, 0x28, 0xFF, 0x00];
        var json = Encode(w => FrameCodec.WriteMessage(w, 1, new PushMessage(payload, "text/plain")));
        Assert.Contains("\"dataBase64\":", json, StringComparison.Ordinal);
        Assert.Equal(payload, ParseOk(json).Message!.Payload.ToArray());
    }

    [Fact]
    public void Empty_payload_round_trips()
    {
        Assert.Empty(RoundTrip(3, new PushMessage(ReadOnlyMemory<byte>.Empty)).Message!.Payload.ToArray());
        Assert.Empty(RoundTrip(3, PushMessage.FromString("")).Message!.Payload.ToArray());
    }

    [Fact]
    public void Json_helpers_round_trip()
    {
        var frame = RoundTrip(9, PushMessage.FromJson(new Sample("a", 3), topic: "t"));
        Assert.Equal(PushMessage.JsonContentType, frame.Message!.ContentType);
        Assert.Equal(new Sample("a", 3), frame.Message.GetJson<Sample>());
        Assert.Equal("t", frame.Message.Topic);
    }

    [Fact]
    public void Common_content_types_are_read_without_a_string_per_message()
    {
        foreach (var contentType in new[] { PushMessage.TextContentType, PushMessage.JsonContentType, PushMessage.DefaultContentType })
        {
            var frame = RoundTrip(1, new PushMessage("{}"u8.ToArray(), contentType));
            Assert.Same(contentType, frame.Message!.ContentType);
        }
    }

    [Theory]
    [InlineData("text/html", "text/html")]
    [InlineData("application\\/json", "application/json")]
    [InlineData("text/plain; charset=utf-8; x=1", "text/plain; charset=utf-8; x=1")]
    public void Other_and_escaped_content_types_are_read_as_written(string written, string expected)
    {
        var frame = ParseOk($"{{\"type\":\"msg\",\"seq\":1,\"contentType\":\"{written}\",\"data\":\"x\"}}");
        Assert.Equal(expected, frame.Message!.ContentType);
    }

    [Fact]
    public void Parsing_a_text_message_allocates_its_payload_and_message_and_nothing_per_field()
    {
        var frame = Encoding.UTF8.GetBytes(Encode(w => FrameCodec.WriteMessage(w, 7, PushMessage.FromString(new string('x', 256)))));
        FrameCodec.TryParse(frame, out _, out _);

        var before = GC.GetAllocatedBytesForCurrentThread();
        FrameCodec.TryParse(frame, out var parsed, out _);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        // The 256-byte payload's array (280 B) and the PushMessage (72 B); the type and content type are interned.
        Assert.Equal(256, parsed.Message!.Payload.Length);
        Assert.True(allocated <= 360, $"{allocated} bytes allocated");
    }

    [Fact]
    public void Encoded_body_is_computed_once_per_message()
    {
        var message = PushMessage.FromString("broadcast");
        var first = Encode(w => FrameCodec.WriteMessage(w, 1, message));
        var second = Encode(w => FrameCodec.WriteMessage(w, 2, message));
        Assert.Equal(first.Replace("\"seq\":1,", "\"seq\":2,", StringComparison.Ordinal), second);
        Assert.True(System.Runtime.CompilerServices.Unsafe.AreSame(
            ref System.Runtime.InteropServices.MemoryMarshal.GetReference(message.EncodedBody),
            ref System.Runtime.InteropServices.MemoryMarshal.GetReference(message.EncodedBody)));
    }

    [Theory]
    [InlineData("text/plain", true)]
    [InlineData("text/html; charset=utf-8", true)]
    [InlineData("application/json", true)]
    [InlineData("Application/JSON; charset=utf-8", true)]
    [InlineData("application/vnd.api+json", true)]
    [InlineData("application/octet-stream", false)]
    [InlineData("image/png", false)]
    public void Textual_content_types_are_recognised(string contentType, bool textual) =>
        Assert.Equal(textual, FrameCodec.IsTextual(contentType));

    [Fact]
    public void Control_frames_round_trip()
    {
        Assert.Equal(5, ParseOk(Encode(w => FrameCodec.WriteAck(w, 5))).Sequence);
        Assert.Equal(FrameType.Ack, ParseOk(Encode(w => FrameCodec.WriteAck(w, 0))).Type);
        Assert.Equal(FrameType.Ping, ParseOk(Encode(FrameCodec.WritePing)).Type);
        var skip = ParseOk(Encode(w => FrameCodec.WriteSkip(w, 77)));
        Assert.Equal((FrameType.Skip, 77L), (skip.Type, skip.Sequence));
        Assert.Equal(FrameType.Pong, ParseOk(Encode(FrameCodec.WritePong)).Type);

        var close = ParseOk(Encode(w => FrameCodec.WriteClose(w, PushCloseCode.GoingAway, "bye", 1500)));
        Assert.Equal((FrameType.Close, PushCloseCode.GoingAway, "bye", (int?)1500), (close.Type, close.CloseCode, close.Text, close.RetryAfterMs));

        var error = ParseOk(Encode(w => FrameCodec.WriteError(w, PushErrorCodes.UnknownFrameType, "what?")));
        Assert.Equal((FrameType.Error, PushErrorCodes.UnknownFrameType, "what?"), (error.Type, error.ErrorCode, error.Text));
    }

    [Fact]
    public void Fields_may_come_in_any_order_and_unknown_fields_are_ignored()
    {
        var frame = ParseOk("{\"data\":\"hi\",\"future\":{\"a\":[1,2]},\"seq\":7,\"contentType\":\"text/plain\",\"type\":\"msg\"}");
        Assert.Equal(7, frame.Sequence);
        Assert.Equal("hi", frame.Message!.GetString());
    }

    [Fact]
    public void Unknown_frame_type_is_reported_with_its_name()
    {
        var status = FrameCodec.TryParse("{\"type\":\"teleport\",\"seq\":1}"u8, out _, out var name);
        Assert.Equal(FrameParseStatus.UnknownType, status);
        Assert.Equal("teleport", name);
    }

    [Theory]
    [InlineData("{\"type\":\"future\",\"seq\":-1,\"code\":[1],\"headers\":7}")]
    [InlineData("{\"seq\":\"x\",\"type\":\"future\"}")]
    [InlineData("{\"type\":\"future\",\"ackNow\":\"soon\"}")]
    [InlineData("{\"type\":\"future\",\"id\":5,\"topic\":[],\"contentType\":{},\"reason\":1,\"message\":true}")]
    [InlineData("{\"type\":\"future\",\"data\":\"\\ud800\"}")]
    public void An_unknown_type_is_ignored_whatever_its_fields(string json)
    {
        Assert.Equal(FrameParseStatus.UnknownType, FrameCodec.TryParse(Encoding.UTF8.GetBytes(json), out _, out var name));
        Assert.Equal("future", name);
    }

    [Theory]
    [InlineData("{\"type\":\"future\",\"x\":\"\xFF\"}")]
    [InlineData("{\"type\":\"ack\",\"seq\":1,\"x\":\"\xC3\"}")]
    [InlineData("{\"type\":\"msg\",\"seq\":1,\"data\":\"hi\",\"x\":\"\xED\xA0\x80\"}")]
    [InlineData("{\"type\":\"ping\",\"\xFE\":1}")]
    public void A_frame_that_is_not_valid_UTF8_is_malformed_whatever_its_type(string latin1)
    {
        // RFC 8259 (protocol 3.1): a frame is JSON in UTF-8. The bytes are given one per char (Latin-1), so a frame
        // can hold bytes that are not UTF-8: a lone 0xFF, a truncated sequence, an encoded surrogate.
        var bytes = Encoding.Latin1.GetBytes(latin1);
        Assert.Equal(FrameParseStatus.Malformed, FrameCodec.TryParse(bytes, out _, out var error));
        Assert.Contains("UTF-8", error);
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("not json", "garbage")]
    [InlineData("[1,2]", "array")]
    [InlineData("\"msg\"", "string")]
    [InlineData("{\"seq\":1}", "no type")]
    [InlineData("{\"type\":1}", "numeric type")]
    [InlineData("{\"t\\u0079pe\":\"subscribe\"}", "only an escaped type name")]
    [InlineData("{\"type\":\"msg\",\"seq\":\"x\",\"t\\u0079pe\":\"zzz\"}", "bad msg behind an escaped type name")]
    [InlineData("{\"type\":\"ping\",\"seq\":\"bad\",\"t\\u0079pe\":\"zzz\"}", "bad ping behind an escaped type name")]
    [InlineData("{\"type\":\"zzz\",\"type\":5}", "last type not a string")]
    [InlineData("{\"type\":\"msg\",\"data\":\"x\"}", "msg without seq")]
    [InlineData("{\"type\":\"msg\",\"seq\":0,\"data\":\"x\"}", "msg seq 0")]
    [InlineData("{\"type\":\"msg\",\"seq\":-1,\"data\":\"x\"}", "negative seq")]
    [InlineData("{\"type\":\"msg\",\"seq\":\"1\",\"data\":\"x\"}", "string seq")]
    [InlineData("{\"type\":\"msg\",\"seq\":1.5,\"data\":\"x\"}", "fractional seq")]
    [InlineData("{\"type\":\"msg\",\"seq\":1}", "msg without data")]
    [InlineData("{\"type\":\"msg\",\"seq\":1,\"data\":5}", "numeric data")]
    [InlineData("{\"type\":\"msg\",\"seq\":1,\"dataBase64\":\"!!!\"}", "bad base64")]
    [InlineData("{\"type\":\"msg\",\"seq\":1,\"data\":\"x\",\"headers\":[1]}", "headers not object")]
    [InlineData("{\"type\":\"msg\",\"seq\":1,\"data\":\"x\",\"headers\":{\"a\":1}}", "header not string")]
    [InlineData("{\"type\":\"msg\",\"seq\":1,\"data\":\"\\ud800\"}", "lone surrogate")]
    [InlineData("{\"type\":\"ack\"}", "ack without seq")]
    [InlineData("{\"type\":\"skip\",\"seq\":0}", "skip seq 0")]
    [InlineData("{\"type\":\"close\"}", "close without code")]
    [InlineData("{\"type\":\"error\",\"code\":5}", "numeric error code")]
    [InlineData("{\"type\":\"close\",\"code\":5}", "close code out of range")]
    [InlineData("{\"type\":\"close\",\"code\":1000,\"retryAfterMs\":-5}", "negative retry")]
    [InlineData("{\"type\":\"ping\"", "truncated")]
    [InlineData("{\"type\":\"ping\"}{\"type\":\"pong\"}", "two objects")]
    [InlineData("{\"type\":\"ping\"} x", "trailing data")]
    [InlineData("{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":{\"i\":1}}}}}}}},\"type\":\"ping\"}", "too deep")]
    public void Malformed_frames_are_rejected_with_a_reason(string json, string because)
    {
        var status = FrameCodec.TryParse(Encoding.UTF8.GetBytes(json), out _, out var error);
        Assert.True(status == FrameParseStatus.Malformed, $"{because}: got {status}");
        Assert.False(string.IsNullOrWhiteSpace(error), because);
    }

    [Fact]
    public void Invalid_utf8_in_a_frame_is_malformed()
    {
        byte[] json = [.. "{\"type\":\"msg\",\"seq\":1,\"data\":\""u8, 0xFF, 0xFE, .. "\"}"u8];
        Assert.Equal(FrameParseStatus.Malformed, FrameCodec.TryParse(json, out _, out _));
    }

    [Fact]
    public void Batches_split_on_newlines_and_skip_blank_lines()
    {
        var batch = Encoding.UTF8.GetBytes("{\"type\":\"ping\"}\n\n{\"type\":\"pong\"}\r\n{\"type\":\"ack\",\"seq\":1}\n");
        var lines = FrameCodec.SplitBatch(batch).Select(l => Encoding.UTF8.GetString(l.Span)).ToArray();
        Assert.Equal(["{\"type\":\"ping\"}", "{\"type\":\"pong\"}", "{\"type\":\"ack\",\"seq\":1}"], lines);
    }

    [Fact]
    public void Splitting_a_batch_allocates_nothing()
    {
        // The SSE server splits every batch it writes, once per recipient: the broadcast hot path.
        var batch = Encoding.UTF8.GetBytes("{\"type\":\"msg\",\"seq\":1,\"data\":\"a\"}\n{\"type\":\"msg\",\"seq\":2,\"data\":\"b\"}\r\n");
        static int Count(ReadOnlyMemory<byte> batch)
        {
            var count = 0;
            foreach (var line in FrameCodec.SplitBatch(batch))
            {
                count += line.Length > 0 ? 1 : 0;
            }

            return count;
        }

        Assert.Equal(2, Count(batch));
        var before = GC.GetAllocatedBytesForCurrentThread();
        var lines = Count(batch);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(2, lines);
        Assert.Equal(0, allocated);
    }

    private sealed record Sample(string Name, int Count);
}
