using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.WebUtilities;
using PushKit.Protocol;

namespace PushKit.Server.Endpoints;

/// <summary>What <see cref="DirectHandshake.Parse"/> made of the first bytes of a connection.</summary>
internal enum DirectHandshakeVerdict
{
    /// <summary>So far the bytes are the start of a PushKit WebSocket handshake: read more.</summary>
    NeedMore,

    /// <summary>Anything else (another request, a malformed or unusual one): the HTTP server takes the connection.</summary>
    NotOurs,

    /// <summary>A complete, well-formed WebSocket handshake for the PushKit path, carrying a session id and secret.</summary>
    Ours,
}

/// <summary>
/// Reads the WebSocket handshake (RFC 6455 §4.2.1) of a connection's first request, for the direct WebSocket listener
/// (<see cref="DirectWebSocketMiddleware"/>). Deliberately narrow: it takes only a plain, complete
/// <c>GET {path}/ws?… HTTP/1.1</c> upgrade with every header a WebSocket handshake needs, once each. Everything else
/// (including every request the HTTP endpoint would refuse) is <see cref="DirectHandshakeVerdict.NotOurs"/>, so that
/// it reaches the ordinary HTTP endpoint and gets its documented answer there.
/// </summary>
internal static class DirectHandshake
{
    /// <summary>The largest request head taken: a bigger one goes to the HTTP server (which applies its own limits).</summary>
    public const int MaxHeadBytes = 8192;

    private static readonly byte[] SecretHeaderName = Encoding.ASCII.GetBytes(PushProtocol.SecretHeader);

    private static ReadOnlySpan<byte> Get => "GET "u8;

    private static ReadOnlySpan<byte> Version11 => " HTTP/1.1"u8;

    private static ReadOnlySpan<byte> EndOfHead => "\r\n\r\n"u8;

    /// <summary>Reads <paramref name="data"/>, the first bytes of a connection.</summary>
    /// <param name="data">The bytes received so far.</param>
    /// <param name="path">The WebSocket path, for example <c>/push/ws</c> (ASCII; compared ignoring case).</param>
    /// <param name="request">When <see cref="DirectHandshakeVerdict.Ours"/>: the handshake.</param>
    /// <returns>The verdict.</returns>
    public static DirectHandshakeVerdict Parse(ReadOnlySpan<byte> data, string path, out DirectHandshakeRequest request)
    {
        request = default;

        // The request line must start with "GET {path}" followed by '?' or ' '; decide as early as possible, so that
        // every other connection goes to the HTTP server after its first read.
        var available = Math.Min(data.Length, Get.Length + path.Length + 1);
        for (var i = 0; i < available; i++)
        {
            var b = data[i];
            if (i < Get.Length)
            {
                if (b != Get[i])
                {
                    return DirectHandshakeVerdict.NotOurs;
                }
            }
            else if (i < Get.Length + path.Length)
            {
                if (ToLower(b) != ToLower((byte)path[i - Get.Length]))
                {
                    return DirectHandshakeVerdict.NotOurs;
                }
            }
            else if (b is not ((byte)'?' or (byte)' '))
            {
                return DirectHandshakeVerdict.NotOurs;
            }
        }

        var headEnd = data.IndexOf(EndOfHead);
        if (headEnd < 0)
        {
            return data.Length >= MaxHeadBytes ? DirectHandshakeVerdict.NotOurs : DirectHandshakeVerdict.NeedMore;
        }

        if (headEnd + EndOfHead.Length > MaxHeadBytes)
        {
            return DirectHandshakeVerdict.NotOurs;
        }

        var head = data[..(headEnd + 2)];
        var lineEnd = head.IndexOf("\r\n"u8);
        var requestLine = head[..lineEnd];
        if (!requestLine.EndsWith(Version11))
        {
            return DirectHandshakeVerdict.NotOurs;
        }

        var target = requestLine[Get.Length..^Version11.Length];
        if (target.IndexOfAny((byte)' ', (byte)'#') >= 0 || !IsVisibleAscii(target))
        {
            return DirectHandshakeVerdict.NotOurs;
        }

        ReadOnlySpan<byte> host = default, upgrade = default, connection = default, version = default, key = default, secretHeader = default;
        int hosts = 0, upgrades = 0, connections = 0, versions = 0, keys = 0, secrets = 0;
        var rest = head[(lineEnd + 2)..];
        while (!rest.IsEmpty)
        {
            var end = rest.IndexOf("\r\n"u8);
            var line = rest[..end];
            rest = rest[(end + 2)..];
            var colon = line.IndexOf((byte)':');
            if (colon <= 0 || !IsToken(line[..colon]))
            {
                // No name, a space before the colon, or an obsolete folded line: not for this narrow reader.
                return DirectHandshakeVerdict.NotOurs;
            }

            var name = line[..colon];
            var value = Trim(line[(colon + 1)..]);
            if (!IsFieldValue(value))
            {
                return DirectHandshakeVerdict.NotOurs;
            }

            if (Ascii.EqualsIgnoreCase(name, "Host"u8))
            {
                host = value;
                hosts++;
            }
            else if (Ascii.EqualsIgnoreCase(name, "Upgrade"u8))
            {
                upgrade = value;
                upgrades++;
            }
            else if (Ascii.EqualsIgnoreCase(name, "Connection"u8))
            {
                connection = value;
                connections++;
            }
            else if (Ascii.EqualsIgnoreCase(name, "Sec-WebSocket-Version"u8))
            {
                version = value;
                versions++;
            }
            else if (Ascii.EqualsIgnoreCase(name, "Sec-WebSocket-Key"u8))
            {
                key = value;
                keys++;
            }
            else if (Ascii.EqualsIgnoreCase(name, SecretHeaderName))
            {
                secretHeader = value;
                secrets++;
            }
            else if (Ascii.EqualsIgnoreCase(name, "Content-Length"u8) || Ascii.EqualsIgnoreCase(name, "Transfer-Encoding"u8))
            {
                // A handshake has no body; the HTTP server deals with one that says otherwise.
                return DirectHandshakeVerdict.NotOurs;
            }
        }

        if (hosts != 1 || upgrades != 1 || connections != 1 || versions != 1 || keys != 1 || secrets > 1
            || host.IsEmpty
            || !Ascii.EqualsIgnoreCase(upgrade, "websocket"u8)
            || !HasToken(connection, "upgrade"u8)
            || !version.SequenceEqual("13"u8)
            || !IsKey(key))
        {
            return DirectHandshakeVerdict.NotOurs;
        }

        string? sessionId = null, secret = null;
        var question = target.IndexOf((byte)'?');
        if (question >= 0)
        {
            foreach (var pair in new QueryStringEnumerable(Encoding.ASCII.GetString(target[(question + 1)..])))
            {
                if (sessionId is null && pair.EncodedName.Span.SequenceEqual(PushProtocol.Query.SessionId))
                {
                    sessionId = pair.DecodeValue().ToString();
                }
                else if (secret is null && pair.EncodedName.Span.SequenceEqual(PushProtocol.Query.Secret))
                {
                    secret = pair.DecodeValue().ToString();
                }
            }
        }

        if (!secretHeader.IsEmpty)
        {
            secret = Encoding.ASCII.GetString(secretHeader);
        }

        if (string.IsNullOrEmpty(sessionId) || string.IsNullOrEmpty(secret))
        {
            return DirectHandshakeVerdict.NotOurs;
        }

        request = new DirectHandshakeRequest(sessionId, secret, AcceptKey(key), headEnd + EndOfHead.Length);
        return DirectHandshakeVerdict.Ours;
    }

