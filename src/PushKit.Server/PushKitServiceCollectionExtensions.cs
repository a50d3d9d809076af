using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using PushKit.Server;
using PushKit.Server.Diagnostics;
using PushKit.Server.Sessions;

// Extension methods on IServiceCollection live in its namespace so that they are found without a using.
#pragma warning disable IDE0130
namespace Microsoft.Extensions.DependencyInjection;
#pragma warning restore IDE0130

/// <summary>Adds the PushKit server to an application's services.</summary>
public static class PushKitServiceCollectionExtensions
{
    /// <summary>
    /// Adds the PushKit server: sessions, <see cref="IPushSender"/>, <see cref="IPushSessionRegistry"/> and the
    /// endpoints' services. Map the endpoints with <c>app.MapPushKit("/push")</c>.
    /// </summary>
    /// <param name="services">The application's services.</param>
    /// <param name="configure">Configures <see cref="PushKitServerOptions"/>; validated when the host starts.</param>
    /// <returns>A builder to add handlers with.</returns>
    public static IPushKitServerBuilder AddPushKit(this IServiceCollection services, Action<PushKitServerOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var options = services.AddOptions<PushKitServerOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        options.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<PushKitServerOptions>, PushKitServerOptionsValidator>());
        services.AddLogging();
        services.AddMetrics();
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<ServerMetrics>();
        services.TryAddSingleton<IPushSessionStore, InMemoryPushSessionStore>();
        services.TryAddSingleton<PushSessionManager>();
        services.TryAddSingleton<IPushSessionRegistry>(sp => sp.GetRequiredService<PushSessionManager>());
        services.TryAddSingleton<IPushSender, PushSender>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, PushSessionHousekeeper>());
        return new PushKitServerBuilder(services);
    }
}
