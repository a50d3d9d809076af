using PushKit.Delivery;
using System.Security.Claims;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PushKit.Server.Diagnostics;

namespace PushKit.Server.Sessions;

/// <summary>Creates, finds and ends sessions, and dispatches their messages to the application's handlers.</summary>
internal sealed partial class PushSessionManager : IPushSessionRegistry
{
    private readonly IPushSessionStore _store;
    private readonly IServiceScopeFactory _scopeFactory;
    private readonly ILoggerFactory _loggerFactory;
    private readonly ILogger _logger;

    public PushSessionManager(
        IPushSessionStore store,
        IOptions<PushKitServerOptions> options,
        IServiceScopeFactory scopeFactory,
        TimeProvider timeProvider,
        ILoggerFactory loggerFactory,
        ServerMetrics metrics)
    {
        _store = store;
        Metrics = metrics;
        Options = options.Value;
        _scopeFactory = scopeFactory;
        TimeProvider = timeProvider;
        Heartbeat = new HeartbeatSettings(Options.HeartbeatInterval, Options.HeartbeatTimeout, timeProvider, spreadChecks: true);
        BufferLimits = new BufferLimits(Options.MaxBufferedMessagesPerSession, Options.MaxBufferedBytesPerSession, Options.BufferFullPolicy);
        _loggerFactory = loggerFactory;
        _logger = loggerFactory.CreateLogger("PushKit.Server.Sessions");

        // Whether any PushHandler is registered decides once where client messages go: handlers, or ReadAllAsync.
        // Asked lazily (handlers may depend on IPushSender, which depends on this manager), and without creating a
        // handler where the container can tell: a handler whose constructor throws, or whose scope can only be
        // disposed asynchronously, must not fail this once-only question, whose answer Lazy would keep for good.
        _hasHandlers = new Lazy<bool>(() => HasRegisteredHandlers(scopeFactory));
    }

    private readonly Lazy<bool> _hasHandlers;

    private static bool HasRegisteredHandlers(IServiceScopeFactory scopeFactory)
    {
        var scope = scopeFactory.CreateAsyncScope();
        try
        {
            var services = scope.ServiceProvider;
            return services.GetService<IServiceProviderIsService>() is { } isService
                ? isService.IsService(typeof(PushHandler))
                : services.GetServices<PushHandler>().Any();
        }
        catch (Exception ex) when (ex is not ObjectDisposedException)
        {
            // Only something registered can fail to be created: there is a handler, and each call will log why.
            return true;
        }
        finally
        {
            // Asynchronously: a scoped dependency may be disposable only so. Nobody awaits it; a failure is dropped.
            Unawaited.ObserveFailure(scope.DisposeAsync().AsTask());
        }
    }

    public PushKitServerOptions Options { get; }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, RecentMessageIds> _recentIdsByUser = new(StringComparer.Ordinal);

    /// <summary>
    /// The message-id scope of <paramref name="session"/>: shared by all sessions of an authenticated user, so a send
    /// retried on a new session is still recognised; per session for anonymous clients. Null when disabled.
    /// </summary>
    public RecentMessageIds? RecentIds(PushSession session)
    {
        var capacity = Options.IdempotencyCacheSize;
        if (capacity == 0)
        {
            return null;
        }

        return session.UserId is { } userId
            ? _recentIdsByUser.GetOrAdd(userId, _ => new RecentMessageIds(capacity))
            : session.AnonymousRecentIds ??= new RecentMessageIds(capacity);
    }

    /// <summary>
    /// Drops the message ids of users who have had no session on this server for <see cref="PushKitServerOptions.IdempotencyRetention"/>:
    /// without this, every user who ever sent something would keep up to <see cref="PushKitServerOptions.IdempotencyCacheSize"/>
    /// ids for the life of the process.
    /// </summary>
    /// <remarks>
    /// A session created in the moment between the check and the removal may record an id in the dropped cache; the
    /// user's next message starts a new one. That only loses what the retention was about to forget anyway.
    /// </remarks>
    private void ForgetIdleUsersIds()
    {
        if (_recentIdsByUser.IsEmpty)
        {
            return;
        }

        var now = TimeProvider.GetTimestamp();
        foreach (var (userId, ids) in _recentIdsByUser)
        {
            if (_store.HasSessionsForUser(userId))
            {
                ids.NoSessionSince = 0;
                continue;
            }

            if (ids.NoSessionSince == 0)
            {
                ids.NoSessionSince = now;
            }

            // A retention of zero drops them on the sweep that first finds the user without a session.
            if (TimeProvider.GetElapsedTime(ids.NoSessionSince, now) >= Options.IdempotencyRetention)
            {
                _recentIdsByUser.TryRemove(new KeyValuePair<string, RecentMessageIds>(userId, ids));
            }
        }
    }

