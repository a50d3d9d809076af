using System.Buffers;

namespace PushKit.Connections;

/// <summary>
/// The transport seam: one physical connection that carries batches of encoded protocol frames (UTF-8 JSON
/// objects separated by <c>\n</c>, see <c>docs/protocol.md</c>). Everything above it — sequencing, acknowledgements,
/// replay — is transport-independent.
/// </summary>
/// <remarks>
/// PushKit calls <see cref="SendAsync"/> and <see cref="CloseAsync"/> from one writer at a time, and
/// <see cref="ReceiveAsync"/> from one reader at a time; the writer and the reader run concurrently.
/// </remarks>
public interface IPushTransportConnection : IAsyncDisposable
{
    /// <summary>The transport's name as negotiated, for example <c>websocket</c>.</summary>
    string TransportName { get; }

    /// <summary>Sends one batch of frames.</summary>
    /// <param name="frames">One or more encoded frames separated by <c>\n</c>.</param>
    /// <param name="cancellationToken">Aborts the send.</param>
    ValueTask SendAsync(ReadOnlyMemory<byte> frames, CancellationToken cancellationToken = default);

    /// <summary>Receives the next batch of frames into <paramref name="destination"/>.</summary>
    /// <param name="destination">Where the batch's bytes are written.</param>
    /// <param name="cancellationToken">Aborts the receive.</param>
    /// <returns>Data, or a close when the peer ended the connection in an orderly way.</returns>
    /// <exception cref="PushProtocolException">The batch exceeds the size limit (<see cref="PushCloseCode.MessageTooBig"/>).</exception>
    ValueTask<PushReceiveResult> ReceiveAsync(IBufferWriter<byte> destination, CancellationToken cancellationToken = default);

    /// <summary>Ends the connection in an orderly way with <paramref name="code"/>.</summary>
    /// <param name="code">The close code.</param>
    /// <param name="reason">A short reason.</param>
    /// <param name="cancellationToken">Abandons the orderly close.</param>
    ValueTask CloseAsync(PushCloseCode code, string? reason, CancellationToken cancellationToken = default);

    /// <summary>Ends the connection at once, without an orderly close.</summary>
    void Abort();
}

/// <summary>The outcome of <see cref="IPushTransportConnection.ReceiveAsync"/>.</summary>
public readonly struct PushReceiveResult : IEquatable<PushReceiveResult>
{
    private PushReceiveResult(bool isClosed, PushCloseCode? closeCode, string? closeReason)
    {
        IsClosed = isClosed;
        CloseCode = closeCode;
        CloseReason = closeReason;
    }

    /// <summary>A batch was received.</summary>
    public static PushReceiveResult Data => default;

    /// <summary>Whether the peer closed the connection (no data was received).</summary>
    public bool IsClosed { get; }

    /// <summary>The peer's close code, when it sent one.</summary>
    public PushCloseCode? CloseCode { get; }

    /// <summary>The peer's close reason, when it sent one.</summary>
    public string? CloseReason { get; }

    /// <summary>The peer closed the connection.</summary>
    /// <param name="closeCode">The peer's close code, if any.</param>
    /// <param name="closeReason">The peer's reason, if any.</param>
    public static PushReceiveResult Closed(PushCloseCode? closeCode, string? closeReason) => new(true, closeCode, closeReason);

    /// <inheritdoc />
    public bool Equals(PushReceiveResult other) =>
        IsClosed == other.IsClosed && CloseCode == other.CloseCode && CloseReason == other.CloseReason;

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is PushReceiveResult other && Equals(other);

    /// <inheritdoc />
    public override int GetHashCode() => HashCode.Combine(IsClosed, CloseCode, CloseReason);

    /// <summary>Compares two results.</summary>
    /// <param name="left">The first result.</param>
    /// <param name="right">The second result.</param>
    public static bool operator ==(PushReceiveResult left, PushReceiveResult right) => left.Equals(right);

    /// <summary>Compares two results.</summary>
    /// <param name="left">The first result.</param>
    /// <param name="right">The second result.</param>
    public static bool operator !=(PushReceiveResult left, PushReceiveResult right) => !left.Equals(right);
}
