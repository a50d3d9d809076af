using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace PushKit.Client;

/// <summary>Builds a client <see cref="IPushChannel"/>.</summary>
/// <example>
/// <code>
/// await using var channel = new PushChannelBuilder().WithUrl("http://localhost:5000/push").Build();
/// await channel.ConnectAsync();
/// await channel.SendStringAsync("hello");
/// </code>
/// </example>
public sealed class PushChannelBuilder
{
    private readonly PushClientOptions _options = new();
    private ILoggerFactory _loggerFactory = NullLoggerFactory.Instance;

    /// <summary>Sets the server's PushKit base URL (what the server passed to <c>MapPushKit</c>).</summary>
    /// <param name="url">An absolute http(s) or ws(s) URL, for example <c>https://example.com/push</c>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="url"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="url"/> is not an absolute http, https, ws or wss URL.</exception>
    public PushChannelBuilder WithUrl(string url)
    {
        ArgumentNullException.ThrowIfNull(url);
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https" or "ws" or "wss"))
        {
            throw new ArgumentException($"'{url}' is not an absolute http, https, ws or wss URL.", nameof(url));
        }

        _options.Url = uri;
        return this;
    }

    /// <summary>Sets the server's PushKit base URL.</summary>
    /// <param name="url">An absolute http(s) or ws(s) URL.</param>
    /// <exception cref="ArgumentException"><paramref name="url"/> is not an absolute http, https, ws or wss URL.</exception>
    public PushChannelBuilder WithUrl(Uri url)
    {
        ArgumentNullException.ThrowIfNull(url);
        if (!url.IsAbsoluteUri || url.Scheme is not ("http" or "https" or "ws" or "wss"))
        {
            throw new ArgumentException($"'{url}' is not an absolute http, https, ws or wss URL.", nameof(url));
        }

        _options.Url = url;
        return this;
    }

    /// <summary>Adjusts the options.</summary>
    /// <param name="configure">Changes <see cref="PushClientOptions"/>.</param>
    public PushChannelBuilder Configure(Action<PushClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        configure(_options);
        return this;
    }

    /// <summary>Sends the channel's logs to <paramref name="loggerFactory"/>.</summary>
    /// <param name="loggerFactory">The logger factory.</param>
    public PushChannelBuilder WithLogging(ILoggerFactory loggerFactory)
    {
        _loggerFactory = loggerFactory ?? throw new ArgumentNullException(nameof(loggerFactory));
        return this;
    }

    /// <summary>Creates the channel (not connected yet: call <see cref="IPushChannel.ConnectAsync"/>).</summary>
    /// <remarks>
    /// The channel takes a copy of the options as they are now: changing them afterwards (through
    /// <see cref="Configure"/>) affects only channels built later, so one builder can build several independent channels.
    /// </remarks>
    /// <exception cref="ArgumentException">The options are invalid; the message lists every problem.</exception>
    public IPushChannel Build() => new PushChannel(_options, _loggerFactory);
}
