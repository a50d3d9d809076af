using System.Text;
using PushKit.Server.Endpoints;

namespace PushKit.Tests.Server;

/// <summary>
/// The direct WebSocket listener's reader of a connection's first request: it takes only a complete, well-formed
/// PushKit handshake and leaves everything else, byte for byte, to the HTTP server.
/// </summary>
public class DirectHandshakeTests
{
    private const string Path = "/push/ws";

    private const string Valid =
        "GET /push/ws?session=abc&secret=s%2Bt HTTP/1.1\r\n" +
        "Host: example.com\r\n" +
        "Upgrade: websocket\r\n" +
        "Connection: keep-alive, Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        "Sec-WebSocket-Version: 13\r\n" +
        "Origin: http://example.com\r\n" +
        "\r\n";

    private static DirectHandshakeVerdict Parse(string text, out DirectHandshakeRequest request) =>
        DirectHandshake.Parse(Encoding.Latin1.GetBytes(text), Path, out request);

    [Fact]
    public void A_complete_handshake_is_taken_with_its_session_secret_and_rfc6455_accept_key()
    {
        Assert.Equal(DirectHandshakeVerdict.Ours, Parse(Valid, out var request));
        Assert.Equal("abc", request.SessionId);
        Assert.Equal("s+t", request.Secret);

        // RFC 6455 §1.3's worked example.
        Assert.Equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", request.AcceptKey);
        Assert.Equal(Valid.Length, request.HeadLength);
    }

    [Fact]
    public void Bytes_after_the_head_are_not_part_of_it()
    {
        Assert.Equal(DirectHandshakeVerdict.Ours, Parse(Valid + "\x81\x05hello", out var request));
        Assert.Equal(Valid.Length, request.HeadLength);
    }

    [Fact]
    public void The_secret_header_wins_over_the_query_and_names_and_path_ignore_case()
    {
        var text = Valid.Replace("GET /push/ws", "GET /PUSH/WS", StringComparison.Ordinal)
            .Replace("Upgrade: websocket", "UPGRADE: WebSocket", StringComparison.Ordinal)
            .Replace("\r\n\r\n", "\r\npushkit-secret: from-header\r\n\r\n", StringComparison.Ordinal);
        Assert.Equal(DirectHandshakeVerdict.Ours, Parse(text, out var request));
        Assert.Equal("from-header", request.Secret);
    }

    [Fact]
    public void Every_prefix_of_a_handshake_asks_for_more_and_the_whole_is_taken()
    {
        for (var length = 0; length < Valid.Length; length++)
        {
            Assert.Equal(DirectHandshakeVerdict.NeedMore, Parse(Valid[..length], out _));
        }

        Assert.Equal(DirectHandshakeVerdict.Ours, Parse(Valid, out _));
    }

    [Theory]
    [InlineData("POST /push/negotiate HTTP/1.1\r\n")]
    [InlineData("GET /push/sse?session=abc HTTP/1.1\r\n")]
    [InlineData("GET /push/wsx HTTP/1.1\r\n")]
    [InlineData("GET /hello HTTP/1.1\r\n")]
    [InlineData("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")]
    [InlineData("\x16\x03\x01\x02\x00\x01")]
    [InlineData("G")]
    public void Another_request_is_left_to_the_http_server_as_soon_as_its_first_line_tells(string start)
    {
        // "G" alone could still be a handshake: the only prefix that asks for more.
        var expected = start == "G" ? DirectHandshakeVerdict.NeedMore : DirectHandshakeVerdict.NotOurs;
        Assert.Equal(expected, Parse(start, out _));
    }

    public static TheoryData<string, string> Unusual => new()
    {
        { "HTTP/1.0", Valid.Replace("HTTP/1.1", "HTTP/1.0", StringComparison.Ordinal) },
        { "no Host", Valid.Replace("Host: example.com\r\n", "", StringComparison.Ordinal) },
        { "two Hosts", Valid.Replace("Host: example.com\r\n", "Host: a\r\nHost: b\r\n", StringComparison.Ordinal) },
        { "no Upgrade", Valid.Replace("Upgrade: websocket\r\n", "", StringComparison.Ordinal) },
        { "Upgrade h2c", Valid.Replace("Upgrade: websocket", "Upgrade: h2c", StringComparison.Ordinal) },
        { "Connection without upgrade", Valid.Replace("keep-alive, Upgrade", "keep-alive", StringComparison.Ordinal) },
        { "version 8", Valid.Replace("Version: 13", "Version: 8", StringComparison.Ordinal) },
        { "short key", Valid.Replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==", StringComparison.Ordinal) },
        { "key not base64", Valid.Replace("dGhlIHNhbXBsZSBub25jZQ==", "!GhlIHNhbXBsZSBub25jZQ==", StringComparison.Ordinal) },
        { "two keys", Valid.Replace("\r\n\r\n", "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", StringComparison.Ordinal) },
        { "a body", Valid.Replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n", StringComparison.Ordinal) },
        { "chunked", Valid.Replace("\r\n\r\n", "\r\nTransfer-Encoding: chunked\r\n\r\n", StringComparison.Ordinal) },
        { "folded header", Valid.Replace("Origin: http://example.com", "Origin: http://example.com\r\n more", StringComparison.Ordinal) },
        { "space before colon", Valid.Replace("Origin: ", "Origin : ", StringComparison.Ordinal) },
        { "no session", Valid.Replace("session=abc&", "", StringComparison.Ordinal) },
        { "no secret", Valid.Replace("&secret=s%2Bt", "", StringComparison.Ordinal) },
        { "empty session", Valid.Replace("session=abc", "session=", StringComparison.Ordinal) },
        { "fragment", Valid.Replace("s%2Bt", "s%2Bt#x", StringComparison.Ordinal) },
        { "control character", Valid.Replace("Origin: http://example.com", "Origin: http://exa\u0001mple.com", StringComparison.Ordinal) },
        { "non-ASCII", Valid.Replace("Origin: http://example.com", "Origin: http://exämple.com", StringComparison.Ordinal) },
        { "bare LF line", Valid.Replace("Host: example.com\r\n", "Host: example.com\nX: y\r\n", StringComparison.Ordinal) },
        { "too big", Valid.Replace("\r\n\r\n", "\r\nX-Pad: " + new string('p', DirectHandshake.MaxHeadBytes) + "\r\n\r\n", StringComparison.Ordinal) },
    };

    [Theory]
    [MemberData(nameof(Unusual))]
    public void An_unusual_or_malformed_handshake_is_left_to_the_http_server(string kind, string text)
    {
        Assert.True(Parse(text, out _) == DirectHandshakeVerdict.NotOurs, kind);
    }

    [Fact]
    public void A_head_that_never_ends_is_left_to_the_http_server_at_the_size_limit()
    {
        var text = Valid[..^2] + "X-Pad: " + new string('p', DirectHandshake.MaxHeadBytes);
        Assert.Equal(DirectHandshakeVerdict.NotOurs, Parse(text, out _));
    }
}
