"""A minimal raw WebSocket client for the cases a well-behaved library
refuses to produce (unmasked frames, invalid UTF-8, never reading)."""
import base64
import os
import socket
import struct


def upgrade(host, port, path="/echo", headers="", rcvbuf=None, timeout=10):
    """A raw upgrade with extra `headers` (CRLF-terminated lines); returns
    (socket, the 101 response head in lower case)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{headers}"
         "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "closed during handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s, head.decode("latin-1").lower()


def connect(host, port, path="/echo", rcvbuf=None, timeout=10):
    return upgrade(host, port, path, rcvbuf=rcvbuf, timeout=timeout)[0]


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def read_frame(s):
    """Returns (opcode, payload) or None at EOF."""
    def exact(n):
        buf = b""
        while len(buf) < n:
            c = s.recv(n - len(buf))
            if not c:
                return None
            buf += c
        return buf

    h = exact(2)
    if h is None:
        return None
    opcode = h[0] & 0x0F
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(8))[0]
    payload = exact(n) if n else b""
    return opcode, payload


def read_until_close(s):
    """Reads frames until a close frame; returns its code (or None at EOF)."""
    while True:
        f = read_frame(s)
        if f is None:
            return None
        opcode, payload = f
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def close_code_payload(code, reason=b""):
    return struct.pack("!H", code) + reason
