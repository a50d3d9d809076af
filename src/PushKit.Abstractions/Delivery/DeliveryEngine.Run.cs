using System.Buffers;
using System.Threading.Channels;
using PushKit.Connections;
using PushKit.Protocol;

namespace PushKit.Delivery;

internal sealed partial class DeliveryEngine
{
    internal sealed record CloseRequest(PushCloseCode Code, string? Reason, int? RetryAfterMs, bool SendFrame);

    /// <summary>A control frame waiting for the write loop (pong, error).</summary>
    private readonly struct Control
    {
        private readonly FrameType _type;
        private readonly string? _code;
        private readonly string? _message;

        private Control(FrameType type, string? code, string? message)
        {
            _type = type;
            _code = code;
            _message = message;
        }

        public static Control Pong => new(FrameType.Pong, null, null);

        public bool IsPong => _type == FrameType.Pong;

        public bool IsPing => _type == FrameType.Ping;

        public static Control Ping => new(FrameType.Ping, null, null);

        public static Control Error(string code, string message) => new(FrameType.Error, code, message);

        public void Write(IBufferWriter<byte> output)
        {
            if (_type == FrameType.Pong)
            {
                FrameCodec.WritePong(output);
            }
            else if (_type == FrameType.Ping)
            {
                FrameCodec.WritePing(output);
            }
            else
            {
                FrameCodec.WriteError(output, _code!, _message!);
            }
        }
    }

    /// <summary>The state of one connection's run: its doorbell, control queue, close request and cancellation.</summary>
    private sealed class Run : IDisposable, IHeartbeatTarget
    {
        private readonly DeliveryEngine _engine;
        private readonly CancellationTokenSource _cts;
        private readonly CancellationToken _outerToken;
        private Queue<Control>? _control;
        private bool _pongQueued;
        private bool _pingQueued;
        private CloseRequest? _localClose;
        private long _lastReceived;
        private long _lastQueued;
        private long _lastSent;
        private bool _readPaused;
        private bool _delivering;
        private bool _holdingAck;
        private bool _drainExpired;
        private int _drainStarted;
        private Inbound? _inbound;
        private ITimer? _ackTimer;
        private bool _ackTimerFired;
        private Exception? _writeFailure;

        public Run(DeliveryEngine engine, IPushTransportConnection connection, CancellationToken cancellationToken)
        {
            _engine = engine;
            Connection = connection;
            _outerToken = cancellationToken;
            _cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            Token = _cts.Token;

            // The write loop's wait ends when the run is cancelled; one registration for the run's whole life.
            Token.UnsafeRegister(static (state, token) => ((AsyncSignal)state!).Cancel(token), Doorbell);
        }

        public IPushTransportConnection Connection { get; }

        public DeliveryEngine Engine => _engine;

        public CancellationToken Token { get; }

        /// <summary>Wakes the write loop; holds at most one pending ring.</summary>
        public AsyncSignal Doorbell { get; } = new();

        /// <summary>
        /// Inbound messages waiting for the application, in sequence order; null until the first one arrives (most
        /// connections on a server only ever receive acks and pings, and then need no queue and no delivery loop).
        /// </summary>
        public Inbound? Deliveries => Volatile.Read(ref _inbound);

        /// <summary>The delivery loop, once started.</summary>
        public Task? Delivery { get; private set; }

        /// <summary>Creates the delivery queue and starts its loop (read loop only).</summary>
        public Inbound StartDeliveries(int capacity, Func<Run, CancellationToken, Task> loop)
        {
            if (_inbound is { } existing)
            {
                return existing;
            }

            // Delivery has its own cancellation: after an orderly close from the peer it drains what arrived even
            // though the connection's run is over.
            var inbound = new Inbound(capacity, _outerToken, Token);
            Volatile.Write(ref _inbound, inbound);
            Delivery = loop(this, inbound.Stop.Token);
            return inbound;
        }

        /// <summary>Stops delivery at once (what is queued is not handed over).</summary>
        public Task StopDeliveryAsync() => _inbound?.Stop.CancelAsync() ?? Task.CompletedTask;

        /// <summary>Wakes the read loop if it is paused, to look again at whether it may read on.</summary>
        public void WakeReader()
        {
            if (ReadPaused)
            {
                _inbound?.Room.Set();
            }
        }

        public CloseRequest? LocalClose => Volatile.Read(ref _localClose);

        /// <summary>Whether the application is being handed a message right now.</summary>
        public bool Delivering
        {
            get => Volatile.Read(ref _delivering);
            set => Volatile.Write(ref _delivering, value);
        }

        /// <summary>Whether received messages still wait for, or are being handed to, the application.</summary>
        public bool HasUndelivered => Deliveries?.Count > 0 || Delivering;

