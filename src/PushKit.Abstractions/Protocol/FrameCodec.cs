using System.Buffers;
using System.Buffers.Text;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Unicode;

namespace PushKit.Protocol;

/// <summary>
/// Encodes and decodes protocol version 1 frames: one JSON object per frame, frames in a batch separated by
/// <c>\n</c>. See <c>docs/protocol.md</c>.
/// </summary>
internal static class FrameCodec
{
    public const byte Separator = (byte)'\n';

    private static readonly JsonWriterOptions s_writerOptions = new()
    {
        // Payload text stays readable and compact; quotes, backslashes and control characters are still escaped,
        // so an encoded frame never contains a raw newline.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        SkipValidation = true,
    };

    private static readonly JsonReaderOptions s_readerOptions = new() { MaxDepth = 8 };

    private static ReadOnlySpan<byte> MessagePrefix => "{\"type\":\"msg\",\"seq\":"u8;
    private static ReadOnlySpan<byte> AckNowField => "\"ackNow\":true,"u8;
    private static ReadOnlySpan<byte> AckPrefix => "{\"type\":\"ack\",\"seq\":"u8;
    private static ReadOnlySpan<byte> SkipPrefix => "{\"type\":\"skip\",\"seq\":"u8;
    private static ReadOnlySpan<byte> PingFrame => "{\"type\":\"ping\"}"u8;
    private static ReadOnlySpan<byte> PongFrame => "{\"type\":\"pong\"}"u8;

    [ThreadStatic]
    private static ArrayBufferWriter<byte>? t_scratch;

    /// <summary>Reads the sequence number of a message frame written by <see cref="WriteMessage"/>; false for any other frame.</summary>
    public static bool TryGetMessageSequence(ReadOnlySpan<byte> frame, out long sequence)
    {
        sequence = 0;
        return frame.StartsWith(MessagePrefix)
            && Utf8Parser.TryParse(frame[MessagePrefix.Length..], out sequence, out _);
    }

    /// <summary>The encoded size of a message frame for <paramref name="message"/> at the largest sequence number.</summary>
    public static int MaxMessageFrameLength(PushMessage message) => MessagePrefix.Length + 20 + 1 + AckNowField.Length + message.EncodedBody.Length;

    /// <summary>
    /// Writes a message frame; <paramref name="ackNow"/> adds <c>"ackNow":true</c>: the sender waits for this message's
    /// acknowledgement, so the receiver should not hold its ack back (protocol A2).
    /// </summary>
    public static void WriteMessage(IBufferWriter<byte> output, long sequence, PushMessage message, bool ackNow = false)
    {
        var body = message.EncodedBody;
        var span = output.GetSpan(MessagePrefix.Length + 21 + AckNowField.Length + body.Length);
        MessagePrefix.CopyTo(span);
        var written = MessagePrefix.Length;
        Utf8Formatter.TryFormat(sequence, span[written..], out var n);
        written += n;
        span[written++] = (byte)',';
        if (ackNow)
        {
            AckNowField.CopyTo(span[written..]);
            written += AckNowField.Length;
        }

        body.CopyTo(span[written..]);
        output.Advance(written + body.Length);
    }

    public static void WriteAck(IBufferWriter<byte> output, long sequence) => WriteSequenceFrame(output, AckPrefix, sequence);

    /// <summary>Writes a skip frame: messages up to <paramref name="sequence"/> that the receiver lacks were dropped by the sender.</summary>
    public static void WriteSkip(IBufferWriter<byte> output, long sequence) => WriteSequenceFrame(output, SkipPrefix, sequence);

    private static void WriteSequenceFrame(IBufferWriter<byte> output, ReadOnlySpan<byte> prefix, long sequence)
    {
        var span = output.GetSpan(prefix.Length + 21);
        prefix.CopyTo(span);
        var written = prefix.Length;
        Utf8Formatter.TryFormat(sequence, span[written..], out var n);
        written += n;
        span[written++] = (byte)'}';
        output.Advance(written);
    }

