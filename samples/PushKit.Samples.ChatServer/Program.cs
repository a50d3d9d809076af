// The PushKit chat server: every JSON chat line a client sends is broadcast to every connected client.
//
//   dotnet run --project samples/PushKit.Samples.ChatServer                                # http://localhost:5000
//   dotnet run --project samples/PushKit.Samples.ChatServer -- --urls http://127.0.0.1:5077 # anywhere else
using PushKit.Samples.ChatServer;

var builder = WebApplication.CreateBuilder(args);

// PushKit's services, with the handler that receives what clients send (ChatHandler.cs).
builder.Services.AddPushKit().AddHandler<ChatHandler>();

var app = builder.Build();

// The endpoints clients connect to: POST /push/negotiate, then GET /push/ws (WebSocket), GET /push/sse
// (Server-Sent Events) or GET /push/poll (long-polling), with POST /push/send upstream for the last two.
app.MapPushKit("/push");

// Once Kestrel listens, say how to connect a client to the address it actually bound.
const string DefaultClientUrl = "http://localhost:5000/push"; // what the client uses when given no URL
app.Lifetime.ApplicationStarted.Register(() =>
{
    foreach (var address in app.Urls)
    {
        var pushUrl = address.TrimEnd('/') + "/push";
        var urlArgument = pushUrl == DefaultClientUrl ? "" : " " + pushUrl;
        Console.WriteLine($"Chat server ready at {pushUrl}. In another terminal, start a client:");
        Console.WriteLine($"  dotnet run --project samples/PushKit.Samples.ChatClient -- alice{urlArgument}");
    }
});

app.Run();