        /// <summary>Whether the drain before a going-away close has run out of time.</summary>
        public bool DrainExpired => Volatile.Read(ref _drainExpired);

        /// <summary>Starts (once) the drain deadline; when it passes, the write loop is woken to close regardless.</summary>
        public void StartDrainTimer(TimeSpan timeout)
        {
            if (Interlocked.Exchange(ref _drainStarted, 1) == 0)
            {
                // Real time: the drain bounds a shutdown, whatever clock the session runs on.
                _ = Task.Delay(timeout, TimeProvider.System, Token).ContinueWith(
                    static (_, state) =>
                    {
                        var run = (Run)state!;
                        Volatile.Write(ref run._drainExpired, true);
                        run.Ring();
                    },
                    this,
                    CancellationToken.None,
                    TaskContinuationOptions.ExecuteSynchronously,
                    TaskScheduler.Default);
            }
        }

        /// <summary>
        /// The highest sequence number the read loop handed to the application directly and has yet to record as
        /// delivered; 0 when none (read loop only).
        /// </summary>
        public long InlineDelivered { get; set; }

        /// <summary>Whether a message the read loop handed over directly asked for its ack at once (read loop only).</summary>
        public bool InlineAckNow { get; set; }

        /// <summary>The highest skip frame sent on this connection.</summary>
        public long SkipSent { get; set; }

        /// <summary>The highest inbound sequence number queued for delivery on this connection (read loop only).</summary>
        public long LastQueued
        {
            get => Volatile.Read(ref _lastQueued);
            set => Volatile.Write(ref _lastQueued, value);
        }

        /// <summary>When something last arrived (a <see cref="HeartbeatSettings.GetRunningTimestamp"/>).</summary>
        public long LastReceived => Volatile.Read(ref _lastReceived);

        /// <summary>When something was last sent (a <see cref="TimeProvider"/> timestamp).</summary>
        public long LastSent => Volatile.Read(ref _lastSent);

        /// <summary>Whether reading is paused because the application is behind (not a sign of a dead connection).</summary>
        public bool ReadPaused
        {
            get => Volatile.Read(ref _readPaused);
            set => Volatile.Write(ref _readPaused, value);
        }

        public void MarkReceived(HeartbeatSettings? heartbeat)
        {
            if (heartbeat is not null)
            {
                Volatile.Write(ref _lastReceived, heartbeat.GetRunningTimestamp());
            }
        }

        public void MarkSent(TimeProvider? time)
        {
            if (time is not null)
            {
                Volatile.Write(ref _lastSent, time.GetTimestamp());
            }
        }

        public void Ring() => Doorbell.Set();

        /// <summary>
        /// Marks whether the write loop is holding back an ack to coalesce it: acks that fall due meanwhile need not wake
        /// it, the held one will carry them (see <see cref="RingForAck"/>).
        /// </summary>
        public void SetHoldingAck(bool holding)
        {
            Volatile.Write(ref _holdingAck, holding);

            // Paired with the barrier in RingForAck: the write loop, after this, reads the ack state afresh.
            Interlocked.MemoryBarrier();
        }

        /// <summary>
        /// Wakes the write loop for an ack that fell due, unless it is holding one back that will cover it and the ack
        /// is not <paramref name="urgent"/> (the sender waits for it: the hold must end).
        /// </summary>
        public void RingForAck(bool urgent = false)
        {
            // The ack state was written before this barrier; the flag is read after it. Either the write loop's hold
            // had not ended yet (it will send what was written), or this sees the flag clear and rings.
            Interlocked.MemoryBarrier();
            if (urgent || !Volatile.Read(ref _holdingAck))
            {
                Ring();
            }
        }

        public bool CheckHeartbeat(HeartbeatSettings settings) => _engine.CheckHeartbeat(this, settings);

        public void EnqueueControl(Control control)
        {
            // Locked on the doorbell, an object of the run's own. A pong and a ping are flags (one pong answers every
            // ping that arrived since the last batch, and one ping is enough): the queue, made on first use, holds
            // only errors, which are informational and capped.
            lock (Doorbell)
            {
                if (control.IsPong)
                {
                    if (_pongQueued)
                    {
                        return;
                    }

                    _pongQueued = true;
                }
                else if (control.IsPing)
                {
                    if (_pingQueued)
                    {
                        return;
                    }

                    _pingQueued = true;
                }
                else if (_control is { Count: >= 16 })
                {
                    return;
                }
                else
                {
                    (_control ??= new Queue<Control>()).Enqueue(control);
                }
            }

            Ring();
        }

