using System.Buffers;

namespace PushKit.Delivery;

/// <summary>
/// An <see cref="IBufferWriter{T}"/> over an array rented from <see cref="ArrayPool{T}.Shared"/> only while it holds
/// data: <see cref="Release"/> hands the array back, so that an idle connection holds no buffer at all.
/// </summary>
internal sealed class PooledBufferWriter : IBufferWriter<byte>
{
    private const int MinimumSize = 1024;
    private byte[]? _buffer;
    private int _written;

    /// <summary>The bytes written since the last <see cref="Release"/> or <see cref="Reset"/>.</summary>
    public ReadOnlyMemory<byte> WrittenMemory => _buffer is null ? default : _buffer.AsMemory(0, _written);

    /// <summary>The number of bytes written.</summary>
    public int WrittenCount => _written;

    /// <summary>Whether an array is rented (what an idle connection must not hold).</summary>
    public bool HoldsBuffer => _buffer is not null;

    /// <summary>How many arrays were rented from the pool so far (growing rents one more).</summary>
    public int Rentals { get; private set; }

    /// <summary>Forgets what was written and keeps the array for more.</summary>
    public void Reset() => _written = 0;

    /// <summary>Forgets what was written and returns the array to the pool.</summary>
    public void Release()
    {
        _written = 0;
        if (_buffer is { } buffer)
        {
            _buffer = null;
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Makes room for <paramref name="totalBytes"/> bytes in all (what is written included) in one step, so that a
    /// batch whose size is known is not grown by doubling, renting and copying along the way.
    /// </summary>
    public void EnsureCapacity(int totalBytes)
    {
        if (totalBytes > _written)
        {
            Ensure(totalBytes - _written);
        }
    }

    public void Advance(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (_buffer is null || _written + count > _buffer.Length)
        {
            throw new InvalidOperationException("Cannot advance past the end of the buffer.");
        }

        _written += count;
    }

    public Memory<byte> GetMemory(int sizeHint = 0)
    {
        Ensure(sizeHint);
        return _buffer.AsMemory(_written);
    }

    public Span<byte> GetSpan(int sizeHint = 0)
    {
        Ensure(sizeHint);
        return _buffer.AsSpan(_written);
    }

    private void Ensure(int sizeHint)
    {
        var needed = _written + Math.Max(sizeHint, 1);
        if (_buffer is null)
        {
            _buffer = ArrayPool<byte>.Shared.Rent(Math.Max(needed, MinimumSize));
            Rentals++;
            return;
        }

        if (needed <= _buffer.Length)
        {
            return;
        }

        var larger = ArrayPool<byte>.Shared.Rent(Math.Max(needed, checked(_buffer.Length * 2)));
        Rentals++;
        _buffer.AsSpan(0, _written).CopyTo(larger);
        ArrayPool<byte>.Shared.Return(_buffer);
        _buffer = larger;
    }
}