    /// <summary>How many users' message ids are kept (for tests).</summary>
    internal int UsersWithRecentIds => _recentIdsByUser.Count;

    public ILogger Logger => _logger;

    /// <summary>The server's instruments (<see cref="PushKitMetrics.MeterName"/>).</summary>
    public ServerMetrics Metrics { get; }

    public TimeProvider TimeProvider { get; }

    /// <summary>Heartbeats of every session's connection: one timer checks them all.</summary>
    public HeartbeatSettings Heartbeat { get; }

    /// <summary>Every session's buffer limits.</summary>
    public BufferLimits BufferLimits { get; }

    public bool HasHandlers => _hasHandlers.Value;

    public int Count => _store.All().Count(s => s.State != PushChannelState.Closed);

    private volatile bool _goingAway;

    /// <summary>Whether the host is stopping: every connection, including one that attaches from now on, is told to go away.</summary>
    internal bool IsGoingAway => _goingAway;

    /// <summary>
    /// The host is stopping: closes every session's connection with <see cref="PushCloseCode.GoingAway"/>, and makes
    /// a connection that attaches later (one that was being set up at this moment, or a client that connects while
    /// the web server still accepts requests) get the same close as soon as it carries its session.
    /// </summary>
    internal void GoAway()
    {
        // Set before the sessions are visited: a connection that becomes a session's run after its visit reads it
        // (PushSession.RunConnectionAsync), one that became the run before is closed here (the engine's lock orders both).
        _goingAway = true;
        foreach (var session in _store.All())
        {
            session.Engine.CloseConnection(PushCloseCode.GoingAway, GoingAwayReason, GoingAwayRetryAfterMs);
        }
    }

    /// <summary>The close reason a stopping server gives.</summary>
    internal const string GoingAwayReason = "The server is shutting down.";

    /// <summary>How long a client told that the server is stopping waits before it reconnects.</summary>
    internal const int GoingAwayRetryAfterMs = 1000;

    /// <summary>
    /// Stands for the caller when no authentication ran (reading <c>HttpContext.User</c> would create a new empty
    /// principal per request, for long-lived connections and sessions to keep). Only ever passed to
    /// <see cref="PushKitServerOptions.UserIdProvider"/>, never handed to the application.
    /// </summary>
    internal static readonly ClaimsPrincipal Anonymous = new(new ClaimsIdentity());

    /// <summary>The caller of <paramref name="context"/>, or null when no authentication ran.</summary>
    internal static ClaimsPrincipal? UserOf(Microsoft.AspNetCore.Http.HttpContext context) =>
        context.Features.Get<Microsoft.AspNetCore.Http.Features.Authentication.IHttpAuthenticationFeature>()?.User;

    /// <summary>Creates and stores a session.</summary>
    /// <param name="user">The negotiating user; null when no authentication ran.</param>
    /// <param name="resumeSecret">The new session's secret (only its hash is kept).</param>
    /// <param name="clientMaxMessageBytes">The largest frame the client accepts, when it said; sends stay within it.</param>
    public PushSession Create(ClaimsPrincipal? user, out string resumeSecret, int? clientMaxMessageBytes = null)
    {
        // 128 bits of id (public) and 256 bits of secret (never stored, only its SHA-256).
        var sessionId = NewToken(16);
        resumeSecret = NewToken(32);
        var session = new PushSession(
            this,
            sessionId,
            HashSecret(resumeSecret),
            user,
            Options.UserIdProvider(user ?? Anonymous),
            TimeProvider.GetTimestamp(),
            Math.Min(Options.MaxMessageBytes, clientMaxMessageBytes ?? int.MaxValue),
            _loggerFactory.CreateLogger("PushKit.Server.Session"));
        _store.Add(session);
        Metrics.SessionCreated();
        Log.SessionCreated(_logger, sessionId, session.UserId);
        return session;
    }

