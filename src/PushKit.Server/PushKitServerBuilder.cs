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
