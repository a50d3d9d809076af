namespace PushKit.Protocol;

internal enum FrameType : byte
{
    Message,
    Ack,
    Ping,
    Pong,
    Close,
    Error,
    Skip,
}

/// <summary>One decoded protocol frame. Which fields are set depends on <see cref="Type"/>.</summary>
internal readonly struct Frame
{
    public FrameType Type { get; init; }

    /// <summary>msg: the message's sequence number; ack: the cumulative acknowledged sequence number.</summary>
    public long Sequence { get; init; }

    public PushMessage? Message { get; init; }

    /// <summary>msg: the sender waits for this message's acknowledgement; the ack should not be held back.</summary>
    public bool AckNow { get; init; }

    /// <summary>close: the close code.</summary>
    public PushCloseCode CloseCode { get; init; }

    /// <summary>close: the reason; error: the message.</summary>
    public string? Text { get; init; }

    /// <summary>error: the error code.</summary>
    public string? ErrorCode { get; init; }

    /// <summary>close: the retry hint in milliseconds.</summary>
    public int? RetryAfterMs { get; init; }
}

internal enum FrameParseStatus
{
    Ok,
    Malformed,
    UnknownType,
}