    public static void WritePing(IBufferWriter<byte> output) => output.Write(PingFrame);

    public static void WritePong(IBufferWriter<byte> output) => output.Write(PongFrame);

    public static void WriteClose(IBufferWriter<byte> output, PushCloseCode code, string? reason, int? retryAfterMs)
    {
        using var writer = new Utf8JsonWriter(output, s_writerOptions);
        writer.WriteStartObject();
        writer.WriteString("type"u8, "close"u8);
        writer.WriteNumber("code"u8, (int)code);
        if (reason is not null)
        {
            writer.WriteString("reason"u8, reason);
        }

        if (retryAfterMs is { } retry)
        {
            writer.WriteNumber("retryAfterMs"u8, retry);
        }

        writer.WriteEndObject();
    }

    public static void WriteError(IBufferWriter<byte> output, string code, string message)
    {
        using var writer = new Utf8JsonWriter(output, s_writerOptions);
        writer.WriteStartObject();
        writer.WriteString("type"u8, "error"u8);
        writer.WriteString("code"u8, code);
        writer.WriteString("message"u8, message);
        writer.WriteEndObject();
    }

    /// <summary>Encodes the part of a message frame that follows <c>"seq":N,</c>, up to and including the closing brace.</summary>
    internal static byte[] EncodeMessageBody(PushMessage message)
    {
        var scratch = t_scratch ??= new ArrayBufferWriter<byte>(256);
        scratch.ResetWrittenCount();
        using (var writer = new Utf8JsonWriter(scratch, s_writerOptions))
        {
            writer.WriteStartObject();
            if (message.Id is not null)
            {
                writer.WriteString("id"u8, message.Id);
            }

            if (message.Topic is not null)
            {
                writer.WriteString("topic"u8, message.Topic);
            }

            writer.WriteString("contentType"u8, message.ContentType);
            if (message.Headers is { Count: > 0 } headers)
            {
                writer.WriteStartObject("headers"u8);
                foreach (var (key, value) in headers)
                {
                    writer.WriteString(key, value);
                }

                writer.WriteEndObject();
            }

            var payload = message.Payload.Span;
            if (IsTextual(message.ContentType) && Utf8.IsValid(payload))
            {
                writer.WriteString("data"u8, payload);
            }
            else
            {
                writer.WriteBase64String("dataBase64"u8, payload);
            }

            writer.WriteEndObject();
        }

        // Drop the opening brace: the frame writer supplies "{"type":"msg","seq":N," in its place.
        var body = scratch.WrittenSpan[1..].ToArray();
        if (scratch.Capacity > 64 * 1024)
        {
            t_scratch = null;
        }

        return body;
    }