    public PushSession? Find(string sessionId) => _store.Find(sessionId);

    // Ended sessions can linger in the store while their last connection delivers the close; the registry hides them.
    IPushSession? IPushSessionRegistry.FindSession(string sessionId)
    {
        ArgumentNullException.ThrowIfNull(sessionId);
        return _store.Find(sessionId) is { State: not PushChannelState.Closed } session ? session : null;
    }

    public IReadOnlyList<IPushSession> GetSessions(string? userId = null) =>
        (userId is null ? _store.All() : _store.ForUser(userId)).Where(s => s.State != PushChannelState.Closed).ToArray<IPushSession>();

    public IEnumerable<PushSession> All() => _store.All();

    public IEnumerable<PushSession> ForUser(string userId) => _store.ForUser(userId);

    /// <summary>
    /// Ends the sessions that have had no connection for longer than the resume window, and forgets the ended ones that
    /// held their close that long (<see cref="PushSession.HoldsClose"/>).
    /// </summary>
    public int ExpireIdleSessions()
    {
        ForgetIdleUsersIds();
        var expired = 0;
        foreach (var session in _store.All())
        {
            if (session.HasEnded)
            {
                // Ended already: what is left is a close held for a returning client, forgotten after the window.
                session.ForgetIfDue(Options.ResumeWindow);
                continue;
            }

            var since = session.DisconnectedAt;
            if (since != 0 && TimeProvider.GetElapsedTime(since) > Options.ResumeWindow)
            {
                Log.SessionExpired(_logger, session.SessionId);
                session.End(PushCloseCode.SessionNotFound, "The session expired: no connection within the resume window.");
                expired++;
            }
        }

        return expired;
    }

    public ValueTask OnSessionStartedAsync(PushSession session, CancellationToken cancellationToken) =>
        HasHandlers
            ? RunHandlersAsync(session, nameof(PushHandler.OnSessionStartedAsync), 0, static (h, s, _, t) => h.OnSessionStartedAsync(s, t), cancellationToken)
            : default;

    public ValueTask DispatchAsync(PushSession session, PushMessage message, CancellationToken cancellationToken) =>
        RunHandlersAsync(session, nameof(PushHandler.OnMessageAsync), message, static (h, s, m, t) => h.OnMessageAsync(s, m, t), cancellationToken);

