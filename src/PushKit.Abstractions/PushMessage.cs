using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using PushKit.Protocol;

namespace PushKit;

/// <summary>
/// One application message carried by a push channel: payload bytes with a content type, an optional
/// topic, optional headers and an optional message id (idempotency key).
/// </summary>
/// <remarks>
/// A message is immutable once created, so one instance can be sent to many sessions; its wire encoding
/// is computed once and shared by every recipient. The payload memory and the headers dictionary are not copied:
/// do not change the array or dictionary a message was made from once it may have been sent (what goes on the wire
/// is then undefined).
/// </remarks>
public sealed class PushMessage
{
    /// <summary>The content type used when none is given: <c>application/octet-stream</c>.</summary>
    public const string DefaultContentType = "application/octet-stream";

    /// <summary>The content type of messages created by <see cref="FromString"/>: <c>text/plain; charset=utf-8</c>.</summary>
    public const string TextContentType = "text/plain; charset=utf-8";

    /// <summary>The content type of messages created by <see cref="FromJson{T}(T, JsonSerializerOptions?, string?)"/>: <c>application/json</c>.</summary>
    public const string JsonContentType = "application/json";

    private static readonly JsonSerializerOptions s_webDefaults = new(JsonSerializerDefaults.Web);
    private byte[]? _encodedBody;

    /// <summary>Creates a message carrying <paramref name="payload"/>.</summary>
    /// <param name="payload">The payload bytes; they are not copied, so do not change them after the call.</param>
    /// <param name="contentType">The payload's media type; <see cref="DefaultContentType"/> when null or empty.</param>
    /// <exception cref="ArgumentException"><paramref name="contentType"/> holds an unpaired surrogate.</exception>
    public PushMessage(ReadOnlyMemory<byte> payload, string? contentType = null)
    {
        Payload = payload;
        ContentType = string.IsNullOrEmpty(contentType) ? DefaultContentType : WellFormed(contentType, "PushMessage.ContentType", nameof(contentType));
    }

    /// <summary>The payload bytes.</summary>
    public ReadOnlyMemory<byte> Payload { get; }

    /// <summary>The payload's media type, for example <c>application/json</c>.</summary>
    public string ContentType { get; }

    /// <summary>An optional topic the message belongs to.</summary>
    /// <exception cref="ArgumentException">The topic holds an unpaired surrogate.</exception>
    public string? Topic
    {
        get => _topic;
        init => _topic = value is null ? null : WellFormed(value, "PushMessage.Topic", nameof(value));
    }

    private readonly string? _topic;

    /// <summary>Optional application headers (string to string).</summary>
    /// <exception cref="ArgumentException">A value is null, or a name or value holds an unpaired surrogate.</exception>
    public IReadOnlyDictionary<string, string>? Headers
    {
        get => _headers;
        init
        {
            if (value is Dictionary<string, string> dictionary)
            {
                // The decoders' type, enumerated without boxing: every received message with headers comes here.
                foreach (var (name, text) in dictionary)
                {
                    CheckHeader(name, text);
                }
            }
            else if (value is not null)
            {
                foreach (var (name, text) in value)
                {
                    CheckHeader(name, text);
                }
            }

            _headers = value;
        }
    }

    private readonly IReadOnlyDictionary<string, string>? _headers;

    private static void CheckHeader(string name, string? text)
    {
        // A null value would go on the wire as JSON null, which every receiver refuses as malformed: the message could
        // then never be delivered, and its replays would cut the connection again and again.
        if (text is null)
        {
            throw new ArgumentException($"PushMessage.Headers['{name}'] is null: header values must be strings.", "value");
        }

        WellFormed(name, "A PushMessage.Headers name", "value");
        WellFormed(text, $"PushMessage.Headers['{name}']", "value");
    }

    /// <summary>The longest <see cref="Id"/>, in characters: 128.</summary>
    public const int MaxIdLength = 128;

    /// <summary>
    /// An optional message id chosen by the sender (an idempotency key); it travels unchanged to the receiver. At most
    /// <see cref="MaxIdLength"/> characters: the server remembers recent ids (to apply a message sent again only once),
    /// and that memory must stay small.
    /// </summary>
    /// <exception cref="ArgumentException">The id is longer than <see cref="MaxIdLength"/> characters, or holds an unpaired surrogate.</exception>
    public string? Id
    {
        get => _id;
        init
        {
            if (value is { Length: > MaxIdLength })
            {
                throw new ArgumentException($"PushMessage.Id must be at most {MaxIdLength} characters (was {value.Length}).", nameof(value));
            }

            _id = value is null ? null : WellFormed(value, "PushMessage.Id", nameof(value));
        }
    }

    private readonly string? _id;

