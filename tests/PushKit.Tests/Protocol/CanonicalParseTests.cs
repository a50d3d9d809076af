using System.Buffers;
using System.Text;
using PushKit.Protocol;

namespace PushKit.Tests.Protocol;

/// <summary>
/// Message and ack frames laid out as PushKit writes them are decoded without the JSON reader. That shortcut must never
/// change an outcome: on every input, encoded or damaged, <see cref="FrameCodec.TryParse"/> must give exactly what the
/// general JSON path gives.
/// </summary>
public class CanonicalParseTests
{
    private static readonly string[] s_strings =
    [
        "", "a", "m-1", "chat/room-1", "héllo wörld", "😀 emoji", "quote \" inside", "back\\slash", "tab\tand\nnewline",
        "\u0001control", "<script>&'+", "ünïcödé/topic", new string('x', 300),
    ];

    private static readonly string[] s_contentTypes =
    [
        PushMessage.TextContentType, PushMessage.JsonContentType, PushMessage.DefaultContentType, "text/html", "text/plain",
        "application/vnd.x+json", "text/plain; charset=\"utf-8\"",
    ];

    private static string AsId(string text) => text.Length > PushMessage.MaxIdLength ? text[..PushMessage.MaxIdLength] : text;

    private static byte[] Encode(long sequence, PushMessage message, bool ackNow = false)
    {
        var buffer = new ArrayBufferWriter<byte>();
        FrameCodec.WriteMessage(buffer, sequence, message, ackNow);
        return buffer.WrittenSpan.ToArray();
    }

