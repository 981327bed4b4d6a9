"""WebSocket behaviour of sigma's H, driven by real clients (DESIGN §3).

Each test talks to a real sigma process over loopback: the `websockets`
library for well-formed traffic, `rawws` for what a library won't send.
"""
import os
import signal
import socket

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import rawws


def test_echo_text_and_binary(sigma):
    with connect(sigma.url()) as ws:
        ws.send("hello, σ")
        assert ws.recv() == "hello, σ"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv() == b"\x00\x01\xfe\xff"
        for i in range(50):
            ws.send(f"m{i}")
        assert [ws.recv() for _ in range(50)] == [f"m{i}" for i in range(50)]


def test_large_fragmented_message_near_the_limit(sigma):
    # max_message = 256 KiB, max_frame = 64 KiB: 4 fragments of 64 KiB - 16.
    fragment = os.urandom(65536 - 16)
    with connect(sigma.url(), max_size=None) as ws:
        ws.send(iter([fragment] * 4))
        assert ws.recv() == fragment * 4


def test_message_over_the_limit_closes_1009(sigma):
    with connect(sigma.url(), max_size=None) as ws:
        ws.send(iter([b"x" * 60000] * 5))  # 300 000 > 262 144
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009


def test_frame_over_the_limit_closes_1009(sigma):
    # Uncompressed: compressed, these 70 000 bytes would be a small frame.
    with connect(sigma.url(), max_size=None, compression=None) as ws:
        ws.send(b"x" * 70000)  # one frame > 64 KiB
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009


def test_unmasked_client_frame_closes_1002(sigma):
    s = rawws.connect(sigma.host, sigma.port)
    s.sendall(rawws.frame(0x1, b"hi", mask=False))
    assert rawws.read_until_close(s) == 1002
    s.close()


def test_invalid_utf8_closes_1007(sigma):
    s = rawws.connect(sigma.host, sigma.port)
    s.sendall(rawws.frame(0x1, b"ok \xff\xfe"))
    assert rawws.read_until_close(s) == 1007
    s.close()


def test_invalid_utf8_across_fragments_closes_1007(sigma):
    s = rawws.connect(sigma.host, sigma.port)
    # "é" is C3 A9; split it, then break it.
    s.sendall(rawws.frame(0x1, b"caf\xc3", fin=False))
    s.sendall(rawws.frame(0x0, b"\x28", fin=True))
    assert rawws.read_until_close(s) == 1007
    s.close()


def test_slow_consumer_closes_1008(sigma):
    # The client never reads while it sends: sigma's outbound queue for it
    # passes max_outbound (64 KiB) and it is closed with 1008.
    s = rawws.connect(sigma.host, sigma.port, rcvbuf=4096)
    msg = rawws.frame(0x2, b"y" * 1024)
    try:
        for _ in range(4000):
            s.sendall(msg)
    except OSError:
        pass  # sigma may stop reading once it has decided to close
    assert rawws.read_until_close(s) == 1008
    s.close()


def test_idle_timeout_closes_1001(make_sigma):
    sigma = make_sigma("""
[websocket]
ping_interval = "200ms"
idle_timeout = "1s"
close_timeout = "1s"
""")
    s = rawws.connect(sigma.host, sigma.port)
    # Never answer pings: sigma gives up after idle_timeout.
    pings = 0
    while True:
        f = rawws.read_frame(s)
        assert f is not None, "closed without a close frame"
        opcode, payload = f
        if opcode == 0x9:
            pings += 1
            continue
        assert opcode == 0x8
        assert int.from_bytes(payload[:2], "big") == 1001
        break
    assert pings >= 1
    s.close()


def test_pings_keep_a_quiet_connection_alive(make_sigma):
    sigma = make_sigma("""
[websocket]
ping_interval = "100ms"
idle_timeout = "500ms"
""")
    with connect(sigma.url(), ping_interval=None) as ws:
        # The library answers sigma's pings; after 5 idle timeouts the
        # connection still echoes.
        for i in range(5):
            with pytest.raises(TimeoutError):
                ws.recv(timeout=0.5)
            ws.send(f"still here {i}")
            assert ws.recv(timeout=5) == f"still here {i}"


def test_close_from_the_client(sigma):
    with connect(sigma.url()) as ws:
        ws.send("bye")
        assert ws.recv() == "bye"
        ws.close(1000, "done")
        # sigma answered with the same code: a clean close handshake.
        assert ws.close_code == 1000
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
        assert e.value.rcvd is not None and e.value.rcvd.code == 1000


def test_echo_of_a_max_size_message_with_default_limits(make_sigma):
    # The default outbound queue (4 MiB) must not refuse the echo of a
    # default-maximum message (4 MiB).
    sigma = make_sigma("")
    big = os.urandom(4 * 1024 * 1024)
    with connect(sigma.url(), max_size=None) as ws:
        ws.send(iter([big[i:i + 1024 * 1024] for i in range(0, len(big), 1024 * 1024)]))
        assert ws.recv() == big


def test_close_from_the_server_on_drain_sends_1001(sigma):
    with connect(sigma.url()) as ws:
        ws.send("x")
        assert ws.recv() == "x"
        sigma.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1001
    assert sigma.wait() == 0


def test_bad_handshake_gets_400_and_no_upgrade(sigma):
    s = socket.create_connection((sigma.host, sigma.port), timeout=10)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n")
    data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")
    s.close()


def test_wrong_version_gets_426(sigma):
    s = socket.create_connection((sigma.host, sigma.port), timeout=10)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
    data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 426")
    assert b"Sec-WebSocket-Version: 13" in data
    s.close()