    /// <summary>
    /// <paramref name="text"/>, checked to be well-formed UTF-16. An unpaired surrogate cannot be encoded as UTF-8: the
    /// wire would carry U+FFFD instead, so the receiver would get another string (two ids that differ only there
    /// would even become one). Refused here, where the sender can be told.
    /// </summary>
    private static string WellFormed(string text, string what, string paramName)
    {
        // A plain loop: these strings are short, and MemoryExtensions.IndexOfAnyInRange allocated on every call (96 B,
        // seen on every parsed message by FrameCodecTests' allocation test).
        var span = text.AsSpan();
        for (var i = 0; i < span.Length; i++)
        {
            var c = span[i];
            if (char.IsHighSurrogate(c) && i + 1 < span.Length && char.IsLowSurrogate(span[i + 1]))
            {
                i++;
            }
            else if (char.IsSurrogate(c))
            {
                throw new ArgumentException($"{what} holds an unpaired surrogate (U+{(int)c:X4} at index {i}), which cannot travel as UTF-8.", paramName);
            }
        }

        return text;
    }

    /// <summary>Creates a UTF-8 text message.</summary>
    /// <param name="text">The text. An unpaired surrogate in it is encoded as U+FFFD, as <see cref="Encoding.UTF8"/> does.</param>
    /// <param name="topic">An optional topic.</param>
    public static PushMessage FromString(string text, string? topic = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        return new PushMessage(Encoding.UTF8.GetBytes(text), TextContentType) { Topic = topic };
    }

    /// <summary>Creates a JSON message by serializing <paramref name="value"/> with System.Text.Json.</summary>
    /// <typeparam name="T">The value's type.</typeparam>
    /// <param name="value">The value to serialize.</param>
    /// <param name="options">Serializer options; the web defaults (camelCase) when null.</param>
    /// <param name="topic">An optional topic.</param>
    [System.Diagnostics.CodeAnalysis.RequiresUnreferencedCode("JSON serialization may need types that trimming removes; use the JsonTypeInfo overload.")]
    [System.Diagnostics.CodeAnalysis.RequiresDynamicCode("JSON serialization may need runtime code generation; use the JsonTypeInfo overload.")]
    public static PushMessage FromJson<T>(T value, JsonSerializerOptions? options = null, string? topic = null) =>
        new(JsonSerializer.SerializeToUtf8Bytes(value, options ?? s_webDefaults), JsonContentType) { Topic = topic };

    /// <summary>Creates a JSON message by serializing <paramref name="value"/> with source-generated metadata.</summary>
    /// <remarks>
    /// The context's options decide the property names: give it <c>[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]</c>
    /// to write camelCase as the overload without metadata does, so that either overload reads what the other wrote.
    /// </remarks>
    /// <typeparam name="T">The value's type.</typeparam>
    /// <param name="value">The value to serialize.</param>
    /// <param name="typeInfo">The source-generated type metadata.</param>
    /// <param name="topic">An optional topic.</param>
    public static PushMessage FromJson<T>(T value, JsonTypeInfo<T> typeInfo, string? topic = null) =>
        new(JsonSerializer.SerializeToUtf8Bytes(value, typeInfo), JsonContentType) { Topic = topic };

    /// <summary>Decodes the payload as UTF-8 text.</summary>
    public string GetString() => Encoding.UTF8.GetString(Payload.Span);

    /// <summary>Deserializes the payload as JSON.</summary>
    /// <typeparam name="T">The target type.</typeparam>
    /// <param name="options">Serializer options; the web defaults (camelCase) when null.</param>
    /// <exception cref="JsonException">The payload is not valid JSON for <typeparamref name="T"/>.</exception>
    [System.Diagnostics.CodeAnalysis.RequiresUnreferencedCode("JSON serialization may need types that trimming removes; use the JsonTypeInfo overload.")]
    [System.Diagnostics.CodeAnalysis.RequiresDynamicCode("JSON serialization may need runtime code generation; use the JsonTypeInfo overload.")]
    public T? GetJson<T>(JsonSerializerOptions? options = null) =>
        JsonSerializer.Deserialize<T>(Payload.Span, options ?? s_webDefaults);

    /// <summary>Deserializes the payload as JSON with source-generated metadata.</summary>
    /// <remarks>
    /// The context's options decide how property names match: a context without
    /// <c>[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]</c> is case-sensitive PascalCase and leaves the
    /// properties of a camelCase payload (what the overload without metadata writes) at their defaults, without error.
    /// </remarks>
    /// <typeparam name="T">The target type.</typeparam>
    /// <param name="typeInfo">The source-generated type metadata.</param>
    /// <exception cref="JsonException">The payload is not valid JSON for <typeparamref name="T"/>.</exception>
    public T? GetJson<T>(JsonTypeInfo<T> typeInfo) => JsonSerializer.Deserialize(Payload.Span, typeInfo);

    /// <summary>A copy of this message with <paramref name="id"/> as its id.</summary>
    internal PushMessage WithId(string id) => new(Payload, ContentType) { Topic = Topic, Headers = Headers, Id = id };

    /// <inheritdoc />
    public override string ToString() =>
        $"PushMessage {{ ContentType = {ContentType}, Bytes = {Payload.Length}, Topic = {Topic ?? "-"}, Id = {Id ?? "-"} }}";

    /// <summary>
    /// The message's fields as they follow <c>"seq":N,</c> in a message frame, encoded once and cached
    /// so that a broadcast serializes its message once, not once per recipient.
    /// </summary>
    internal ReadOnlySpan<byte> EncodedBody => _encodedBody ??= FrameCodec.EncodeMessageBody(this);
}