        /// <summary>Whether control frames wait to be sent.</summary>
        public bool HasControl
        {
            get
            {
                lock (Doorbell)
                {
                    return _pongQueued || _pingQueued || _control is { Count: > 0 };
                }
            }
        }

        public bool TryDequeueControl(out Control control)
        {
            lock (Doorbell)
            {
                if (_pongQueued)
                {
                    _pongQueued = false;
                    control = Control.Pong;
                    return true;
                }

                if (_pingQueued)
                {
                    _pingQueued = false;
                    control = Control.Ping;
                    return true;
                }

                if (_control is { Count: > 0 } queue)
                {
                    return queue.TryDequeue(out control);
                }

                control = default;
                return false;
            }
        }

        public void RequestClose(PushCloseCode code, string? reason, int? retryAfterMs, bool sendFrame)
        {
            if (Interlocked.CompareExchange(ref _localClose, new CloseRequest(code, reason, retryAfterMs, sendFrame), null) is null)
            {
                Ring();
            }
        }

        /// <summary>Why the write loop failed, once it has: the connection's end names it, not the read side's cancellation.</summary>
        public Exception? WriteFailure => Volatile.Read(ref _writeFailure);

        /// <summary>The write loop failed (the connection is gone, or a request of it could not be made): stops the run.</summary>
        public void FailWrites(Exception failure)
        {
            Interlocked.CompareExchange(ref _writeFailure, failure, null);
            Cancel();
        }

        public void Cancel()
        {
            try
            {
                _cts.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }

        public void CancelAfter(TimeSpan delay)
        {
            try
            {
                _cts.CancelAfter(delay);
            }
            catch (ObjectDisposedException)
            {
            }
        }

        /// <summary>
        /// Rings the doorbell once <paramref name="delay"/> has passed: the end of an ack hold. One timer per connection,
        /// made on the first hold and re-armed for each, so a hold allocates nothing.
        /// </summary>
        public void StartAckTimer(TimeProvider time, TimeSpan delay)
        {
            _ackTimer ??= time.CreateTimer(static state => ((Run)state!).AckTimerTick(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            Volatile.Write(ref _ackTimerFired, false);
            _ackTimer.Change(delay, Timeout.InfiniteTimeSpan);
        }

        /// <summary>Whether the hold's timer has fired (the timer decides, not a clock reading that could disagree with it).</summary>
        public bool AckTimerFired => Volatile.Read(ref _ackTimerFired);

        private void AckTimerTick()
        {
            Volatile.Write(ref _ackTimerFired, true);
            Ring();
        }

        /// <summary>Disarms the hold's timer (a tick already under way only rings the doorbell once more, which is harmless).</summary>
        public void StopAckTimer() => _ackTimer?.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);

        public void Dispose()
        {
            _cts.Dispose();
            _inbound?.Stop.Dispose();
            _ackTimer?.Dispose();
        }
    }

    /// <summary>A frame waiting for the delivery loop, with its length on the wire.</summary>
    private readonly record struct Queued(Frame Frame, int Bytes);

    /// <summary>
    /// A connection's inbound messages waiting for the application, created with its first message: the queue, the
    /// delivery loop's cancellation, the bytes queued, and the signal that wakes a paused read loop.
    /// </summary>
    private sealed class Inbound
    {
        private readonly Channel<Queued> _queue;
        private long _bytes;

        public Inbound(int capacity, CancellationToken outerToken, CancellationToken runToken)
        {
            _queue = Channel.CreateBounded<Queued>(new BoundedChannelOptions(capacity) { SingleReader = true, SingleWriter = true });
            Stop = CancellationTokenSource.CreateLinkedTokenSource(outerToken);

            // A paused read loop's wait ends when the run is cancelled.
            runToken.UnsafeRegister(static (state, token) => ((AsyncSignal)state!).Cancel(token), Room);
        }

        public CancellationTokenSource Stop { get; }

        /// <summary>Set when the read loop may be able to read on: something was taken off the queue, or an ack is awaited.</summary>
        public AsyncSignal Room { get; } = new();

        public ChannelReader<Queued> Reader => _queue.Reader;

        public ChannelWriter<Queued> Writer => _queue.Writer;

        /// <summary>The number of frames queued.</summary>
        public int Count => _queue.Reader.Count;

        /// <summary>The wire length of the frames queued.</summary>
        public long Bytes => Volatile.Read(ref _bytes);

        /// <summary>Whether the read loop has logged that it stopped at the bound while an ack was awaited (read loop only).</summary>
        public bool WarnedAtBound { get; set; }

        public void Added(int bytes) => Interlocked.Add(ref _bytes, bytes);

        public void Taken(int bytes) => Interlocked.Add(ref _bytes, -bytes);
    }
}
