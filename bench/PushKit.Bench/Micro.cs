using System.Buffers;
using BenchmarkDotNet.Attributes;
using PushKit.Protocol;

namespace PushKit.Bench;

/// <summary>Micro-benchmarks of the framing hot path, with allocations per operation.</summary>
[MemoryDiagnoser]
public class Micro
{
    private readonly ArrayBufferWriter<byte> _output = new(64 * 1024);
    private readonly PushMessage _message = PushMessage.FromString(new string('x', 256));
    private byte[] _frame = [];

    [GlobalSetup]
    public void Setup()
    {
        _ = _message.EncodedBody.Length;
        FrameCodec.WriteMessage(_output, 42, _message);
        _frame = _output.WrittenSpan.ToArray();
    }

    /// <summary>Writing a message frame for one more recipient (the broadcast hot path): the body is encoded once.</summary>
    [Benchmark]
    public int WriteMessageFrame()
    {
        _output.ResetWrittenCount();
        FrameCodec.WriteMessage(_output, 42, _message);
        return _output.WrittenCount;
    }

    /// <summary>Encoding a new message's body (once per message, shared by every recipient).</summary>
    [Benchmark]
    public int EncodeNewMessage() => PushMessage.FromString("hello, world").EncodedBody.Length;

    /// <summary>Parsing a received message frame.</summary>
    [Benchmark]
    public long ParseMessageFrame()
    {
        FrameCodec.TryParse(_frame, out var frame, out _);
        return frame.Sequence;
    }

    /// <summary>Writing an ack.</summary>
    [Benchmark]
    public int WriteAck()
    {
        _output.ResetWrittenCount();
        FrameCodec.WriteAck(_output, 123_456);
        return _output.WrittenCount;
    }
}