    /// <summary>The <c>Sec-WebSocket-Accept</c> value for a key (RFC 6455 §4.2.2).</summary>
    public static string AcceptKey(ReadOnlySpan<byte> key)
    {
        Span<byte> input = stackalloc byte[64];
        key.CopyTo(input);
        var length = key.Length + Encoding.ASCII.GetBytes("258EAFA5-E914-47DA-95CA-C5AB0DC85B11", input[key.Length..]);
        Span<byte> hash = stackalloc byte[SHA1.HashSizeInBytes];
#pragma warning disable CA5350 // SHA-1 is what RFC 6455 prescribes for the accept key; it protects nothing here.
        SHA1.HashData(input[..length], hash);
#pragma warning restore CA5350
        return Convert.ToBase64String(hash);
    }

    private static bool IsKey(ReadOnlySpan<byte> key)
    {
        // Base64 of 16 bytes: 24 characters ending in "==".
        Span<byte> decoded = stackalloc byte[18];
        return key.Length == 24
            && System.Buffers.Text.Base64.DecodeFromUtf8(key, decoded, out _, out var written) == System.Buffers.OperationStatus.Done
            && written == 16;
    }

    private static bool HasToken(ReadOnlySpan<byte> list, ReadOnlySpan<byte> token)
    {
        while (true)
        {
            var comma = list.IndexOf((byte)',');
            if (Ascii.EqualsIgnoreCase(Trim(comma < 0 ? list : list[..comma]), token))
            {
                return true;
            }

            if (comma < 0)
            {
                return false;
            }

            list = list[(comma + 1)..];
        }
    }

    private static ReadOnlySpan<byte> Trim(ReadOnlySpan<byte> value) => value.Trim(" \t"u8);

    private static byte ToLower(byte b) => b is >= (byte)'A' and <= (byte)'Z' ? (byte)(b | 0x20) : b;

    private static bool IsVisibleAscii(ReadOnlySpan<byte> value) => !value.IsEmpty && !value.ContainsAnyExceptInRange((byte)0x21, (byte)0x7E);

    private static bool IsFieldValue(ReadOnlySpan<byte> value) => !value.ContainsAnyExceptInRange((byte)0x20, (byte)0x7E) || value.IsEmpty;

    private static bool IsToken(ReadOnlySpan<byte> name) => IsVisibleAscii(name) && name.IndexOfAny("\"(),/:;<=>?@[\\]{}"u8) < 0;
}

/// <summary>A WebSocket handshake taken by the direct listener.</summary>
/// <param name="SessionId">The session id from the query.</param>
/// <param name="Secret">The resume secret (header, else query).</param>
/// <param name="AcceptKey">The <c>Sec-WebSocket-Accept</c> value to answer with.</param>
/// <param name="HeadLength">The bytes of the request head, to consume.</param>
internal readonly record struct DirectHandshakeRequest(string SessionId, string Secret, string AcceptKey, int HeadLength);
