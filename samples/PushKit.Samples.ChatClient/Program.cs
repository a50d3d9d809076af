// The PushKit chat client: prints what the chat server broadcasts, sends each line typed on stdin.
//
//   dotnet run --project samples/PushKit.Samples.ChatClient -- alice [url]
//
// Ctrl+C or end of input (Ctrl+D, or the end of a pipe) leaves the chat.
using System.Text.Json;
using PushKit;
using PushKit.Client;
using PushKit.Samples.ChatClient;

const string DefaultUrl = "http://localhost:5000/push";

if (args.Length is < 1 or > 2 || string.IsNullOrWhiteSpace(args[0]))
{
    Console.Error.WriteLine("Usage: dotnet run --project samples/PushKit.Samples.ChatClient -- <name> [url]");
    Console.Error.WriteLine($"       url defaults to {DefaultUrl}");
    return 2;
}

var name = args[0];
var url = args.Length > 1 ? args[1] : DefaultUrl;

IPushChannel channel;
try
{
    channel = new PushChannelBuilder().WithUrl(url).Build();
}
catch (ArgumentException ex)
{
    Console.Error.WriteLine(ex.Message);
    return 2;
}

await using (channel)
{
    // Cancelled when we leave: on Ctrl+C, at the end of input, or when the connection ends. The channel is then
    // closed politely, so the server announces "<name> left" at once.
    using var stop = new CancellationTokenSource();
    Console.CancelKeyPress += (_, e) =>
    {
        e.Cancel = true;
        stop.Cancel();
    };

    try
    {
        await channel.ConnectAsync(stop.Token);
    }
    catch (PushConnectException ex)
    {
        Console.Error.WriteLine($"Could not connect to the chat server at {url}:");
        Console.Error.WriteLine($"  {ex.Message}");
        Console.Error.WriteLine("Start the server with: dotnet run --project samples/PushKit.Samples.ChatServer");
        return 1;
    }
    catch (OperationCanceledException)
    {
        return 1;
    }

    Console.WriteLine($"Connected to {url} as {name}. Type a line and press Enter to send it; Ctrl+C to leave.");

    // Print everything the server sends until the channel closes (ours or the server's doing).
    var printing = PrintMessagesAsync(channel, stop);

    try
    {
        // The first message joins the chat under our name; each later one is a line of text.
        await channel.SendJsonAsync(new ChatMessage(name, null), ChatJsonContext.Default.ChatMessage, stop.Token);
        while (await ReadLineAsync(stop.Token) is { } line)
        {
            if (line.Length == 0)
            {
                continue;
            }

            // Completes when the server has acknowledged the line (its handler has run); our echo comes back from
            // the broadcast and is printed by PrintMessagesAsync.
            await channel.SendJsonAsync(new ChatMessage(name, line), ChatJsonContext.Default.ChatMessage, stop.Token);
        }
    }
    catch (OperationCanceledException)
    {
        // Ctrl+C, or the connection ended (PrintMessagesAsync cancels).
    }
    catch (PushAckTimeoutException ex)
    {
        Console.Error.WriteLine($"The server did not acknowledge in time: {ex.Message}");
    }
    catch (PushChannelClosedException ex)
    {
        Console.Error.WriteLine($"The connection is closed: {ex.Message}");
    }

    // Leaving: closing the channel ends the session on the server and completes ReadAllAsync.
    await stop.CancelAsync();
    await channel.CloseAsync();
    await printing;
}

return 0;

static async Task PrintMessagesAsync(IPushChannel channel, CancellationTokenSource stop)
{
    await foreach (var message in channel.ReadAllAsync())
    {
        Console.WriteLine(Format(message));
    }

    // ReadAllAsync ends when the channel closes; if we are not leaving, the server or the network closed it.
    if (!stop.IsCancellationRequested)
    {
        Console.Error.WriteLine($"The connection to the chat server ended ({channel.State}).");
        await stop.CancelAsync();
    }
}

static string Format(PushMessage message)
{
    if (message.ContentType.StartsWith(PushMessage.JsonContentType, StringComparison.OrdinalIgnoreCase))
    {
        try
        {
            if (message.GetJson(ChatJsonContext.Default.ChatMessage) is { } chat)
            {
                return $"[{chat.Name}] {chat.Text}";
            }
        }
        catch (JsonException)
        {
            // Not a chat line: show it raw below.
        }
    }

    return $"[?] {message.GetString()}";
}

// Console.In cannot be cancelled, so each read runs on the thread pool and the wait for it is what gets cancelled.
static async Task<string?> ReadLineAsync(CancellationToken cancellationToken) =>
    await Task.Run(Console.ReadLine, cancellationToken).WaitAsync(cancellationToken);
