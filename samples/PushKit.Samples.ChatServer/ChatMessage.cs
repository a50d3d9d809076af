using System.Text.Json;
using System.Text.Json.Serialization;

namespace PushKit.Samples.ChatServer;

/// <summary>A chat line on the wire: <c>{"name":"alice","text":"hi"}</c>. Without text, it only joins.</summary>
internal sealed record ChatMessage(string Name, string? Text)
{
    /// <summary>The name the server's own lines carry.</summary>
    public const string ServerName = "server";

    public static ChatMessage FromServer(string text) => new(ServerName, text);
}

/// <summary>Source-generated JSON (camelCase, like the web defaults): no reflection, no trimming warnings.</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(ChatMessage))]
internal sealed partial class ChatJsonContext : JsonSerializerContext;