    /// <summary>Whether a payload of this content type travels as a JSON string (when it is valid UTF-8) rather than base64.</summary>
    internal static bool IsTextual(string contentType)
    {
        var mediaType = contentType.AsSpan();
        var semicolon = mediaType.IndexOf(';');
        if (semicolon >= 0)
        {
            mediaType = mediaType[..semicolon];
        }

        mediaType = mediaType.Trim();
        return mediaType.StartsWith("text/", StringComparison.OrdinalIgnoreCase)
            || mediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase)
            || mediaType.EndsWith("+json", StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>
    /// Yields each non-empty line of <paramref name="batch"/>. Lines are separated by
    /// <c>\n</c>; a trailing <c>\r</c> is ignored.
    /// </summary>
    /// <remarks>
    /// A struct with a struct enumerator: <c>foreach</c> over it allocates nothing. The SSE server splits every batch
    /// it writes, once per recipient, so an iterator object here was garbage per message and recipient.
    /// </remarks>
    public static FrameLines SplitBatch(ReadOnlyMemory<byte> batch) => new(batch);

    /// <summary>Decodes one frame.</summary>
    /// <param name="json">The frame's UTF-8 JSON.</param>
    /// <param name="frame">The frame, when the result is <see cref="FrameParseStatus.Ok"/>.</param>
    /// <param name="error">What is wrong (Malformed), or the unknown type name (UnknownType).</param>
    public static FrameParseStatus TryParse(ReadOnlySpan<byte> json, out Frame frame, out string? error)
    {
        if (TryParseCanonical(json, out frame))
        {
            error = null;
            return FrameParseStatus.Ok;
        }

        return TryParseGeneral(json, out frame, out error);
    }

    /// <summary>Decodes one frame with the JSON reader: any valid layout, and the error for an invalid one.</summary>
    internal static FrameParseStatus TryParseGeneral(ReadOnlySpan<byte> json, out Frame frame, out string? error)
    {
        frame = default;

        // RFC 8259 (protocol 3.1): a frame is UTF-8. The JSON reader checks the strings it decodes, not the ones it
        // skips (unknown fields, every field of an unknown type), so the whole frame is checked here. This path is
        // for frames not laid out as PushKit writes them; the canonical path checks each string it takes.
        if (!Utf8.IsValid(json))
        {
            error = "A frame must be valid UTF-8.";
            return FrameParseStatus.Malformed;
        }

        FrameParseStatus status;
        try
        {
            status = TryParseCore(json, out frame, out error);
        }
        catch (JsonException ex)
        {
            error = "Invalid JSON: " + ex.Message;
            status = FrameParseStatus.Malformed;
        }
        catch (InvalidOperationException ex)
        {
            // Raised by Utf8JsonReader accessors when a value has the wrong token type or invalid escapes.
            error = "Invalid field value: " + ex.Message;
            status = FrameParseStatus.Malformed;
        }

        // A frame of a type this version does not know is ignored, whatever its fields look like: a later protocol
        // revision may give known field names other meanings. Only well-formed JSON with a string 'type' is required.
        if (status == FrameParseStatus.Malformed && PeekType(json) is { } type && !IsKnownType(type))
        {
            frame = default;
            error = type;
            return FrameParseStatus.UnknownType;
        }

        return status;
    }

    private static FrameParseStatus TryParseCore(ReadOnlySpan<byte> json, out Frame frame, out string? error)
    {
        frame = default;
        error = null;
        var reader = new Utf8JsonReader(json, s_readerOptions);
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            error = "A frame must be a JSON object.";
            return FrameParseStatus.Malformed;
        }

        string? type = null;
        long? seq = null;
        string? id = null, topic = null, contentType = null, text = null, errorCode = null;
        int? code = null, retryAfterMs = null;
        Dictionary<string, string>? headers = null;
        byte[]? data = null;
        var dataLength = 0;
        var hasData = false;
        var ackNow = false;

        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var name = reader.ValueSpan;
            var escapedName = reader.ValueIsEscaped;
            if (!reader.Read())
            {
                break;
            }

            if (escapedName)
            {
                reader.Skip();
                continue;
            }

            if (name.SequenceEqual("type"u8))
            {
                type = ReadType(ref reader);
            }
            else if (name.SequenceEqual("seq"u8))
            {
                if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out var s) || s < 0)
                {
                    error = "'seq' must be a non-negative integer.";
                    return FrameParseStatus.Malformed;
                }

