using System.Diagnostics.CodeAnalysis;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace PushKit;

/// <summary>Shortcuts for the common kinds of message.</summary>
public static class PushChannelExtensions
{
    /// <summary>Sends a UTF-8 text message and waits for its acknowledgement.</summary>
    /// <param name="channel">The channel.</param>
    /// <param name="text">The text.</param>
    /// <param name="topic">An optional topic.</param>
    /// <param name="cancellationToken">Stops the wait for the acknowledgement.</param>
    public static ValueTask SendStringAsync(this IPushChannel channel, string text, string? topic = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(channel);
        return channel.SendAsync(PushMessage.FromString(text, topic), cancellationToken);
    }

    /// <summary>Sends a UTF-8 text message and waits for its acknowledgement.</summary>
    /// <param name="channel">The channel.</param>
    /// <param name="text">The text.</param>
    /// <param name="cancellationToken">Stops the wait for the acknowledgement.</param>
    public static ValueTask SendStringAsync(this IPushChannel channel, string text, CancellationToken cancellationToken) =>
        SendStringAsync(channel, text, topic: null, cancellationToken);

    /// <summary>Serializes <paramref name="value"/> as JSON, sends it and waits for its acknowledgement.</summary>
    /// <typeparam name="T">The value's type.</typeparam>
    /// <param name="channel">The channel.</param>
    /// <param name="value">The value.</param>
    /// <param name="options">Serializer options; the web defaults when null.</param>
    /// <param name="topic">An optional topic.</param>
    /// <param name="cancellationToken">Stops the wait for the acknowledgement.</param>
    [RequiresUnreferencedCode("JSON serialization may need types that trimming removes; use the JsonTypeInfo overload.")]
    [RequiresDynamicCode("JSON serialization may need runtime code generation; use the JsonTypeInfo overload.")]
    public static ValueTask SendJsonAsync<T>(this IPushChannel channel, T value, JsonSerializerOptions? options = null, string? topic = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(channel);
        return channel.SendAsync(PushMessage.FromJson(value, options, topic), cancellationToken);
    }

    /// <summary>Serializes <paramref name="value"/> as JSON (web defaults), sends it and waits for its acknowledgement.</summary>
    /// <typeparam name="T">The value's type.</typeparam>
    /// <param name="channel">The channel.</param>
    /// <param name="value">The value.</param>
    /// <param name="cancellationToken">Stops the wait for the acknowledgement.</param>
    [RequiresUnreferencedCode("JSON serialization may need types that trimming removes; use the JsonTypeInfo overload.")]
    [RequiresDynamicCode("JSON serialization may need runtime code generation; use the JsonTypeInfo overload.")]
    public static ValueTask SendJsonAsync<T>(this IPushChannel channel, T value, CancellationToken cancellationToken) =>
        SendJsonAsync(channel, value, options: null, topic: null, cancellationToken);

    /// <summary>Serializes <paramref name="value"/> as JSON with source-generated metadata, sends it and waits for its acknowledgement.</summary>
    /// <typeparam name="T">The value's type.</typeparam>
    /// <param name="channel">The channel.</param>
    /// <param name="value">The value.</param>
    /// <param name="typeInfo">The source-generated type metadata.</param>
    /// <param name="topic">An optional topic.</param>
    /// <param name="cancellationToken">Stops the wait for the acknowledgement.</param>
    public static ValueTask SendJsonAsync<T>(this IPushChannel channel, T value, JsonTypeInfo<T> typeInfo, string? topic = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(channel);
        return channel.SendAsync(PushMessage.FromJson(value, typeInfo, topic), cancellationToken);
    }

    /// <summary>Serializes <paramref name="value"/> as JSON with source-generated metadata, sends it and waits for its acknowledgement.</summary>
    /// <typeparam name="T">The value's type.</typeparam>
    /// <param name="channel">The channel.</param>
    /// <param name="value">The value.</param>
    /// <param name="typeInfo">The source-generated type metadata.</param>
    /// <param name="cancellationToken">Stops the wait for the acknowledgement.</param>
    public static ValueTask SendJsonAsync<T>(this IPushChannel channel, T value, JsonTypeInfo<T> typeInfo, CancellationToken cancellationToken) =>
        SendJsonAsync(channel, value, typeInfo, topic: null, cancellationToken);
}
