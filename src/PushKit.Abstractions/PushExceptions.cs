namespace PushKit;

/// <summary>The base type of every exception PushKit throws on purpose.</summary>
public class PushException : Exception
{
    /// <summary>Creates the exception.</summary>
    public PushException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public PushException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public PushException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>
/// A sent message was not acknowledged by the peer within the acknowledgement timeout. The message stays
/// queued in the session and may still be delivered; only the wait ended.
/// </summary>
public sealed class PushAckTimeoutException : PushException
{
    /// <summary>Creates the exception.</summary>
    public PushAckTimeoutException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public PushAckTimeoutException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public PushAckTimeoutException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>
/// The channel or session is closed, so the operation cannot complete. (A client channel that was never connected
/// throws <see cref="InvalidOperationException"/> instead.)
/// <see cref="CloseCode"/> tells why, when known.
/// </summary>
public sealed class PushChannelClosedException : PushException
{
    /// <summary>Creates the exception.</summary>
    public PushChannelClosedException()
        : base("The push channel is closed.")
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public PushChannelClosedException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public PushChannelClosedException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception with a close code.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="closeCode">Why the channel closed.</param>
    /// <param name="innerException">The cause, if any.</param>
    public PushChannelClosedException(string message, PushCloseCode? closeCode, Exception? innerException = null)
        : base(message, innerException)
    {
        CloseCode = closeCode;
    }

    /// <summary>Why the channel closed, when known.</summary>
    public PushCloseCode? CloseCode { get; }
}

/// <summary>A message's encoded frame exceeds the size limit the peer accepts; nothing was sent.</summary>
public sealed class PushMessageTooLargeException : PushException
{
    /// <summary>Creates the exception.</summary>
    public PushMessageTooLargeException()
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public PushMessageTooLargeException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public PushMessageTooLargeException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Creates the exception with the sizes involved.</summary>
    /// <param name="frameBytes">The encoded frame's size in bytes.</param>
    /// <param name="limitBytes">The limit in bytes.</param>
    public PushMessageTooLargeException(long frameBytes, long limitBytes)
        : base($"The message's encoded frame is {frameBytes} bytes, over the limit of {limitBytes} bytes (MaxMessageBytes; a binary payload counts as base64). Nothing was sent.")
    {
        FrameBytes = frameBytes;
        LimitBytes = limitBytes;
    }

    /// <summary>The encoded frame's size in bytes.</summary>
    public long FrameBytes { get; }

    /// <summary>The limit in bytes.</summary>
    public long LimitBytes { get; }
}

/// <summary>
/// The peer violated the wire protocol, or a transport detected a violation (for example an oversize frame).
/// <see cref="CloseCode"/> is the code the connection is closed with.
/// </summary>
public sealed class PushProtocolException : PushException
{
    /// <summary>Creates the exception.</summary>
    public PushProtocolException()
        : this(PushCloseCode.ProtocolError, "Protocol error.")
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public PushProtocolException(string message)
        : this(PushCloseCode.ProtocolError, message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public PushProtocolException(string message, Exception? innerException)
        : base(message, innerException)
    {
        CloseCode = PushCloseCode.ProtocolError;
    }

    /// <summary>Creates the exception with a close code.</summary>
    /// <param name="closeCode">The close code the connection ends with.</param>
    /// <param name="message">What went wrong.</param>
    public PushProtocolException(PushCloseCode closeCode, string message)
        : base(message)
    {
        CloseCode = closeCode;
    }

    /// <summary>The close code the connection ends with.</summary>
    public PushCloseCode CloseCode { get; }
}

/// <summary>
/// The message was dropped before the peer acknowledged it, because the session's buffer was full under
/// <see cref="PushBufferFullPolicy.DropOldest"/>. The receiver was told of the gap.
/// </summary>
public sealed class PushMessageDroppedException : PushException
{
    /// <summary>Creates the exception.</summary>
    public PushMessageDroppedException()
        : base("The message was dropped: the session's buffer was full (DropOldest policy).")
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public PushMessageDroppedException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public PushMessageDroppedException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>The session's buffer of unacknowledged messages is full under <see cref="PushBufferFullPolicy.Disconnect"/>.</summary>
public sealed class PushBufferFullException : PushException
{
    /// <summary>Creates the exception.</summary>
    public PushBufferFullException()
        : base("The session's buffer of unacknowledged messages is full.")
    {
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public PushBufferFullException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause.</param>
    public PushBufferFullException(string message, Exception? innerException)
        : base(message, innerException)
    {
    }
}