    private static IEnumerable<byte[]> EncodedFrames(Random random)
    {
        for (var i = 0; i < 400; i++)
        {
            var payload = random.Next(4) switch
            {
                0 => Encoding.UTF8.GetBytes(s_strings[random.Next(s_strings.Length)]),
                1 => [],
                2 => RandomBytes(random, random.Next(1, 64)),
                _ => Encoding.UTF8.GetBytes(new string('y', random.Next(1, 2000))),
            };
            var message = new PushMessage(payload, s_contentTypes[random.Next(s_contentTypes.Length)])
            {
                // Ids are at most 128 characters: the longest string is cut to exactly that.
                Id = random.Next(3) == 0 ? null : AsId(s_strings[random.Next(s_strings.Length)]),
                Topic = random.Next(2) == 0 ? null : s_strings[random.Next(s_strings.Length)],
                Headers = random.Next(5) == 0 ? new Dictionary<string, string> { ["k"] = s_strings[random.Next(s_strings.Length)] } : null,
            };
            var sequence = random.Next(4) switch
            {
                0 => 1,
                1 => random.NextInt64(1, long.MaxValue),
                2 => long.MaxValue,
                _ => random.Next(1, 100_000),
            };
            yield return Encode(sequence, message, ackNow: random.Next(3) == 0);
        }

        foreach (var acked in new long[] { 0, 1, 42, 999_999_999_999_999_999, long.MaxValue })
        {
            var buffer = new ArrayBufferWriter<byte>();
            FrameCodec.WriteAck(buffer, acked);
            yield return buffer.WrittenSpan.ToArray();
        }
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    private static readonly byte[] s_damage = [(byte)'"', (byte)'\\', (byte)' ', (byte)'0', (byte)'9', (byte)'}', (byte)'{', (byte)',', (byte)':', 0x01, 0x0A, 0xC3, 0xFF, (byte)'a', (byte)'-', (byte)'.', (byte)'e'];

    private static IEnumerable<byte[]> Damaged(byte[] frame, Random random)
    {
        for (var i = 0; i < 12; i++)
        {
            var at = random.Next(frame.Length);
            var bytes = frame.ToList();
            switch (random.Next(4))
            {
                case 0:
                    bytes.RemoveRange(at, bytes.Count - at);
                    break;
                case 1:
                    bytes[at] = s_damage[random.Next(s_damage.Length)];
                    break;
                case 2:
                    bytes.Insert(at, s_damage[random.Next(s_damage.Length)]);
                    break;
                default:
                    bytes.RemoveAt(at);
                    break;
            }

            yield return bytes.ToArray();
        }

        // Layouts a peer may legally use that PushKit does not write.
        var text = Encoding.UTF8.GetString(frame);
        yield return Encoding.UTF8.GetBytes(text + " ");
        yield return Encoding.UTF8.GetBytes(text.Replace(",", ", ", StringComparison.Ordinal));
        foreach (var sequence in new[] { "0", "-1", "01", "1.0", "1e2", "9223372036854775808", "18446744073709551616", "" })
        {
            yield return Encoding.UTF8.GetBytes(System.Text.RegularExpressions.Regex.Replace(text, "\"seq\":[0-9]+", $"\"seq\":{sequence}"));
        }

        yield return Encoding.UTF8.GetBytes(text.Replace("{\"type\":\"msg\",", "{\"type\":\"msg\",\"id\":\"first\",", StringComparison.Ordinal));
        foreach (var ackNow in new[] { "false", "1", "\"true\"", "null", "true,\"ackNow\":false" })
        {
            yield return Encoding.UTF8.GetBytes(text.Replace("\"ackNow\":true", "\"ackNow\":" + ackNow, StringComparison.Ordinal));
        }
    }

    /// <returns>Whether the shortcut took the input.</returns>
    private static bool AssertSameOutcome(byte[] input)
    {
        var general = FrameCodec.TryParseGeneral(input, out var expected, out var expectedError);
        var actual = FrameCodec.TryParse(input, out var frame, out var error);
        var shown = Encoding.UTF8.GetString(input);
        Assert.True(general == actual, $"{shown}: {general} vs {actual}");
        Assert.Equal(expectedError, error);
        Assert.Equal(expected.Type, frame.Type);
        Assert.Equal(expected.Sequence, frame.Sequence);
        Assert.Equal(expected.AckNow, frame.AckNow);
        Assert.Equal(expected.Message is null, frame.Message is null);
        if (expected.Message is { } message)
        {
            Assert.Equal(message.Payload.ToArray(), frame.Message!.Payload.ToArray());
            Assert.Equal(message.ContentType, frame.Message.ContentType);
            Assert.Equal(message.Id, frame.Message.Id);
            Assert.Equal(message.Topic, frame.Message.Topic);
            Assert.Equal(message.Headers, frame.Message.Headers);
        }

        if (FrameCodec.TryParseCanonical(input, out _))
        {
            Assert.True(general == FrameParseStatus.Ok, $"the shortcut accepted what the JSON path refuses: {shown}");
            return true;
        }

        return false;
    }

    [Fact]
    public void Every_encoded_frame_decodes_exactly_as_the_JSON_path_decodes_it()
    {
        var random = new Random(20261126);
        var (frames, shortcut) = (0, 0);
        foreach (var frame in EncodedFrames(random))
        {
            frames++;
            shortcut += AssertSameOutcome(frame) ? 1 : 0;
        }

        // Many of them (not those with headers, binary data or escapes outside the data) took the shortcut: it was put to the test.
        Assert.InRange(shortcut, frames / 10, frames);
    }

    [Fact]
    public void Every_damaged_or_differently_laid_out_frame_gets_the_JSON_path_outcome_and_error()
    {
        var random = new Random(5);
        var (inputs, shortcut) = (0, 0);
        foreach (var frame in EncodedFrames(random))
        {
            foreach (var damaged in Damaged(frame, random))
            {
                inputs++;
                shortcut += AssertSameOutcome(damaged) ? 1 : 0;
            }
        }

        // Damage that leaves a valid frame (a changed digit, a byte inside a string) still takes the shortcut.
        Assert.InRange(shortcut, inputs / 50, inputs / 2);
    }

    [Fact]
    public void The_frames_a_peer_receives_most_take_the_shortcut()
    {
        Assert.True(FrameCodec.TryParseCanonical(Encode(7, PushMessage.FromString(new string('x', 256))), out var text));
        Assert.Equal(7, text.Sequence);
        Assert.True(FrameCodec.TryParseCanonical(Encode(8, PushMessage.FromJson(new { a = 1 }, topic: "t")), out _));
        Assert.True(FrameCodec.TryParseCanonical(Encode(9, new PushMessage("hi"u8.ToArray(), "text/plain") { Id = "m-1", Topic = "room" }), out var full));
        Assert.Equal("m-1", full.Message!.Id);
        Assert.Equal("room", full.Message.Topic);

        var ack = new ArrayBufferWriter<byte>();
        FrameCodec.WriteAck(ack, 123);
        Assert.True(FrameCodec.TryParseCanonical(ack.WrittenSpan, out var acked));
        Assert.Equal((FrameType.Ack, 123L), (acked.Type, acked.Sequence));
    }
}
