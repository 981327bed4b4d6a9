"""Sessions that end take their WebSockets with them (DESIGN §4, issue #13).

With a real client (websockets) and with a raw socket that never reads: a
logout closes the session's sockets with 4401 ("session revoked") within a
second, and a socket that does not read loses its identity at once (its
endpoint is dropped, so nothing published after the logout is queued for
it), even though its close frame waits behind what it has not read.
"""
import json
import re
import struct
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import rawws
from helpers_auth import AuthSigma, raw_ws

USERS = {"alice": "alice-password-1", "bob": "bob-password-2"}

CONFIG = """
[auth]
login_per_ip_per_minute = 1000
login_per_user_per_minute = 1000
"""


@pytest.fixture
def sigma():
    s = AuthSigma(CONFIG, USERS)
    yield s
    s.stop()


def logout(s, cookie):
    status, _, body = s.request("POST", "/logout", headers={"Cookie": cookie, "Origin": s.origin})
    assert status == 204, (status, body)


def publish(s, cookie, channel, data):
    status, _, body = s.request(
        "POST", f"/broadcast/{channel}", body=json.dumps(data),
        headers={"Cookie": cookie, "Origin": s.origin, "Content-Type": "application/json"},
    )
    assert status == 202, (status, body)


def revoked_count(s):
    status, _, body = s.request("GET", "/metrics")
    assert status == 200
    m = re.search(rb'sigma_rejections_total\{reason="ws_session_revoked"\} (\d+)', body)
    return int(m.group(1)) if m else 0


def test_logout_closes_the_socket_with_4401_within_a_second(sigma):
    a, b = sigma.login("alice"), sigma.login("bob")
    headers = lambda c: {"Origin": sigma.origin, "Cookie": c}
    with connect(sigma.url("/broadcast"), additional_headers=headers(a),
                 open_timeout=10, close_timeout=2) as alice, \
         connect(sigma.url("/broadcast"), additional_headers=headers(b),
                 open_timeout=10, close_timeout=2) as bob:
        for c, ch in ((alice, "user:alice:inbox"), (bob, "public:lobby")):
            c.send(json.dumps({"type": "subscribe", "channel": ch}))
            assert json.loads(c.recv(timeout=5))["type"] == "subscribed"
        logout(sigma, a)
        t0 = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            alice.recv(timeout=1)
        assert time.monotonic() - t0 < 1
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "session revoked")
        # Bob's session is not touched.
        publish(sigma, b, "public:lobby", "still here")
        assert json.loads(bob.recv(timeout=5))["data"] == "still here"


def test_a_socket_that_never_reads_loses_its_identity_at_logout(sigma):
    a, a2 = sigma.login("alice"), sigma.login("alice")
    sigma._cookies["alice"] = a
    slow = raw_ws(sigma, "/broadcast", user="alice", rcvbuf=4096)
    channel = "user:alice:feed"
    slow.sendall(rawws.frame(0x1, json.dumps({"type": "subscribe", "channel": channel}).encode()))
    op, body = rawws.read_frame(slow)
    assert (op, json.loads(body)["type"]) == (0x1, "subscribed")
    # A backlog it does not read (from alice's other session).
    before = 40
    for i in range(before):
        publish(sigma, a2, channel, {"i": i, "pad": "x" * 2000})
    assert revoked_count(sigma) == 0
    logout(sigma, a)
    deadline = time.monotonic() + 1
    while revoked_count(sigma) < 1:
        assert time.monotonic() < deadline, "the socket was not revoked within 1 s"
        time.sleep(0.01)  # pacing of the poll, not synchronisation
    publish(sigma, a2, channel, "after logout")
    # Now read it all: some of the backlog, in order, then 4401; never the
    # message published after the logout.
    slow.settimeout(10)
    seen = 0
    while True:
        f = rawws.read_frame(slow)
        assert f is not None, "closed without a close frame"
        op, body = f
        if op == 0x8:
            assert struct.unpack("!H", body[:2])[0] == 4401
            break
        assert op == 0x1
        m = json.loads(body)
        assert m["data"] != "after logout"
        assert m["data"]["i"] == seen
        seen += 1
    assert seen <= before
    slow.close()
