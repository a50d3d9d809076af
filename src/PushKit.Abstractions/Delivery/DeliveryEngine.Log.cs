using Microsoft.Extensions.Logging;

namespace PushKit.Delivery;

internal sealed partial class DeliveryEngine
{
    private static partial class Log
    {
        [LoggerMessage(1, LogLevel.Warning, "{Name}: protocol violation, closing the connection with {CloseCode}: {Detail}")]
        public static partial void ProtocolViolation(ILogger logger, object name, PushCloseCode closeCode, string detail);

        [LoggerMessage(2, LogLevel.Debug, "{Name}: write loop ended: {Detail}")]
        public static partial void WriteLoopEnded(ILogger logger, object name, string detail);

        [LoggerMessage(3, LogLevel.Debug, "{Name}: {Transport} connection ended: {Kind} {CloseCode} {Reason}")]
        public static partial void ConnectionEnded(ILogger logger, object name, string transport, ConnectionEndKind kind, PushCloseCode? closeCode, string? reason);

        [LoggerMessage(4, LogLevel.Warning, "{Name}: ignored a frame of unknown type '{FrameType}'")]
        public static partial void UnknownFrameType(ILogger logger, object name, string? frameType);

        [LoggerMessage(5, LogLevel.Warning, "{Name}: the peer reported error '{Code}': {Message}")]
        public static partial void PeerError(ILogger logger, object name, string? code, string? message);

        [LoggerMessage(7, LogLevel.Warning, "{Name}: nothing received for {Timeout}; closing the connection as dead (4408)")]
        public static partial void HeartbeatTimedOut(ILogger logger, object name, TimeSpan timeout);

        [LoggerMessage(8, LogLevel.Warning, "{Name}: the peer dropped {Count} message(s) this side will not receive")]
        public static partial void MessagesDropped(ILogger logger, object name, long count);

        [LoggerMessage(9, LogLevel.Debug, "{Name}: delivery stopped because the session ended: {Detail}")]
        public static partial void DeliveryEndedWithSession(ILogger logger, object name, string detail);

        [LoggerMessage(16, LogLevel.Warning, "{Name}: stopped reading with {Messages} messages ({Bytes} bytes) waiting for the application, the most this side holds, while a send awaits the peer's acknowledgement, which may be among the unread; that send may time out. The peer sends more than this side's buffer limits allow (its limits are larger, or its policy is DropOldest)")]
        public static partial void ReadStoppedAtBound(ILogger logger, object name, int messages, long bytes);

        [LoggerMessage(19, LogLevel.Error, "{Name}: a callback registered on a message handler's cancellation token threw when delivery stopped; the connection ends as usual")]
        public static partial void CancellationCallbackFailed(ILogger logger, object name, Exception exception);

        [LoggerMessage(6, LogLevel.Error, "{Name}: delivering a message to the application failed; the connection is dropped and the message will be replayed")]
        public static partial void DeliveryFailed(ILogger logger, object name, Exception exception);
    }
}