    /// <summary>
    /// Calls every handler, each from a new scope's instance, one after the other. A handler's exception is logged and
    /// the next one runs (<see cref="PushHandler"/>'s promise), except the cancellation of the call's own token, which
    /// escapes: then the call does not count (a message is replayed after the client reconnects).
    /// </summary>
    private async ValueTask RunHandlersAsync<TArg>(
        PushSession session,
        string method,
        TArg arg,
        Func<PushHandler, PushSession, TArg, CancellationToken, ValueTask> call,
        CancellationToken cancellationToken)
    {
        var scope = _scopeFactory.CreateAsyncScope();
        try
        {
            foreach (var handler in ResolveHandlers(scope, session, method))
            {
                try
                {
                    await call(handler, session, arg, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
                {
                    // Logged, not retried: a message that makes a handler throw must not block the session forever.
                    Log.HandlerFailed(_logger, session.SessionId, handler.GetType().Name, method, ex);
                }
            }
        }
        finally
        {
            await DisposeHandlerScopeAsync(scope, session, method).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The handlers for one call, from its scope. When creating them throws (a constructor, a dependency's), that is
    /// the application's failure like a handler's own exception: logged, and the call counts as made with no handler.
    /// Left to escape, it would cut the connection, and the client's replay of the message would fail the same way,
    /// for ever. (Shutdown's <see cref="ObjectDisposedException"/> still escapes: then the call did not happen.)
    /// </summary>
    private PushHandler[] ResolveHandlers(AsyncServiceScope scope, PushSession session, string method)
    {
        try
        {
            var handlers = scope.ServiceProvider.GetServices<PushHandler>();
            return handlers as PushHandler[] ?? [.. handlers];
        }
        catch (Exception ex) when (ex is not ObjectDisposedException)
        {
            Log.HandlersUnavailable(_logger, session.SessionId, method, ex);
            return [];
        }
    }

    /// <summary>Disposes a call's scope; a failure is logged, as in <see cref="ResolveHandlers"/>: the handlers have run.</summary>
    private async ValueTask DisposeHandlerScopeAsync(AsyncServiceScope scope, PushSession session, string method)
    {
        try
        {
            await scope.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not ObjectDisposedException)
        {
            Log.HandlersUnavailable(_logger, session.SessionId, method, ex);
        }
    }

    public void Remove(PushSession session) => _store.Remove(session);

    public void OnSessionEnded(PushSession session, PushCloseCode code, bool remove)
    {
        if (remove)
        {
            _store.Remove(session);
        }

        Metrics.SessionEnded(code);
        Log.SessionEnded(_logger, session.SessionId, code);
        if (HasHandlers)
        {
            _ = NotifyEndedAsync(session, code);
        }
    }

    private async Task NotifyEndedAsync(PushSession session, PushCloseCode code)
    {
        try
        {
            await RunHandlersAsync(session, nameof(PushHandler.OnSessionEndedAsync), code, static (h, s, c, _) => h.OnSessionEndedAsync(s, c), CancellationToken.None).ConfigureAwait(false);
        }
        catch (ObjectDisposedException)
        {
            // The host is shutting down and its services are gone.
        }
    }

    /// <summary>
    /// The longest secret a request may present. PushKit's own are 43 characters; anything far longer is not one, and
    /// is refused without hashing it.
    /// </summary>
    internal const int MaxSecretChars = 256;

    /// <summary>
    /// Writes the SHA-256 of <paramref name="secret"/>'s UTF-8 into <paramref name="hash"/>, allocating nothing: every
    /// request of the HTTP transports (an ack mostly) is checked this way.
    /// </summary>
    /// <returns>False, with nothing hashed, when the secret is longer than <see cref="MaxSecretChars"/>.</returns>
    internal static bool TryHashSecret(ReadOnlySpan<char> secret, Span<byte> hash)
    {
        if (secret.Length > MaxSecretChars)
        {
            return false;
        }

        Span<byte> utf8 = stackalloc byte[MaxSecretChars * 3];
        SHA256.HashData(utf8[..Encoding.UTF8.GetBytes(secret, utf8)], hash);
        return true;
    }

    private static byte[] HashSecret(string secret)
    {
        var hash = new byte[SHA256.HashSizeInBytes];
        return TryHashSecret(secret, hash) ? hash : throw new ArgumentException("The secret is too long.", nameof(secret));
    }

    private static string NewToken(int bytes)
    {
        Span<byte> random = stackalloc byte[bytes];
        RandomNumberGenerator.Fill(random);
        // base64url without padding: safe in URLs and query strings as is.
        return Convert.ToBase64String(random).TrimEnd('=').Replace('+', '-').Replace('/', '_');
    }

    private static partial class Log
    {
        [LoggerMessage(20, LogLevel.Debug, "Session {SessionId} created for user {UserId}")]
        public static partial void SessionCreated(ILogger logger, string sessionId, string? userId);

        [LoggerMessage(21, LogLevel.Debug, "Session {SessionId} expired after the resume window")]
        public static partial void SessionExpired(ILogger logger, string sessionId);

        [LoggerMessage(22, LogLevel.Debug, "Session {SessionId} ended ({CloseCode})")]
        public static partial void SessionEnded(ILogger logger, string sessionId, PushCloseCode closeCode);

        [LoggerMessage(23, LogLevel.Error, "Session {SessionId}: handler {Handler}'s {Method} threw")]
        public static partial void HandlerFailed(ILogger logger, string sessionId, string handler, string method, Exception exception);

        [LoggerMessage(26, LogLevel.Error, "Session {SessionId}: the handlers for {Method} could not be created from their DI scope, or the scope failed to dispose; the session carries on")]
        public static partial void HandlersUnavailable(ILogger logger, string sessionId, string method, Exception exception);
    }
}
