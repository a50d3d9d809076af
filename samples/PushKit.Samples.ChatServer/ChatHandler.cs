using System.Text.Json;
using PushKit.Server;

namespace PushKit.Samples.ChatServer;

/// <summary>
/// The whole chat: a client's first message ({"name":"alice"}) joins it, every later one
/// ({"name":"alice","text":"hi"}) is broadcast to everyone, the sender included, so it sees its own echo.
/// </summary>
/// <remarks>
/// PushKit calls a session's messages one at a time, in order, exactly once, and acknowledges each to the client
/// when this handler returns. A new instance is created for each call, so per-session state lives in
/// <see cref="IPushSession.Items"/>.
/// </remarks>
internal sealed partial class ChatHandler(IPushSender sender, ILogger<ChatHandler> logger) : PushHandler
{
    // Where a session's chat name is kept once it has joined.
    private const string NameKey = "chat.name";

    public override async ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken)
    {
        if (!message.ContentType.StartsWith(PushMessage.JsonContentType, StringComparison.OrdinalIgnoreCase)
            || TryReadChat(message) is not { } chat)
        {
            // Returning acknowledges the message anyway: a bad message is dropped, it does not block the session.
            LogIgnored(logger, session.SessionId, message.ContentType);
            return;
        }

        // The first message names the session for good; later ones cannot change the name.
        string name;
        if (session.Items.TryGetValue(NameKey, out var known))
        {
            name = (string)known!;
        }
        else
        {
            name = string.IsNullOrWhiteSpace(chat.Name) ? "anonymous" : chat.Name.Trim();
            session.Items[NameKey] = name;
            await BroadcastAsync(ChatMessage.FromServer($"{name} joined"), cancellationToken);
        }

        if (!string.IsNullOrEmpty(chat.Text))
        {
            await BroadcastAsync(new ChatMessage(name, chat.Text), cancellationToken);
        }
    }

    public override async ValueTask OnSessionEndedAsync(IPushSession session, PushCloseCode closeCode)
    {
        // Called when the client closes its channel, or when it vanished and the resume window (2 minutes) passed.
        if (session.Items.TryGetValue(NameKey, out var name))
        {
            await BroadcastAsync(ChatMessage.FromServer($"{name} left"), CancellationToken.None);
        }
    }

    // BroadcastAsync queues the message in every session and returns; each client acknowledges on its own.
    private ValueTask<int> BroadcastAsync(ChatMessage chat, CancellationToken cancellationToken) =>
        sender.BroadcastAsync(PushMessage.FromJson(chat, ChatJsonContext.Default.ChatMessage), cancellationToken);

    private static ChatMessage? TryReadChat(PushMessage message)
    {
        try
        {
            return message.GetJson(ChatJsonContext.Default.ChatMessage);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    [LoggerMessage(1, LogLevel.Warning, "Session {SessionId}: ignored a message that is not a JSON chat line ({ContentType})")]
    private static partial void LogIgnored(ILogger logger, string sessionId, string contentType);
}
