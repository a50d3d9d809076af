using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace PushKit.Server;

/// <summary>Configures the PushKit server further; returned by <c>AddPushKit</c>.</summary>
public interface IPushKitServerBuilder
{
    /// <summary>The application's services.</summary>
    IServiceCollection Services { get; }
}

internal sealed class PushKitServerBuilder(IServiceCollection services) : IPushKitServerBuilder
{
    public IServiceCollection Services { get; } = services;
}

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
