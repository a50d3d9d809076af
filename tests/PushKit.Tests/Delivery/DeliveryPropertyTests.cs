using System.Threading.Channels;
using CsCheck;
using Microsoft.Extensions.Logging.Abstractions;
using PushKit.Delivery;

namespace PushKit.Tests.Delivery;

/// <summary>
/// Property: whatever the schedule of connection cuts, two delivery engines that keep reconnecting deliver every
/// message exactly once and in order, in both directions.
/// </summary>
public class DeliveryPropertyTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    [Fact]
    public void Exactly_once_in_order_under_random_cut_schedules()
    {
        // A schedule: how many messages each side sends, and after how many sent messages each cut happens.
        var schedules =
            from count in Gen.Int[1, 300]
            from cuts in Gen.Int[0, 300].Array[0, 12]
            select (count, cuts);

        schedules.Sample(schedule => RunScheduleAsync(schedule.count, schedule.cuts).GetAwaiter().GetResult(), iter: 40, threads: 1);
    }

    private static async Task RunScheduleAsync(int count, int[] cutAfter)
    {
        var toRight = Channel.CreateUnbounded<string>();
        var toLeft = Channel.CreateUnbounded<string>();
        var left = new DeliveryEngine("left", 1 << 20, (m, ct) => toLeft.Writer.WriteAsync(m.GetString(), ct), NullLogger.Instance);
        var right = new DeliveryEngine("right", 1 << 20, (m, ct) => toRight.Writer.WriteAsync(m.GetString(), ct), NullLogger.Instance);
        var cuts = new SortedSet<int>(cutAfter.Where(c => c < count));

        var (a, b) = InMemoryConnection.CreatePair();
        var leftRun = left.RunAsync(a);
        var rightRun = right.RunAsync(b);
        for (var i = 1; i <= count; i++)
        {
            _ = left.Enqueue(PushMessage.FromString($"L{i}"), trackAck: false);
            _ = right.Enqueue(PushMessage.FromString($"R{i}"), trackAck: false);
            if (cuts.Contains(i))
            {
                // The network fails at this point; both ends notice and a new connection carries the session on.
                a.Abort();
                await Task.WhenAll(leftRun, rightRun).WaitAsync(s_timeout);
                (a, b) = InMemoryConnection.CreatePair();
                leftRun = left.RunAsync(a);
                rightRun = right.RunAsync(b);
            }
        }

        var atRight = await ReadAsync(toRight, count);
        var atLeft = await ReadAsync(toLeft, count);
        Assert.Equal(Enumerable.Range(1, count).Select(i => $"L{i}"), atRight);
        Assert.Equal(Enumerable.Range(1, count).Select(i => $"R{i}"), atLeft);

        left.CloseConnection(PushCloseCode.Normal, null);
        await Task.WhenAll(leftRun, rightRun).WaitAsync(s_timeout);
        Assert.False(toRight.Reader.TryRead(out _), "a duplicate reached the application");
        Assert.False(toLeft.Reader.TryRead(out _), "a duplicate reached the application");
    }

    private static async Task<List<string>> ReadAsync(Channel<string> channel, int count)
    {
        using var cts = new CancellationTokenSource(s_timeout);
        var result = new List<string>(count);
        while (result.Count < count)
        {
            result.Add(await channel.Reader.ReadAsync(cts.Token));
        }

        return result;
    }
}
