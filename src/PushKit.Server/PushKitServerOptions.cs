using System.Security.Claims;
using PushKit.Protocol;

namespace PushKit.Server;

/// <summary>Options of the PushKit server. Validated when the host starts; every problem is listed at once.</summary>
public sealed class PushKitServerOptions
{
    /// <summary>
    /// The largest encoded frame or batch (WebSocket message, HTTP body) accepted from a client, and the limit this
    /// server's sends must fit. Default 1 MiB (<see cref="PushProtocol.DefaultMaxMessageBytes"/>); from 1 KiB to 64 MiB.
    /// It is also the request body limit of <c>POST {base}/send</c>, in place of the web server's own (Kestrel's
    /// <c>MaxRequestBodySize</c>, 30,000,000 bytes by default), so that every body within it is accepted.
    /// </summary>
    public int MaxMessageBytes { get; set; } = PushProtocol.DefaultMaxMessageBytes;

    /// <summary>How long <see cref="IPushChannel.SendAsync"/> on a server-side session waits for the client's ack. Default 30 seconds; positive, at most 1 day.</summary>
    public TimeSpan AckTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long a session is kept after its connection drops (or after negotiation, until its first connection),
    /// with its unacknowledged messages, so that the client can resume it. Default 2 minutes.
    /// </summary>
    public TimeSpan ResumeWindow { get; set; } = TimeSpan.FromMinutes(2);

    /// <summary>The heartbeat interval advertised to clients in the negotiate response. Default 15 seconds; at least 100 ms, at most 1 hour.</summary>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>The heartbeat timeout advertised to clients; must exceed 1.5 × <see cref="HeartbeatInterval"/>, at most 2 hours. Default 30 seconds.</summary>
    public TimeSpan HeartbeatTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// The transports this server offers, in its order of preference (names from <see cref="PushProtocol.Transports"/>).
    /// Default: WebSocket, Server-Sent Events, long-polling. Clear it and add names to restrict or reorder.
    /// </summary>
    public IList<string> Transports { get; } =
        [PushProtocol.Transports.WebSocket, PushProtocol.Transports.ServerSentEvents, PushProtocol.Transports.LongPolling];

    /// <summary>
    /// How long a long-poll is held when there is nothing to send. Default 25 seconds, below the common 60-second
    /// proxy limit; from 1 second to 5 minutes.
    /// </summary>
    public TimeSpan LongPollingTimeout { get; set; } = TimeSpan.FromSeconds(25);

    /// <summary>How often an idle Server-Sent Events stream carries a keep-alive comment. Default 15 seconds; positive, at most 1 day.</summary>
    public TimeSpan SseKeepAliveInterval { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>The <c>retry:</c> hint an SSE stream gives EventSource clients for reconnecting. Default 2 seconds.</summary>
    public TimeSpan SseRetryHint { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Maps the authenticated user to the user id that sessions are bound to and that
    /// <see cref="IPushSender.SendToUserAsync"/> addresses. Default: the <see cref="ClaimTypes.NameIdentifier"/> claim,
    /// else the identity's name; null for anonymous callers.
    /// </summary>
    public Func<ClaimsPrincipal, string?> UserIdProvider { get; set; } = DefaultUserId;

    /// <summary>
    /// How many messages from one client may wait for the application when no <see cref="PushHandler"/> is registered
    /// and messages are read with <see cref="IPushChannel.ReadAllAsync"/>. Their bytes (the payload, the id, topic,
    /// content type and headers at two bytes a character, and 64 per message and per header) are held to
    /// <see cref="MaxBufferedBytesPerSession"/> too. When full, the client is slowed down (its
    /// messages are not acknowledged until there is room). Default 1,024.
    /// </summary>
    public int InboundQueueCapacity { get; set; } = 1024;

    /// <summary>
    /// How many recent client message ids are remembered per user (per session for anonymous clients): a message whose
    /// id is among them is acknowledged but not handed to the application again. Default 4,096; 0 turns it off.
    /// </summary>
    public int IdempotencyCacheSize { get; set; } = 4096;

    /// <summary>
    /// How long an authenticated user's recent message ids (<see cref="IdempotencyCacheSize"/>) are kept once the user
    /// has no session left on this server (each session lasts until it ends, or expires <see cref="ResumeWindow"/>
    /// after its last connection). A client that comes back within it and sends again what its lost session may have
    /// applied has it applied only once. Default 1 hour; zero forgets them as soon as the last session is gone.
    /// </summary>
    public TimeSpan IdempotencyRetention { get; set; } = TimeSpan.FromHours(1);

    /// <summary>How many messages to one session may wait for the client's acknowledgement. Default 10,000.</summary>
    /// <remarks>
    /// With <see cref="MaxBufferedBytesPerSession"/> it also bounds how many of the client's messages a connection
    /// queues for the application while a send to the session awaits the client's acknowledgement (that
    /// acknowledgement arrives behind them). Keep both at least the clients' own buffer limits, as the defaults are,
    /// so that a handler awaiting an acknowledged send never waits behind a client's burst.
    /// </remarks>
    public int MaxBufferedMessagesPerSession { get; set; } = 10_000;

    /// <summary>
    /// How many encoded bytes of messages to one session may wait for the client's acknowledgement. Default 16 MiB. It
    /// also bounds the client's messages waiting for <see cref="IPushChannel.ReadAllAsync"/> (see <see cref="InboundQueueCapacity"/>).
    /// </summary>
    public long MaxBufferedBytesPerSession { get; set; } = 16 * 1024 * 1024;

    /// <summary>
    /// What happens when a session's buffer is full (a slow or absent consumer). Default
    /// <see cref="PushBufferFullPolicy.Disconnect"/>: the session ends with 4429 and the client starts a new one, told
    /// that it was not resumed, so one slow client neither grows server memory nor holds up a broadcast.
    /// </summary>
    public PushBufferFullPolicy BufferFullPolicy { get; set; } = PushBufferFullPolicy.Disconnect;

    internal static string? DefaultUserId(ClaimsPrincipal user) =>
        user.Identity?.IsAuthenticated == true
            ? user.FindFirst(ClaimTypes.NameIdentifier)?.Value ?? user.Identity.Name
            : null;
}
