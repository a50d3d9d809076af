using System.Text.Json;
using System.Text.Json.Serialization;

namespace PushKit.Protocol;

/// <summary>The body of <c>POST {base}/negotiate</c>.</summary>
internal sealed class NegotiateRequest
{
    public int ProtocolVersion { get; set; }

    /// <summary>The largest frame or batch the client accepts; the server's sends to it stay within it. Optional.</summary>
    public int? MaxMessageBytes { get; set; }
}

/// <summary>The answer to <c>POST {base}/negotiate</c>.</summary>
internal sealed class NegotiateResponse
{
    public int ProtocolVersion { get; set; }

    public string SessionId { get; set; } = "";

    public string ResumeSecret { get; set; } = "";

    public List<string> Transports { get; set; } = [];

    public NegotiateLimits Limits { get; set; } = new();

    public NegotiateHeartbeat Heartbeat { get; set; } = new();

    public long ResumeWindowMs { get; set; }

    public NegotiateLongPolling LongPolling { get; set; } = new();
}

internal sealed class NegotiateLongPolling
{
    public long PollTimeoutMs { get; set; }

    /// <summary>
    /// Whether a poll may carry an ack (<c>GET {base}/poll?…&amp;ack=N</c>): true from servers that read it; a client
    /// talking to a server without it acknowledges with POSTs only.
    /// </summary>
    public bool AcksInPoll { get; set; }
}

internal sealed class NegotiateLimits
{
    public int MaxMessageBytes { get; set; }
}

internal sealed class NegotiateHeartbeat
{
    public long IntervalMs { get; set; }

    public long TimeoutMs { get; set; }
}

/// <summary>The body of every HTTP error PushKit answers: <c>{"error":{"code":…,"message":…}}</c>.</summary>
internal sealed class ErrorResponse
{
    public ErrorBody Error { get; set; } = new();
}

internal sealed class ErrorBody
{
    public string Code { get; set; } = "";

    public string Message { get; set; } = "";

    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int[]? SupportedVersions { get; set; }
}

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, PropertyNameCaseInsensitive = false, DefaultIgnoreCondition = JsonIgnoreCondition.Never, NumberHandling = JsonNumberHandling.Strict)]
[JsonSerializable(typeof(NegotiateRequest))]
[JsonSerializable(typeof(NegotiateResponse))]
[JsonSerializable(typeof(ErrorResponse))]
internal sealed partial class ProtocolJsonContext : JsonSerializerContext;