                seq = s;
            }
            else if (name.SequenceEqual("id"u8))
            {
                id = ReadString(ref reader, "id");
                if (id is { Length: > PushMessage.MaxIdLength })
                {
                    error = $"'id' must be at most {PushMessage.MaxIdLength} characters (was {id.Length}).";
                    return FrameParseStatus.Malformed;
                }
            }
            else if (name.SequenceEqual("ackNow"u8))
            {
                if (reader.TokenType is not (JsonTokenType.True or JsonTokenType.False))
                {
                    error = "'ackNow' must be true or false.";
                    return FrameParseStatus.Malformed;
                }

                ackNow = reader.TokenType == JsonTokenType.True;
            }
            else if (name.SequenceEqual("topic"u8))
            {
                topic = ReadString(ref reader, "topic");
            }
            else if (name.SequenceEqual("contentType"u8))
            {
                contentType = ReadContentType(ref reader);
            }
            else if (name.SequenceEqual("reason"u8) || name.SequenceEqual("message"u8))
            {
                text = ReadString(ref reader, "reason/message");
            }
            else if (name.SequenceEqual("code"u8))
            {
                if (reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out var c))
                {
                    code = c;
                }
                else if (reader.TokenType == JsonTokenType.String)
                {
                    errorCode = reader.GetString();
                }
                else
                {
                    error = "'code' must be a number (close) or a string (error).";
                    return FrameParseStatus.Malformed;
                }
            }
            else if (name.SequenceEqual("retryAfterMs"u8))
            {
                if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt32(out var r) || r < 0)
                {
                    error = "'retryAfterMs' must be a non-negative integer.";
                    return FrameParseStatus.Malformed;
                }

                retryAfterMs = r;
            }
            else if (name.SequenceEqual("headers"u8))
            {
                if (reader.TokenType != JsonTokenType.StartObject)
                {
                    error = "'headers' must be an object of strings.";
                    return FrameParseStatus.Malformed;
                }

                headers = new Dictionary<string, string>(StringComparer.Ordinal);
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    var key = reader.GetString()!;
                    if (!reader.Read() || reader.TokenType != JsonTokenType.String)
                    {
                        error = "'headers' must be an object of strings.";
                        return FrameParseStatus.Malformed;
                    }

                    headers[key] = reader.GetString()!;
                }
            }
            else if (name.SequenceEqual("data"u8))
            {
                if (reader.TokenType != JsonTokenType.String)
                {
                    error = "'data' must be a string.";
                    return FrameParseStatus.Malformed;
                }

                if (reader.ValueIsEscaped)
                {
                    data = new byte[reader.ValueSpan.Length];
                    dataLength = reader.CopyString(data);
                }
                else
                {
                    if (!Utf8.IsValid(reader.ValueSpan))
                    {
                        error = "'data' is not valid UTF-8.";
                        return FrameParseStatus.Malformed;
                    }

                    data = reader.ValueSpan.ToArray();
                    dataLength = data.Length;
                }

                hasData = true;
            }
            else if (name.SequenceEqual("dataBase64"u8))
            {
                if (reader.TokenType != JsonTokenType.String || !reader.TryGetBytesFromBase64(out data))
                {
                    error = "'dataBase64' must be a base64 string.";
                    return FrameParseStatus.Malformed;
                }

                dataLength = data.Length;
                hasData = true;
            }
            else
            {
                // Unknown fields are ignored so that later protocol revisions can add some.
                reader.Skip();
            }
        }

        if (reader.TokenType != JsonTokenType.EndObject || reader.CurrentDepth != 0)
        {
            error = "A frame must be one complete JSON object.";
            return FrameParseStatus.Malformed;
        }

        if (reader.Read())
        {
            error = "Unexpected data after the frame's JSON object.";
            return FrameParseStatus.Malformed;
        }

        switch (type)
        {
            case null:
                error = "A frame needs a 'type'.";
                return FrameParseStatus.Malformed;
            case "msg":
                if (seq is not { } msgSeq || msgSeq < 1)
                {
                    error = "A 'msg' frame needs 'seq' of 1 or more.";
                    return FrameParseStatus.Malformed;
                }

                if (!hasData)
                {
                    error = "A 'msg' frame needs 'data' or 'dataBase64'.";
                    return FrameParseStatus.Malformed;
                }

                frame = new Frame
                {
                    Type = FrameType.Message,
                    Sequence = msgSeq,
                    AckNow = ackNow,
                    Message = new PushMessage(data.AsMemory(0, dataLength), contentType) { Id = id, Topic = topic, Headers = headers },
                };
                return FrameParseStatus.Ok;
            case "ack":
                if (seq is not { } ackSeq)
                {
                    error = "An 'ack' frame needs 'seq'.";
                    return FrameParseStatus.Malformed;
                }

                frame = new Frame { Type = FrameType.Ack, Sequence = ackSeq };
                return FrameParseStatus.Ok;
            case "ping":
                frame = new Frame { Type = FrameType.Ping };
                return FrameParseStatus.Ok;
            case "pong":
                frame = new Frame { Type = FrameType.Pong };
                return FrameParseStatus.Ok;
            case "close":
                if (code is not { } closeCode || closeCode is < 1000 or > 4999)
                {
                    error = "A 'close' frame needs a numeric 'code' from 1000 to 4999.";
                    return FrameParseStatus.Malformed;
                }

                frame = new Frame { Type = FrameType.Close, CloseCode = (PushCloseCode)closeCode, Text = text, RetryAfterMs = retryAfterMs };
                return FrameParseStatus.Ok;
            case "error":
                if (code is not null)
                {
                    error = "An 'error' frame's 'code' must be a string.";
                    return FrameParseStatus.Malformed;
                }

                frame = new Frame { Type = FrameType.Error, ErrorCode = errorCode ?? "unknown", Text = text };
                return FrameParseStatus.Ok;
            case "skip":
                if (seq is not { } skipSeq || skipSeq < 1)
                {
                    error = "A 'skip' frame needs 'seq' of 1 or more.";
                    return FrameParseStatus.Malformed;
                }

                frame = new Frame { Type = FrameType.Skip, Sequence = skipSeq };
                return FrameParseStatus.Ok;
            default:
                error = type;
                return FrameParseStatus.UnknownType;
        }
    }

    private static ReadOnlySpan<byte> IdField => "\"id\":\""u8;
    private static ReadOnlySpan<byte> TopicField => "\"topic\":\""u8;
    private static ReadOnlySpan<byte> ContentTypeField => "\"contentType\":\""u8;
    private static ReadOnlySpan<byte> DataField => "\"data\":\""u8;

    /// <summary>
    /// Decodes, without the JSON reader, a message or ack frame laid out exactly as <see cref="WriteMessage"/> and
    /// <see cref="WriteAck"/> write them (fields in that order, no whitespace, no escapes, no headers, text data): the
    /// frames a peer receives by the thousand. Anything else returns false and goes to <see cref="TryParseGeneral"/>,
    /// which accepts every valid layout and explains what is wrong with an invalid one; what this accepts, that
    /// decodes to the same frame.
    /// </summary>
    internal static bool TryParseCanonical(ReadOnlySpan<byte> json, out Frame frame)
    {
        frame = default;
        if (json.StartsWith(AckPrefix))
        {
            var ack = json[AckPrefix.Length..];
            if (TryTakeSequence(ref ack, (byte)'}', allowZero: true, out var acked) && ack.IsEmpty)
            {
                frame = new Frame { Type = FrameType.Ack, Sequence = acked };
                return true;
            }

            return false;
        }

        if (!json.StartsWith(MessagePrefix))
        {
            return false;
        }

        var rest = json[MessagePrefix.Length..];
        if (!TryTakeSequence(ref rest, (byte)',', allowZero: false, out var sequence))
        {
            return false;
        }

        var ackNow = rest.StartsWith(AckNowField);
        if (ackNow)
        {
            rest = rest[AckNowField.Length..];
        }

        string? id = null, topic = null;
        if (rest.StartsWith(IdField))
        {
            if (!TryTakeString(ref rest, IdField.Length, (byte)',', out var value) || !Utf8.IsValid(value))
            {
                return false;
            }

            id = Encoding.UTF8.GetString(value);
            if (id.Length > PushMessage.MaxIdLength)
            {
                // The general path says why.
                return false;
            }
        }

        if (rest.StartsWith(TopicField))
        {
            if (!TryTakeString(ref rest, TopicField.Length, (byte)',', out var value) || !Utf8.IsValid(value))
            {
                return false;
            }

            topic = Encoding.UTF8.GetString(value);
        }

        if (!rest.StartsWith(ContentTypeField)
            || !TryTakeString(ref rest, ContentTypeField.Length, (byte)',', out var contentTypeBytes)
            || !Utf8.IsValid(contentTypeBytes)
            || !rest.StartsWith(DataField))
        {
            return false;
        }

        // The data may hold escapes (JSON text always does: its quotes); they are undone as the JSON path undoes them.
        var quoted = rest[(DataField.Length - 1)..];
        if (!TryTakeString(ref rest, DataField.Length, (byte)'}', out var data, allowEscapes: true) || !rest.IsEmpty)
        {
            return false;
        }

        ReadOnlyMemory<byte> payload;
        if (data.IndexOf((byte)'\\') < 0)
        {
            if (!Utf8.IsValid(data))
            {
                return false;
            }

            payload = data.ToArray();
        }
        else if (!TryUnescape(quoted[..(data.Length + 2)], out payload))
        {
            return false;
        }

        var contentType = InternedContentType(contentTypeBytes) ?? Encoding.UTF8.GetString(contentTypeBytes);
        frame = new Frame
        {
            Type = FrameType.Message,
            Sequence = sequence,
            AckNow = ackNow,
            Message = new PushMessage(payload, contentType) { Id = id, Topic = topic },
        };
        return true;
    }

    /// <summary>Undoes the escapes of one quoted JSON string, with the JSON reader (false when it refuses the string).</summary>
    private static bool TryUnescape(ReadOnlySpan<byte> quoted, out ReadOnlyMemory<byte> value)
    {
        value = default;
        try
        {
            var reader = new Utf8JsonReader(quoted, s_readerOptions);
            if (!reader.Read() || reader.TokenType != JsonTokenType.String)
            {
                return false;
            }

            var buffer = new byte[reader.ValueSpan.Length];
            value = buffer.AsMemory(0, reader.CopyString(buffer));
            return true;
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException)
        {
            return false;
        }
    }

    /// <summary>Takes a JSON integer without sign, exponent or leading zero (at most 18 digits) and the byte after it.</summary>
    private static bool TryTakeSequence(ref ReadOnlySpan<byte> rest, byte terminator, bool allowZero, out long value)
    {
        value = 0;
        var digits = rest.IndexOfAnyExceptInRange((byte)'0', (byte)'9');
        if (digits is < 1 or > 18 || rest[digits] != terminator || (rest[0] == '0' && (digits > 1 || !allowZero)))
        {
            return false;
        }

        foreach (var digit in rest[..digits])
        {
            value = (value * 10) + (digit - '0');
        }

        rest = rest[(digits + 1)..];
        return true;
    }

    /// <summary>
    /// Takes a string's raw bytes (from <paramref name="skip"/>, just past its opening quote, to its closing quote) and
    /// the byte after it; false when it holds a control character, or an escape unless <paramref name="allowEscapes"/>
    /// (the general path handles, or refuses, those).
    /// </summary>
    private static bool TryTakeString(ref ReadOnlySpan<byte> rest, int skip, byte terminator, out ReadOnlySpan<byte> value, bool allowEscapes = false)
    {
        value = default;
        var body = rest[skip..];
        var end = 0;
        while (true)
        {
            var next = body[end..].IndexOfAny((byte)'"', (byte)'\\');
            if (next < 0)
            {
                return false;
            }

            end += next;
            if (body[end] == '"')
            {
                break;
            }

            // An escape: the byte after the backslash is never the closing quote (\uXXXX holds neither quote nor backslash).
            if (!allowEscapes)
            {
                return false;
            }

            end += 2;
            if (end >= body.Length)
            {
                return false;
            }
        }

        value = body[..end];
        if (end + 1 >= body.Length || body[end + 1] != terminator || value.IndexOfAnyInRange((byte)0, (byte)0x1F) >= 0)
        {
            return false;
        }

        rest = body[(end + 2)..];
        return true;
    }

    private static string? InternedContentType(ReadOnlySpan<byte> value) =>
        value.SequenceEqual("text/plain; charset=utf-8"u8) ? PushMessage.TextContentType
        : value.SequenceEqual("application/json"u8) ? PushMessage.JsonContentType
        : value.SequenceEqual("application/octet-stream"u8) ? PushMessage.DefaultContentType
        : null;

    private static bool IsKnownType(string type) => type is "msg" or "ack" or "ping" or "pong" or "close" or "error" or "skip";

    /// <summary>The top-level <c>type</c> string of a frame that is well-formed JSON, else null.</summary>
    private static string? PeekType(ReadOnlySpan<byte> json)
    {
        try
        {
            var reader = new Utf8JsonReader(json, s_readerOptions);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }

            string? type = null;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                // As in the full parse: a name written with an escape is not 'type' (§3.1), and of duplicate names the
                // last one counts, so a last 'type' that is not a string leaves the frame without one (malformed).
                var isType = !reader.ValueIsEscaped && reader.ValueSpan.SequenceEqual("type"u8);
                reader.Read();
                if (isType)
                {
                    type = reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
                }

                reader.Skip();
            }

            return reader.TokenType == JsonTokenType.EndObject && !reader.Read() ? type : null;
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException)
        {
            return null;
        }
    }

    /// <summary>Reads the frame type; the known names are interned, so a frame costs no string for its type.</summary>
    private static string ReadType(ref Utf8JsonReader reader)
    {
        if (reader.TokenType == JsonTokenType.String && !reader.ValueIsEscaped)
        {
            var value = reader.ValueSpan;
            if (value.SequenceEqual("msg"u8))
            {
                return "msg";
            }

            if (value.SequenceEqual("ack"u8))
            {
                return "ack";
            }

            if (value.SequenceEqual("ping"u8))
            {
                return "ping";
            }

            if (value.SequenceEqual("pong"u8))
            {
                return "pong";
            }
        }

        return ReadString(ref reader, "type");
    }

    /// <summary>Reads a content type; the common ones are interned, so a received message costs no string for it.</summary>
    private static string ReadContentType(ref Utf8JsonReader reader)
    {
        if (reader.TokenType == JsonTokenType.String && !reader.ValueIsEscaped && InternedContentType(reader.ValueSpan) is { } interned)
        {
            return interned;
        }

        return ReadString(ref reader, "contentType");
    }

    private static string ReadString(ref Utf8JsonReader reader, string field) =>
        reader.TokenType == JsonTokenType.String
            ? reader.GetString()!
            : throw new JsonException($"'{field}' must be a string.");

    public static string Describe(ReadOnlySpan<byte> frame) =>
        Encoding.UTF8.GetString(frame.Length > 120 ? frame[..120] : frame);
}

