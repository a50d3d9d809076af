using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace PushKit.Tests.Api;

/// <summary>The send shortcuts take a cancellation token by position, as every other async .NET API does.</summary>
public class PushChannelExtensionsTests
{
    [Fact]
    public async Task A_token_passed_by_position_reaches_the_send()
    {
        using var cts = new CancellationTokenSource();
        var channel = new RecordingChannel();

        await channel.SendStringAsync("hi", cts.Token);
        await channel.SendJsonAsync(new Note("json"), cts.Token);
        await channel.SendJsonAsync(new Note("typed"), (JsonTypeInfo<Note>)JsonSerializerOptions.Web.GetTypeInfo(typeof(Note)), cts.Token);

        Assert.All(channel.Sends, send => Assert.Equal(cts.Token, send.Token));
        Assert.All(channel.Sends, send => Assert.Null(send.Message.Topic));
        Assert.Equal("hi", channel.Sends[0].Message.GetString());
        Assert.Equal(new Note("json"), channel.Sends[1].Message.GetJson<Note>());
        Assert.Equal(new Note("typed"), channel.Sends[2].Message.GetJson<Note>());
    }

    [Fact]
    public async Task The_topic_overloads_still_take_a_topic()
    {
        var channel = new RecordingChannel();
        await channel.SendStringAsync("hi", "news");
        await channel.SendJsonAsync(new Note("json"), topic: "news");
        Assert.All(channel.Sends, send => Assert.Equal("news", send.Message.Topic));
    }

    public sealed record Note(string Text);

    private sealed class RecordingChannel : IPushChannel
    {
        public List<(PushMessage Message, CancellationToken Token)> Sends { get; } = [];

        public string? SessionId => null;

        public string? Transport => null;

        public PushChannelState State => PushChannelState.Connected;

        public event EventHandler<PushChannelStateChangedEventArgs>? StateChanged { add { } remove { } }

        public event EventHandler<PushMessagesDroppedEventArgs>? MessagesDropped { add { } remove { } }

        public Task ConnectAsync(CancellationToken cancellationToken = default) => Task.CompletedTask;

        public ValueTask SendAsync(PushMessage message, CancellationToken cancellationToken = default)
        {
            Sends.Add((message, cancellationToken));
            return default;
        }

        public IAsyncEnumerable<PushMessage> ReadAllAsync(CancellationToken cancellationToken = default) => AsyncEnumerable.Empty<PushMessage>();

        public Task CloseAsync(CancellationToken cancellationToken = default) => Task.CompletedTask;

        public ValueTask DisposeAsync() => default;
    }
}
