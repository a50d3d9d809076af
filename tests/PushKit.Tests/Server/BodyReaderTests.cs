using Microsoft.AspNetCore.Http;
using PushKit.Server.Endpoints;

namespace PushKit.Tests.Server;

/// <summary>
/// A POST body's announced length is a claim: the server must not set aside memory for it before the bytes arrive
/// (a hundred requests announcing 1 MiB and sending 8 bytes each held 100 MiB).
/// </summary>
public class BodyReaderTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    /// <summary>Yields its bytes in small pieces, then never ends; records the largest buffer it was offered.</summary>
    private sealed class TricklingStream(byte[] content) : Stream
    {
        private int _position;

        public int LargestBufferOffered { get; private set; }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            LargestBufferOffered = Math.Max(LargestBufferOffered, buffer.Length);
            if (_position == content.Length)
            {
                await Task.Delay(Timeout.Infinite, cancellationToken);
            }

            var count = Math.Min(Math.Min(buffer.Length, 8), content.Length - _position);
            content.AsMemory(_position, count).CopyTo(buffer);
            _position += count;
            return count;
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    private static (HttpRequest Request, TricklingStream Body) Request(byte[] content, long? contentLength)
    {
        var body = new TricklingStream(content);
        var context = new DefaultHttpContext();
        context.Request.Body = body;
        context.Request.ContentLength = contentLength;
        return (context.Request, body);
    }

    [Fact]
    public async Task A_large_announced_length_sets_aside_nothing_before_the_bytes_arrive()
    {
        var (request, body) = Request("{\"type\":"u8.ToArray(), contentLength: 1 << 20);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => BodyReader.ReadAsync(request, 1 << 20, cts.Token));
        Assert.InRange(body.LargestBufferOffered, 1, 64 * 1024);
    }

    [Theory]
    [InlineData(100)]
    [InlineData(64 * 1024)]
    [InlineData(200_000)]
    public async Task A_body_of_its_announced_length_is_read_whole(int size)
    {
        var content = Enumerable.Range(0, size).Select(i => (byte)i).ToArray();
        var (request, _) = Request(content, content.Length);
        Assert.Equal(content, await BodyReader.ReadAsync(request, 1 << 20, CancellationToken.None).WaitAsync(s_timeout));
    }

    [Fact]
    public async Task A_chunked_body_over_the_limit_is_refused_without_reading_past_it()
    {
        var (request, _) = Request(new byte[5000], contentLength: null);
        using var cts = new CancellationTokenSource(s_timeout);
        Assert.Null(await BodyReader.ReadAsync(request, 4096, cts.Token));
    }
}