/// <summary>The non-empty lines of a batch of frames (see <see cref="FrameCodec.SplitBatch"/>).</summary>
internal readonly struct FrameLines(ReadOnlyMemory<byte> batch) : IEnumerable<ReadOnlyMemory<byte>>
{
    public Enumerator GetEnumerator() => new(batch);

    IEnumerator<ReadOnlyMemory<byte>> IEnumerable<ReadOnlyMemory<byte>>.GetEnumerator() => GetEnumerator();

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Walks the lines without allocating.</summary>
    public struct Enumerator(ReadOnlyMemory<byte> batch) : IEnumerator<ReadOnlyMemory<byte>>
    {
        private ReadOnlyMemory<byte> _rest = batch;

        public ReadOnlyMemory<byte> Current { get; private set; }

        readonly object System.Collections.IEnumerator.Current => Current;

        public bool MoveNext()
        {
            while (!_rest.IsEmpty)
            {
                var index = _rest.Span.IndexOf(FrameCodec.Separator);
                var line = index < 0 ? _rest : _rest[..index];
                _rest = index < 0 ? default : _rest[(index + 1)..];
                if (!line.IsEmpty && line.Span[^1] == (byte)'\r')
                {
                    line = line[..^1];
                }

                if (!line.IsEmpty)
                {
                    Current = line;
                    return true;
                }
            }

            Current = default;
            return false;
        }

        public readonly void Reset() => throw new NotSupportedException();

        public readonly void Dispose()
        {
        }
    }
}
