using PushKit.Protocol;

namespace PushKit.Client.Http;

/// <summary>
/// The SSE response stream, read through a counter of the current event's bytes: the parser keeps an event's lines
/// until the blank line that ends it, so a server (or whatever answers in its place) that never ends an event would
/// have the client buffer without limit. Past <c>limit</c> bytes in one event the read fails with
/// <see cref="PushCloseCode.MessageTooBig"/>, as a complete event over the limit does.
/// </summary>
/// <remarks>
/// Lines end with CR, LF or CRLF (the SSE grammar); a blank line ends the event. Between line ends the bytes are
/// skipped with a vectorised search, so the count costs a few nanoseconds per line.
/// </remarks>
internal sealed class SseEventLimitStream(Stream inner, long limit) : Stream
{
    private long _eventBytes;
    private bool _atLineStart = true;
    private bool _afterCarriageReturn;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var read = await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        Count(buffer.Span[..read]);
        return read;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        var read = inner.Read(buffer);
        Count(buffer[..read]);
        return read;
    }

    /// <summary>Counts <paramref name="bytes"/> into the current event; throws when the event passes the limit.</summary>
    internal void Count(ReadOnlySpan<byte> bytes)
    {
        while (!bytes.IsEmpty)
        {
            var end = bytes.IndexOfAny((byte)'\r', (byte)'\n');
            if (end < 0)
            {
                _eventBytes += bytes.Length;
                _atLineStart = false;
                _afterCarriageReturn = false;
                break;
            }

            if (end > 0)
            {
                _eventBytes += end;
                _atLineStart = false;
                _afterCarriageReturn = false;
                bytes = bytes[end..];
                continue;
            }

            var terminator = bytes[0];
            bytes = bytes[1..];
            if (terminator == (byte)'\n' && _afterCarriageReturn)
            {
                // The LF of a CRLF: the line already ended at the CR.
                _afterCarriageReturn = false;
                continue;
            }

            if (_atLineStart)
            {
                // A blank line: the event is complete.
                _eventBytes = 0;
            }
            else
            {
                // A line end counts as a byte of the event (the parser keeps one between data lines).
                _eventBytes++;
            }

            _atLineStart = true;
            _afterCarriageReturn = terminator == (byte)'\r';
        }

        if (_eventBytes > limit)
        {
            throw new PushProtocolException(PushCloseCode.MessageTooBig, $"An SSE event grew past {limit} bytes without ending.");
        }
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }

    public override ValueTask DisposeAsync() => inner.DisposeAsync();
}
