using System.Security.Claims;
using System.Text;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using PushKit.Protocol;
using PushKit.Server;
using PushKit.Server.Sessions;

namespace PushKit.Tests.Protocol;

/// <summary>
/// Message ids are idempotency keys the server remembers: they are short (at most 128 characters), and a user's are
/// forgotten once the user has had no session for <see cref="PushKitServerOptions.IdempotencyRetention"/>, so neither
/// a long id nor a long-gone user holds server memory.
/// </summary>
public sealed class MessageIdLimitTests
{
    [Fact]
    public void An_id_longer_than_128_characters_is_refused_where_the_message_is_made()
    {
        _ = new PushMessage(new byte[1], "text/plain") { Id = new string('i', PushMessage.MaxIdLength) };
        var error = Assert.Throws<ArgumentException>(() => new PushMessage(new byte[1], "text/plain") { Id = new string('i', PushMessage.MaxIdLength + 1) });
        Assert.Contains("at most 128 characters (was 129)", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_msg_frame_with_an_id_longer_than_128_characters_is_malformed(bool inPushKitsOwnLayout)
    {
        // PushKit's own layout goes through the fast path first; the other order only through the JSON reader.
        string Frame(int idLength) => inPushKitsOwnLayout
            ? $"{{\"type\":\"msg\",\"seq\":1,\"id\":\"{new string('i', idLength)}\",\"contentType\":\"text/plain\",\"data\":\"x\"}}"
            : $"{{\"seq\":1,\"type\":\"msg\",\"data\":\"x\",\"id\":\"{new string('i', idLength)}\"}}";

        Assert.Equal(FrameParseStatus.Ok, FrameCodec.TryParse(Encoding.UTF8.GetBytes(Frame(128)), out var frame, out _));
        Assert.Equal(128, frame.Message!.Id!.Length);
        Assert.Equal(FrameParseStatus.Malformed, FrameCodec.TryParse(Encoding.UTF8.GetBytes(Frame(129)), out _, out var error));
        Assert.Equal("'id' must be at most 128 characters (was 129).", error);
    }

    [Fact]
    public void A_users_ids_are_kept_while_the_user_has_a_session_and_for_the_retention_after()
    {
        var time = new FakeTimeProvider();
        var services = new ServiceCollection();
        services.AddSingleton<TimeProvider>(time);
        services.AddPushKit(o =>
        {
            o.ResumeWindow = TimeSpan.FromMinutes(2);
            o.IdempotencyRetention = TimeSpan.FromMinutes(10);
        });
        using var provider = services.BuildServiceProvider();
        var manager = provider.GetRequiredService<PushSessionManager>();
        var alice = new ClaimsPrincipal(new ClaimsIdentity([new Claim(ClaimTypes.NameIdentifier, "alice")], "test"));

        var session = manager.Create(alice, out _);
        Assert.True(manager.RecentIds(session)!.TryAdd("m1"));

        // The session lives out its resume window (it never connects): the ids stay with it.
        time.Advance(TimeSpan.FromMinutes(1));
        manager.ExpireIdleSessions();
        Assert.Equal(1, manager.UsersWithRecentIds);
        time.Advance(TimeSpan.FromMinutes(1.5));
        manager.ExpireIdleSessions();
        Assert.Null(manager.Find(session.SessionId));

        // Without a session, they are kept for the retention: a client that comes back within it has a message its
        // lost session applied recognised.
        time.Advance(TimeSpan.FromMinutes(9));
        manager.ExpireIdleSessions();
        Assert.Equal(1, manager.UsersWithRecentIds);
        var back = manager.Create(alice, out _);
        Assert.False(manager.RecentIds(back)!.TryAdd("m1"));
        back.End(PushCloseCode.Normal, "done");
        Assert.Null(manager.Find(back.SessionId));

        // The new session reset the clock; 10 minutes after it is gone, so are the ids.
        time.Advance(TimeSpan.FromSeconds(1));
        manager.ExpireIdleSessions();
        time.Advance(TimeSpan.FromMinutes(9));
        manager.ExpireIdleSessions();
        Assert.Equal(1, manager.UsersWithRecentIds);
        time.Advance(TimeSpan.FromMinutes(1));
        manager.ExpireIdleSessions();
        Assert.Equal(0, manager.UsersWithRecentIds);
        Assert.True(manager.RecentIds(manager.Create(alice, out _))!.TryAdd("m1"));
    }

    [Fact]
    public void A_retention_of_zero_forgets_a_users_ids_as_soon_as_the_last_session_is_gone()
    {
        var services = new ServiceCollection();
        services.AddPushKit(o => o.IdempotencyRetention = TimeSpan.Zero);
        using var provider = services.BuildServiceProvider();
        var manager = provider.GetRequiredService<PushSessionManager>();
        var alice = new ClaimsPrincipal(new ClaimsIdentity([new Claim(ClaimTypes.NameIdentifier, "alice")], "test"));
        var session = manager.Create(alice, out _);
        manager.RecentIds(session)!.TryAdd("m1");

        manager.ExpireIdleSessions();
        Assert.Equal(1, manager.UsersWithRecentIds);
        session.End(PushCloseCode.Normal, "done");
        manager.ExpireIdleSessions();
        Assert.Equal(0, manager.UsersWithRecentIds);
    }

    [Fact]
    public async Task A_users_entry_in_the_session_store_goes_with_the_users_last_session()
    {
        var services = new ServiceCollection();
        services.AddPushKit();
        await using var provider = services.BuildServiceProvider();
        var manager = provider.GetRequiredService<PushSessionManager>();
        var store = (InMemoryPushSessionStore)provider.GetRequiredService<IPushSessionStore>();
        ClaimsPrincipal User(int n) => new(new ClaimsIdentity([new Claim(ClaimTypes.NameIdentifier, $"user-{n}")], "test"));

        // Many users come and go, each with two sessions at times, created and ended from several threads at once.
        await Task.WhenAll(Enumerable.Range(0, 4).Select(worker => Task.Run(() =>
        {
            for (var n = worker; n < 400; n += 4)
            {
                var first = manager.Create(User(n % 50), out _);
                var second = manager.Create(User(n % 50), out _);
                first.End(PushCloseCode.Normal, "done");
                Assert.True(store.HasSessionsForUser($"user-{n % 50}"));
                second.End(PushCloseCode.Normal, "done");
            }
        })));

        Assert.Equal(0, store.Count);
        Assert.Equal(0, store.UsersWithSessions);

        // A user who comes back is found again.
        var back = manager.Create(User(7), out _);
        Assert.Same(back, Assert.Single(manager.ForUser("user-7")));
    }

    [Fact]
    public void A_negative_retention_is_refused()
    {
        var services = new ServiceCollection();
        services.AddPushKit(o => o.IdempotencyRetention = TimeSpan.FromSeconds(-1));
        using var provider = services.BuildServiceProvider();
        var error = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() => provider.GetRequiredService<Microsoft.Extensions.Options.IOptions<PushKitServerOptions>>().Value);
        Assert.Contains("IdempotencyRetention must not be negative", error.Message, StringComparison.Ordinal);
    }
}
