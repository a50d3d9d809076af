using Microsoft.Extensions.Options;
using PushKit.Protocol;

namespace PushKit.Server;

/// <summary>Validates <see cref="PushKitServerOptions"/>, listing every problem at once.</summary>
internal sealed class PushKitServerOptionsValidator : IValidateOptions<PushKitServerOptions>
{
    private static readonly string[] s_knownTransports =
        [PushProtocol.Transports.WebSocket, PushProtocol.Transports.ServerSentEvents, PushProtocol.Transports.LongPolling];

    public ValidateOptionsResult Validate(string? name, PushKitServerOptions options)
    {
        var errors = new List<string>();
        if (options.MaxMessageBytes is < 1024 or > 64 * 1024 * 1024)
        {
            errors.Add($"PushKitServerOptions.MaxMessageBytes must be between 1024 and 67108864 bytes (was {options.MaxMessageBytes}).");
        }

        if (options.AckTimeout <= TimeSpan.Zero || options.AckTimeout > TimeSpan.FromDays(1))
        {
            errors.Add($"PushKitServerOptions.AckTimeout must be positive and at most 1 day (was {options.AckTimeout}).");
        }

        if (options.ResumeWindow <= TimeSpan.Zero)
        {
            errors.Add($"PushKitServerOptions.ResumeWindow must be positive (was {options.ResumeWindow}).");
        }

        // The .NET client keeps the interval between 100 ms and 1 hour and the timeout to at most 2 hours, whatever it
        // is told. Below 100 ms the server itself pings an idle connection hundreds of times a second.
        if (options.HeartbeatInterval < TimeSpan.FromMilliseconds(100) || options.HeartbeatInterval > TimeSpan.FromHours(1))
        {
            errors.Add($"PushKitServerOptions.HeartbeatInterval must be at least 100 ms and at most 1 hour (was {options.HeartbeatInterval}).");
        }

        if (options.HeartbeatTimeout > TimeSpan.FromHours(2))
        {
            errors.Add($"PushKitServerOptions.HeartbeatTimeout must be at most 2 hours (was {options.HeartbeatTimeout}).");
        }

        // An idle peer pings once nothing was sent for an interval, and checks every half interval: up to 1.5
        // intervals pass between two frames on a healthy idle connection, so a shorter timeout drops live ones.
        if (options.HeartbeatTimeout <= options.HeartbeatInterval * 1.5)
        {
            errors.Add($"PushKitServerOptions.HeartbeatTimeout ({options.HeartbeatTimeout}) must exceed 1.5 × HeartbeatInterval ({options.HeartbeatInterval}): an idle peer pings up to 1.5 intervals after it last sent.");
        }

        if (options.Transports.Count == 0)
        {
            errors.Add("PushKitServerOptions.Transports must name at least one transport.");
        }

        foreach (var transport in options.Transports)
        {
            if (!s_knownTransports.Contains(transport))
            {
                errors.Add($"PushKitServerOptions.Transports: '{transport}' is not a transport this server implements ({string.Join(", ", s_knownTransports)}).");
            }
        }

        if (options.LongPollingTimeout < TimeSpan.FromSeconds(1) || options.LongPollingTimeout > TimeSpan.FromMinutes(5))
        {
            errors.Add($"PushKitServerOptions.LongPollingTimeout must be from 1 second to 5 minutes (was {options.LongPollingTimeout}).");
        }

        if (options.SseKeepAliveInterval <= TimeSpan.Zero || options.SseKeepAliveInterval > TimeSpan.FromDays(1))
        {
            errors.Add($"PushKitServerOptions.SseKeepAliveInterval must be positive and at most 1 day (was {options.SseKeepAliveInterval}).");
        }

        if (options.SseRetryHint < TimeSpan.Zero)
        {
            errors.Add($"PushKitServerOptions.SseRetryHint must not be negative (was {options.SseRetryHint}).");
        }

        if (options.Transports.Distinct(StringComparer.Ordinal).Count() != options.Transports.Count)
        {
            errors.Add("PushKitServerOptions.Transports must not name a transport twice.");
        }

        if (options.MaxBufferedMessagesPerSession < 1 || options.MaxBufferedBytesPerSession < 1)
        {
            errors.Add($"PushKitServerOptions.MaxBufferedMessagesPerSession and MaxBufferedBytesPerSession must be at least 1 (were {options.MaxBufferedMessagesPerSession} and {options.MaxBufferedBytesPerSession}).");
        }

        if (options.IdempotencyCacheSize < 0)
        {
            errors.Add($"PushKitServerOptions.IdempotencyCacheSize must not be negative (was {options.IdempotencyCacheSize}).");
        }

        if (options.IdempotencyRetention < TimeSpan.Zero)
        {
            errors.Add($"PushKitServerOptions.IdempotencyRetention must not be negative (was {options.IdempotencyRetention}).");
        }

        if (options.UserIdProvider is null)
        {
            errors.Add("PushKitServerOptions.UserIdProvider must not be null.");
        }

        if (options.InboundQueueCapacity < 1)
        {
            errors.Add($"PushKitServerOptions.InboundQueueCapacity must be at least 1 (was {options.InboundQueueCapacity}).");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors.Select(e => e.TrimEnd('.')));
    }
}
