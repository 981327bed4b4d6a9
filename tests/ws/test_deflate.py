"""permessage-deflate (RFC 7692) against the real binary: negotiation with
Python `websockets` (which offers it by default), echo of small and large
messages (with `[websocket] compression = true`; off by default), and the compression-bomb
regression: a small frame that inflates far past `max_message` is closed
with 1009 while the server's resident memory stays bounded (it inflates
into the limit, never the whole message)."""
import os
import struct
import zlib

import pytest

from websockets.sync.client import connect

import rawws

BOMB_CONFIG = """
[websocket]
compression = true
max_frame = 2097152
max_message = 2097152
max_outbound = 2097152
"""

ON_CONFIG = """
[websocket]
compression = true
max_frame = 65536
max_message = 262144
max_outbound = 65536
"""

OFF_CONFIG = """
[websocket]
compression = false
"""


def handshake(host, port, extensions=None, path="/echo"):
    """A raw upgrade offering `extensions`; returns (socket, response head)."""
    ext = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    return rawws.upgrade(host, port, path, headers=ext, timeout=30)


def deflate(payload):
    """A message body as a permessage-deflate client sends it."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = z.compress(payload) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(body):
    return zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")


def read_frame_bits(s):
    """(first header byte, payload) of the next server frame."""
    def exact(n):
        buf = b""
        while len(buf) < n:
            c = s.recv(n - len(buf))
            assert c, "EOF"
            buf += c
        return buf

    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(8))[0]
    return b0, exact(n) if n else b""


def memory_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                fields[k] = int(v.split()[0])
    return fields


def test_websockets_negotiates_and_echoes_small_and_large(make_sigma):
    sigma = make_sigma(ON_CONFIG)
    with connect(sigma.url(), max_size=None) as ws:
        ext = ws.response.headers["Sec-WebSocket-Extensions"]
        assert ext.startswith("permessage-deflate"), ext
        assert "server_no_context_takeover" in ext and "client_no_context_takeover" in ext
        ws.send("hi")
        assert ws.recv() == "hi"
        text = "σ sigma compresses this sentence. " * 6000  # ~200 KiB
        ws.send(text)
        assert ws.recv() == text
        # Incompressible, in fragments of max_frame (64 KiB): compressed,
        # each grows a little, which max_frame allows for.
        noise = os.urandom(4 * 65536)
        ws.send(iter([noise[i:i + 65536] for i in range(0, len(noise), 65536)]))
        assert ws.recv() == noise
        ws.send(iter([text[:50_000], text[50_000:]]))
        assert ws.recv() == text
        for i in range(50):
            ws.send(f"message {i} " * (i + 1))
        assert [ws.recv() for _ in range(50)] == [f"message {i} " * (i + 1) for i in range(50)]


def test_server_compresses_its_messages(make_sigma):
    sigma = make_sigma(ON_CONFIG)
    s, head = handshake(sigma.host, sigma.port, "permessage-deflate; client_max_window_bits")
    assert "sec-websocket-extensions: permessage-deflate; server_no_context_takeover" in head
    long = b"abcabcabc " * 500
    s.sendall(rawws.frame(0x2, deflate(long), rsv=4))
    b0, body = read_frame_bits(s)
    assert b0 == 0xC2 and len(body) < len(long) // 10
    assert inflate(body) == long
    s.sendall(rawws.frame(0x1, b"tiny"))
    b0, body = read_frame_bits(s)
    assert b0 == 0xC1 and inflate(body) == b"tiny"  # every message, tiny too
    # RSV1 on a control frame is a protocol error.
    s.sendall(rawws.frame(0x9, b"", rsv=4))
    assert rawws.read_until_close(s) == 1002
    s.close()


def test_compression_bomb_closes_1009_with_bounded_memory(make_sigma):
    sigma = make_sigma(BOMB_CONFIG)
    pid = sigma.proc.pid
    # ~1 GiB of zeros compressed into ~1 MiB, one frame under max_frame.
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    body = b"".join(z.compress(zeros) for _ in range(1024)) + z.flush(zlib.Z_SYNC_FLUSH)
    body = body[:-4]
    assert len(body) < 2 * 1024 * 1024
    s, head = handshake(sigma.host, sigma.port, "permessage-deflate")
    assert "permessage-deflate" in head
    before = memory_kib(pid)
    s.sendall(rawws.frame(0x2, body, rsv=4))
    assert rawws.read_until_close(s) == 1009
    after = memory_kib(pid)
    s.close()
    growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    print(f"bomb: RSS before {before['VmRSS']} KiB, after {after['VmRSS']} KiB, "
          f"peak {after['VmHWM']} KiB (growth {growth_mib:.1f} MiB for a 1 GiB bomb)")
    assert growth_mib < 64, (before, after)
    # The server is still there and still inflates.
    s, _ = handshake(sigma.host, sigma.port, "permessage-deflate")
    s.sendall(rawws.frame(0x1, deflate(b"still here " * 20), rsv=4))
    b0, body = read_frame_bits(s)
    assert b0 == 0xC1 and inflate(body) == b"still here " * 20
    s.close()


@pytest.mark.parametrize("config", [OFF_CONFIG, None], ids=["off", "default"])
def test_compression_off_negotiates_nothing(make_sigma, config):
    sigma = make_sigma(config) if config else make_sigma()
    with connect(sigma.url()) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("hello " * 100)
        assert ws.recv() == "hello " * 100
    s, head = handshake(sigma.host, sigma.port, "permessage-deflate")
    assert "sec-websocket-extensions" not in head
    s.sendall(rawws.frame(0x1, deflate(b"hello"), rsv=4))
    assert rawws.read_until_close(s) == 1002
    s.close()


def test_malformed_offers_are_declined(make_sigma):
    sigma = make_sigma(ON_CONFIG)
    for offer in [
        "permessage-deflate; server_max_window_bits=99",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; x=\"unterminated",
        "permessage-deflate; unknown_parameter",
    ]:
        s, head = handshake(sigma.host, sigma.port, offer)
        assert "sec-websocket-extensions" not in head, offer
        s.sendall(rawws.frame(0x1, b"plain"))
        assert read_frame_bits(s) == (0x81, b"plain")
        s.close()
    # A bad offer does not hide a good one after it.
    s, head = handshake(sigma.host, sigma.port,
                        "permessage-deflate; server_max_window_bits=7, permessage-deflate; server_max_window_bits=10")
    assert "server_max_window_bits=10" in head
    s.close()
