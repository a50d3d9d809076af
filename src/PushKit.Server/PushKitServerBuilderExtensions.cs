using Microsoft.Extensions.DependencyInjection.Extensions;
using PushKit;
using PushKit.Server;

// Found without a using, next to AddPushKit.
#pragma warning disable IDE0130
namespace Microsoft.Extensions.DependencyInjection;
#pragma warning restore IDE0130

/// <summary>Registers message handlers on an <see cref="IPushKitServerBuilder"/>.</summary>
public static class PushKitServerBuilderExtensions
{
    /// <summary>Registers <typeparamref name="THandler"/>; it is resolved from a new DI scope for each call.</summary>
    /// <typeparam name="THandler">The handler type.</typeparam>
    /// <param name="builder">The builder.</param>
    public static IPushKitServerBuilder AddHandler<THandler>(this IPushKitServerBuilder builder)
        where THandler : PushHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.TryAddEnumerable(ServiceDescriptor.Scoped<PushHandler, THandler>());
        return builder;
    }

    /// <summary>Handles every message clients send with <paramref name="onMessage"/>.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="onMessage">Called for each message, in order per session, exactly once.</param>
    public static IPushKitServerBuilder OnMessage(this IPushKitServerBuilder builder, Func<IPushSession, PushMessage, CancellationToken, ValueTask> onMessage)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(onMessage);
        builder.Services.AddSingleton<PushHandler>(new DelegatePushHandler(onMessage));
        return builder;
    }

    private sealed class DelegatePushHandler(Func<IPushSession, PushMessage, CancellationToken, ValueTask> onMessage) : PushHandler
    {
        public override ValueTask OnMessageAsync(IPushSession session, PushMessage message, CancellationToken cancellationToken) =>
            onMessage(session, message, cancellationToken);
    }
}
