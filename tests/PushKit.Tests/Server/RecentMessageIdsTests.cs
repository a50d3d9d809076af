using PushKit.Server.Sessions;

namespace PushKit.Tests.Server;

/// <summary>
/// The claims that keep one message id from being applied twice when two sessions of a user deliver it at once
/// (reliability §7): one applies it, the other waits and then finds it applied, or applies it itself when the first
/// did not.
/// </summary>
public sealed class RecentMessageIdsTests
{
    private static readonly TimeSpan T = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task A_copy_that_arrives_while_the_id_is_being_applied_waits_then_finds_it_applied()
    {
        var ids = new RecentMessageIds(16);
        Assert.Equal(IdClaim.Claimed, ids.Begin("order-42", out var none));
        Assert.Null(none);

        Assert.Equal(IdClaim.Busy, ids.Begin("order-42", out var busy));
        Assert.Equal(IdClaim.Busy, ids.Begin("order-42", out var busyToo));
        Assert.Same(busy, busyToo);
        Assert.False(busy!.IsCompleted);

        ids.End("order-42", applied: true);
        await busy.WaitAsync(T);
        Assert.Equal(IdClaim.Applied, ids.Begin("order-42", out _));
    }

    [Fact]
    public async Task When_the_first_copy_was_not_applied_the_waiting_copy_claims_it()
    {
        var ids = new RecentMessageIds(16);
        Assert.Equal(IdClaim.Claimed, ids.Begin("order-42", out _));
        Assert.Equal(IdClaim.Busy, ids.Begin("order-42", out var busy));

        // The first delivery was interrupted (its connection ended, its handler threw): the id is not recorded.
        ids.End("order-42", applied: false);
        await busy!.WaitAsync(T);
        Assert.Equal(IdClaim.Claimed, ids.Begin("order-42", out _));
        ids.End("order-42", applied: true);
        Assert.False(ids.TryAdd("order-42"));
    }

    [Fact]
    public void Other_ids_are_not_held_up_by_one_being_applied()
    {
        var ids = new RecentMessageIds(16);
        Assert.Equal(IdClaim.Claimed, ids.Begin("a", out _));
        Assert.Equal(IdClaim.Claimed, ids.Begin("b", out _));
        ids.End("b", applied: true);
        ids.End("a", applied: true);
        Assert.Equal(IdClaim.Applied, ids.Begin("a", out _));
        Assert.Equal(IdClaim.Applied, ids.Begin("b", out _));
    }
}
