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
    /// another configure delegate to the same, single channel, as other <c>Add…(configure)</c> methods do.
    /// </remarks>
    /// <param name="services">The application's services.</param>
    /// <param name="configure">Configures <see cref="PushClientOptions"/>; <see cref="PushClientOptions.Url"/> is required.</param>
    public static IServiceCollection AddPushKitClient(this IServiceCollection services, Action<PushClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<PushClientOptions>().Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<PushClientOptions>, PushClientOptionsValidator>());
        services.TryAddSingleton<IPushChannel>(sp =>
        {
            // A copy: the pipeline found in DI is the channel's, not written into the shared options.
            var options = sp.GetRequiredService<IOptions<PushClientOptions>>().Value.Clone();

            // An app may register its own reconnect pipeline in DI rather than in the options.
            if (options.ReconnectPipeline is null && sp is IKeyedServiceProvider keyed
                && keyed.GetKeyedService(typeof(ResiliencePipeline), ReconnectPipelineKey) is ResiliencePipeline pipeline)
            {
                options.ReconnectPipeline = pipeline;
            }

            return new PushChannel(options, sp.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance);
        });
        return services;
    }

    /// <summary>Reports every problem <see cref="PushClientOptions.Validate"/> would, as options validation does.</summary>
    private sealed class PushClientOptionsValidator : IValidateOptions<PushClientOptions>
    {
        public ValidateOptionsResult Validate(string? name, PushClientOptions options) =>
            options.Problems() is { Count: > 0 } problems ? ValidateOptionsResult.Fail(problems) : ValidateOptionsResult.Success;
    }
}
