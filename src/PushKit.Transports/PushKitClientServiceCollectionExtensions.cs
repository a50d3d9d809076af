using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Polly;
using PushKit;
using PushKit.Client;

// Extension methods on IServiceCollection live in its namespace so that they are found without a using.
#pragma warning disable IDE0130
namespace Microsoft.Extensions.DependencyInjection;
#pragma warning restore IDE0130

/// <summary>Registers a PushKit client channel for dependency injection.</summary>
public static class PushKitClientServiceCollectionExtensions
{
    /// <summary>The DI key under which a <see cref="ResiliencePipeline"/> replaces the default reconnect pipeline.</summary>
    public const string ReconnectPipelineKey = "PushKit.Reconnect";

    /// <summary>
    /// Registers a singleton <see cref="IPushChannel"/> configured by <paramref name="configure"/>. The channel is
    /// created on first use and not connected: call <see cref="IPushChannel.ConnectAsync"/> (for example from a hosted service).
    /// The container disposes it.
    /// </summary>
    /// <remarks>
    /// The options are validated when the host starts (and when they are first read without a host): an invalid
    /// configuration throws <see cref="OptionsValidationException"/> listing every problem. Calling this again adds
    /// another configure delegate to the same, single channel, as other <c>Add…(configure)</c> methods do; for a
    /// channel per server, use <see cref="AddKeyedPushKitClient"/>.
    /// </remarks>
    /// <param name="services">The application's services.</param>
    /// <param name="configure">Configures <see cref="PushClientOptions"/>; <see cref="PushClientOptions.Url"/> is required.</param>
    public static IServiceCollection AddPushKitClient(this IServiceCollection services, Action<PushClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<PushClientOptions>().Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<PushClientOptions>, PushClientOptionsValidator>());
        services.TryAddSingleton<IPushChannel>(sp => CreateChannel(sp, sp.GetRequiredService<IOptions<PushClientOptions>>().Value));
        return services;
    }

    /// <summary>
    /// Registers a keyed singleton <see cref="IPushChannel"/> under <paramref name="name"/>, with options of that name:
    /// one per server, for an application that talks to several. Resolve it with
    /// <c>[FromKeyedServices("name")] IPushChannel</c> or <c>GetRequiredKeyedService&lt;IPushChannel&gt;("name")</c>.
    /// Otherwise it behaves as <see cref="AddPushKitClient"/>: created on first use, not connected, validated when the
    /// host starts, disposed by the container, and the reconnect pipeline registered under
    /// <see cref="ReconnectPipelineKey"/> (if any) is used when the options name none.
    /// </summary>
    /// <param name="services">The application's services.</param>
    /// <param name="name">The service key and the options name.</param>
    /// <param name="configure">Configures this channel's <see cref="PushClientOptions"/>; <see cref="PushClientOptions.Url"/> is required.</param>
    public static IServiceCollection AddKeyedPushKitClient(this IServiceCollection services, string name, Action<PushClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<PushClientOptions>(name).Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<PushClientOptions>, PushClientOptionsValidator>());
        services.TryAddKeyedSingleton<IPushChannel>(name, (sp, _) => CreateChannel(sp, sp.GetRequiredService<IOptionsMonitor<PushClientOptions>>().Get(name)));
        return services;
    }

    private static PushChannel CreateChannel(IServiceProvider sp, PushClientOptions configured)
    {
        // A copy: the pipeline found in DI is the channel's, not written into the shared options.
        var options = configured.Clone();

        // An app may register its own reconnect pipeline in DI rather than in the options.
        if (options.ReconnectPipeline is null && sp is IKeyedServiceProvider keyed
            && keyed.GetKeyedService(typeof(ResiliencePipeline), ReconnectPipelineKey) is ResiliencePipeline pipeline)
        {
            options.ReconnectPipeline = pipeline;
        }

        return new PushChannel(options, sp.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance);
    }

    /// <summary>Reports every problem <see cref="PushClientOptions.Validate"/> would, as options validation does.</summary>
    private sealed class PushClientOptionsValidator : IValidateOptions<PushClientOptions>
    {
        public ValidateOptionsResult Validate(string? name, PushClientOptions options) =>
            options.Problems() is { Count: > 0 } problems ? ValidateOptionsResult.Fail(problems) : ValidateOptionsResult.Success;
    }
}
