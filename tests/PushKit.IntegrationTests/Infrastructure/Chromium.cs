using PuppeteerSharp;

namespace PushKit.IntegrationTests.Infrastructure;

/// <summary>
/// One headless Chromium for a test class (Debian's <c>chromium</c> package; <c>.ci/run</c> installs it). Where no
/// Chromium is found, the browser tests are skipped with the reason, unless <c>PUSHKIT_REQUIRE_BROWSER=1</c> (set by
/// <c>.ci/run</c>), which makes them fail instead. <c>PUSHKIT_CHROMIUM</c> names another executable.
/// </summary>
public sealed class Chromium : IAsyncLifetime
{
    private static readonly string[] s_candidates =
        ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable"];

    private IBrowser? _browser;
    private DirectoryInfo? _profile;

    /// <summary>Why the browser tests cannot run here, or null when they can.</summary>
    public string? MissingReason { get; private set; }

    public IBrowser Browser => _browser ?? throw new InvalidOperationException(MissingReason);

    public async Task InitializeAsync()
    {
        var path = Environment.GetEnvironmentVariable("PUSHKIT_CHROMIUM") is { Length: > 0 } configured
            ? configured
            : s_candidates.FirstOrDefault(File.Exists);
        if (path is null || !File.Exists(path))
        {
            MissingReason = path is null
                ? "Chromium was not found: install it (apt-get install -y chromium) or set PUSHKIT_CHROMIUM to its path. .ci/run installs it."
                : $"PUSHKIT_CHROMIUM names '{path}', which does not exist.";
            if (Environment.GetEnvironmentVariable("PUSHKIT_REQUIRE_BROWSER") == "1")
            {
                throw new InvalidOperationException(MissingReason + " PUSHKIT_REQUIRE_BROWSER=1 makes this a failure.");
            }

            return;
        }

        _profile = Directory.CreateTempSubdirectory("pushkit-chromium-");
        _browser = await Puppeteer.LaunchAsync(new LaunchOptions
        {
            ExecutablePath = path,
            Headless = true,
            Timeout = (int)TestTimeouts.Default.TotalMilliseconds,
            UserDataDir = _profile.FullName,

            // Root needs --no-sandbox; the rest keep Chromium off the network beyond the page it is given.
            Args =
            [
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
            ],
        }).WaitAsync(TestTimeouts.Default);
    }

    /// <summary>Skips the calling test (or fails it under <c>PUSHKIT_REQUIRE_BROWSER=1</c>) when there is no browser.</summary>
    public void SkipIfMissing() => Skip.If(MissingReason is not null, MissingReason);

    public async Task DisposeAsync()
    {
        if (_browser is not null)
        {
            await _browser.CloseAsync().WaitAsync(TestTimeouts.Default);
            await _browser.DisposeAsync();
        }

        try
        {
            _profile?.Delete(recursive: true);
        }
        catch (IOException)
        {
            // A temporary profile folder left behind is harmless.
        }
    }
}
