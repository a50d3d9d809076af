using System.Text;
using PushKit.Client.Http;

namespace PushKit.Tests.Client;

public class SseEventLimitStreamTests
{
    private static SseEventLimitStream Counter(long limit) => new(Stream.Null, limit);

    [Theory]
    [InlineData("\n")]
    [InlineData("\r\n")]
    [InlineData("\r")]
    public void Events_within_the_limit_pass_whatever_the_line_ends_and_however_the_reads_split_them(string eol)
    {
        // Three events of 40-odd bytes against a limit of 50: only the blank lines keep the count down.
        var stream = string.Concat(Enumerable.Repeat($"id: 7{eol}data: {new string('x', 30)}{eol}{eol}", 3)) + $": comment{eol}{eol}";
        var bytes = Encoding.UTF8.GetBytes(stream);
        for (var split = 1; split < bytes.Length; split++)
        {
            var counter = Counter(50);
            counter.Count(bytes.AsSpan(0, split));
            counter.Count(bytes.AsSpan(split));
        }

        var oneByteAtATime = Counter(50);
        foreach (var b in bytes)
        {
            oneByteAtATime.Count([b]);
        }
    }

    [Fact]
    public void A_line_that_never_ends_fails_at_the_limit_as_too_big()
    {
        var counter = Counter(1000);
        counter.Count(Encoding.UTF8.GetBytes("data: " + new string('a', 900)));
        var error = Assert.Throws<PushProtocolException>(() => counter.Count(new byte[200]));
        Assert.Equal(PushCloseCode.MessageTooBig, error.CloseCode);
    }

    [Fact]
    public void Many_short_lines_without_a_blank_line_fail_at_the_limit_too()
    {
        var counter = Counter(1000);
        var line = Encoding.UTF8.GetBytes("data: " + new string('a', 40) + "\n");
        for (var i = 0; i < 21; i++)
        {
            counter.Count(line);
        }

        Assert.Throws<PushProtocolException>(() => counter.Count(line));
    }

    [Fact]
    public void A_CRLF_split_across_two_reads_is_one_line_end_and_a_following_CRLF_is_the_blank_line()
    {
        var counter = Counter(20);
        counter.Count("data: 0123456789\r"u8);
        counter.Count("\n\r"u8);
        counter.Count("\n"u8);

        // The event ended: the next one starts from zero.
        counter.Count("data: 0123456789\n\n"u8);
    }
}
