"""Worlds (DESIGN §5, issue #8): the signed-client handshake over real sockets.

A test client written against the spec: it opens the session socket at /ws
(cookie + Origin, or a bearer token), says hello, forks worlds with Ed25519
keys (`cryptography`), signs initiates and world messages, and fetches the
worker code from /world/<command>.js like a browser's Worker would. One
sigma process with users alice and bob serves the module; its minute key
rotates every 2 s so the rotation tests wait seconds, not minutes.
"""
import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers_auth import AuthSigma

USERS = {"alice": "alice-password-1", "bob": "bob-password-2"}
ROTATION_MS = 2000

CONFIG = """
[auth]
login_per_ip_per_minute = 1000
login_per_user_per_minute = 1000

# The world limit and the fork rate are per user, and every test here
# forks as alice: generous, so no test spends another's budget. The limits
# themselves are tested in test_world_budgets.py, one fresh user a test.
[worlds]
activation_timeout = "1s"
max_per_user = 64
forks_per_minute = 10000
key_rotation = "2s"
"""


# Access lists: `secret` names its users, `team` inherits those of the
# /team route whose &broadcast it reuses; /ws and /world let anonymous
# requests reach &world (auth "optional"), which must still refuse them.
CONFIG_ACL = """
[auth]
login_per_ip_per_minute = 1000
login_per_user_per_minute = 1000

[[route]]
path = "/ws"
to = "&world"
auth = "optional"

[[route]]
path = "/world"
to = "&world"
auth = "optional"

[[route]]
path = "/team"
to = "&broadcast"
auth = "required"
users = ["alice"]

[world.echo]
code = "builtin:echo"
to = "&echo"

[world.secret]
code = "builtin:echo"
to = "&echo"
users = ["alice"]

[world.team]
code = "builtin:chat"
to = "&broadcast"
"""


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.fixture(scope="module")
def hub():
    s = AuthSigma(CONFIG, USERS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def acl():
    s = AuthSigma(CONFIG_ACL, USERS)
    yield s
    s.stop()


class Client:
    """One session socket, speaking DESIGN §5 (Lamport clock included).

    Without `cookie` or `token` it logs in afresh (a session of its own;
    the world limit and the fork rate are the user's, over all of its
    sessions)."""

    def __init__(self, hub, user, cookie=None, token=None):
        self.hub = hub
        if token:
            self.auth = {"Authorization": f"Bearer {token}"}
        else:
            self.auth = {"Cookie": cookie or hub.login(user)}
        headers = dict(self.auth, Origin=hub.origin)
        self.ws = connect(hub.url("/ws"), additional_headers=headers,
                          open_timeout=10, close_timeout=2).__enter__()
        self.lamport = 0
        self.seen = []

    def send(self, **msg):
        self.lamport += 1
        msg.setdefault("lamport", self.lamport)
        self.ws.send(json.dumps(msg))
        return msg["lamport"]

    def recv(self, timeout=5):
        msg = json.loads(self.ws.recv(timeout))
        assert isinstance(msg["lamport"], int)
        if self.seen:
            assert msg["lamport"] > self.seen[-1]["lamport"], "server clock must increase"
        self.seen.append(msg)
        self.lamport = max(self.lamport, msg["lamport"]) + 1
        return msg

    def hello(self):
        sent = self.send(type="hello")
        w = self.recv()
        assert w["type"] == "welcome"
        assert w["lamport"] > sent
        return w

    def fork(self, command="echo", key=None):
        key = key or Ed25519PrivateKey.generate()
        world = b64(key.public_key().public_bytes_raw())
        self.send(type="fork", world=world, command=command)
        reply = self.recv()
        assert reply["world"] == world, reply
        return key, world, reply

    def initiate(self, key, world, command, cookie, *, path=None, headers=None,
                 tamper_initiate=None, tamper_sig=None):
        """GET the worker code as a Worker would; returns (status, body)."""
        initiate = json.dumps({"cookie": cookie, "world": world, "command": command}).encode()
        sig = key.sign(initiate)
        if tamper_initiate is not None:
            initiate = flip(initiate, tamper_initiate)
        if tamper_sig is not None:
            sig = flip(sig, tamper_sig)
        target = path or f"/world/{command}.js"
        status, hdrs, body = self.hub.request(
            "GET", f"{target}?initiate={b64(initiate)}&sig={b64(sig)}",
            headers=headers if headers is not None else self.auth)
        return status, hdrs, body

    def start(self, command="echo"):
        """fork + initiate: an active world (key, id)."""
        key, world, reply = self.fork(command)
        assert reply["type"] == "fork-cookie", reply
        status, hdrs, body = self.initiate(key, world, command, reply["cookie"])
        assert status == 200, body
        return key, world

    def say(self, key, world, body, lamport=None, signer=None):
        self.lamport += 1
        n = lamport if lamport is not None else self.lamport
        sig = (signer or key).sign(f"{world}\n{n}\n{body}".encode())
        self.ws.send(json.dumps({"type": "world", "world": world, "lamport": n,
                                 "body": body, "sig": b64(sig)}))

    def close(self):
        self.ws.close()


def expect_error(c, code=None):
    m = c.recv()
    assert m["type"] == "error", m
    assert isinstance(m["code"], str) and m["message"], m
    if code is not None:
        assert m["code"] == code, m
    return m["message"]


def quiet(c, timeout=0.3):
    """Nothing arrives within `timeout` (used only to show absence)."""
    try:
        m = c.ws.recv(timeout)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected message {m}")


# -- the happy path -----------------------------------------------------------

def test_happy_path(hub):
    c = Client(hub, "alice")
    w = c.hello()
    assert w["user"] == "alice"
    names = {cmd["name"]: cmd["code"] for cmd in w["commands"]}
    assert names["echo"] == "/world/echo.js"
    key, world, reply = c.fork("echo")
    assert reply["type"] == "fork-cookie"
    status, hdrs, code = c.initiate(key, world, "echo", reply["cookie"])
    assert status == 200, code
    assert hdrs["content-type"].startswith("text/javascript")
    assert hdrs["cache-control"] == "no-store"
    assert b"postMessage" in code
    c.say(key, world, "ping 1")
    m = c.recv()
    assert m == {"type": "world", "world": world, "body": "ping 1", "lamport": m["lamport"]}
    c.say(key, world, json.dumps({"x": [1, "two"]}))
    assert json.loads(c.recv()["body"]) == {"x": [1, "two"]}
    c.close()


def test_bearer_token_session(hub):
    status, body = hub.post_json("/auth/token", {}, user="alice")
    assert status == 200, body
    c = Client(hub, "alice", token=body["token"])
    c.hello()
    key, world = c.start("echo")
    c.say(key, world, "via bearer")
    assert c.recv()["body"] == "via bearer"
    # The same user's cookie session is another session: refused.
    key2, world2, reply = c.fork("echo")
    status, _, _ = c.initiate(key2, world2, "echo", reply["cookie"],
                              headers={"Cookie": hub.cookie("alice")})
    assert status == 403
    c.close()


def test_replies_reach_only_their_world(hub):
    c = Client(hub, "alice")
    c.hello()
    k1, w1 = c.start()
    k2, w2 = c.start()
    for i in range(20):
        c.say(k1, w1, f"one {i}")
        c.say(k2, w2, f"two {i}")
    got = [c.recv() for _ in range(40)]
    assert [m["body"] for m in got if m["world"] == w1] == [f"one {i}" for i in range(20)]
    assert [m["body"] for m in got if m["world"] == w2] == [f"two {i}" for i in range(20)]
    c.close()


def test_chat_world_through_broadcast_carries_user(hub):
    a = Client(hub, "alice")
    a.hello()
    b = Client(hub, "bob")
    b.hello()
    ka, wa = a.start("chat")
    kb, wb = b.start("chat")
    for c, k, w in ((a, ka, wa), (b, kb, wb)):
        c.say(k, w, json.dumps({"type": "subscribe", "channel": "public:worlds-test"}))
        assert json.loads(c.recv()["body"])["type"] == "subscribed"
    a.say(ka, wa, json.dumps({"type": "publish", "channel": "public:worlds-test", "data": "hi"}))
    for c, w in ((a, wa), (b, wb)):
        m = c.recv()
        assert m["world"] == w
        d = json.loads(m["body"])
        assert (d["type"], d["from"], d["data"]) == ("message", "alice", "hi")
    a.close()
    b.close()


# -- activation ---------------------------------------------------------------

def test_activation_timeout_closes_4408(hub):
    c = Client(hub, "alice")
    start = time.monotonic()
    with pytest.raises(ConnectionClosed) as e:
        c.ws.recv(10)
    assert e.value.rcvd.code == 4408
    assert 0.5 < time.monotonic() - start < 5


def test_no_credentials_no_upgrade(hub):
    status, _, _ = hub.request("GET", "/ws", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": hub.origin})
    assert status == 401


def test_no_credentials_no_upgrade_on_an_optional_route(acl):
    # /ws is auth = "optional" there: the session socket still needs a user.
    status, hdrs, body = acl.request("GET", "/ws", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": acl.origin})
    assert (status, json.loads(body)["error"]) == (401, "unauthenticated")
    assert hdrs["www-authenticate"].startswith("Bearer")
    # And so does the initiate.
    c = Client(acl, "alice")
    c.hello()
    key, world, reply = c.fork()
    status, _, body = c.initiate(key, world, "echo", reply["cookie"], headers={})
    assert (status, json.loads(body)["error"]) == (401, "unauthenticated")
    status, _, _ = c.initiate(key, world, "echo", reply["cookie"])
    assert status == 200
    c.close()


def test_cross_site_upgrade_refused(hub):
    with pytest.raises(Exception) as e:
        connect(hub.url("/ws"), additional_headers={"Cookie": hub.cookie("alice"),
                                                     "Origin": "http://evil.example"},
                open_timeout=5)
    assert "403" in str(e.value)


def test_messages_before_hello_are_refused(hub):
    c = Client(hub, "alice")
    c.send(type="fork", world=b64(bytes(32)), command="echo")
    assert "hello" in expect_error(c)
    c.hello()
    c.close()


# -- fork ---------------------------------------------------------------------

def test_fork_unknown_command_and_duplicate(hub):
    c = Client(hub, "alice")
    c.hello()
    _, _, reply = c.fork("no-such-command")
    assert reply == {"type": "fork-refused", "world": reply["world"],
                     "reason": "unknown_command", "lamport": reply["lamport"]}
    key, world = c.start()
    _, _, reply = c.fork("echo", key=key)
    assert (reply["type"], reply["reason"]) == ("fork-refused", "duplicate")
    c.close()


def test_bad_envelopes_keep_the_socket(hub):
    c = Client(hub, "alice")
    c.hello()
    for bad in ['{"type":"hello"}', "not json", '{"type":"zap","lamport":1}',
                '{"type":"fork","lamport":1,"world":"AAAA","command":"echo"}',
                '{"type":"hello","lamport":1,"extra":true}']:
        c.ws.send(bad)
        expect_error(c, "bad_message")
    c.ws.send(b"\x00binary")
    expect_error(c, "bad_message")
    # The old discriminator is named; an id is echoed on errors and answers.
    c.ws.send('{"t":"hello","lamport":1,"id":9}')
    m = c.recv()
    assert (m["type"], m["code"], m["id"]) == ("error", "bad_message", 9), m
    assert '"type"' in m["message"], m
    c.send(type="hello", id="again")
    m = c.recv()
    assert (m["type"], m["code"], m["id"]) == ("error", "already_activated", "again"), m
    c.start()
    c.close()


MAX_SAFE = 2**53 - 1  # Number.MAX_SAFE_INTEGER


def test_lamports_above_max_safe_integer_are_refused(hub):
    c = Client(hub, "alice")
    c.send(type="hello", lamport=MAX_SAFE + 1)
    assert "lamport" in expect_error(c)
    c.hello()
    k, w = c.start()
    for n in (MAX_SAFE + 1, 2**64 - 1):
        c.say(k, w, "too big", lamport=n)
        assert "lamport" in expect_error(c)
    c.say(k, w, "still open")
    m = c.recv()
    assert m["body"] == "still open" and m["lamport"] <= MAX_SAFE
    c.close()


def test_server_stamps_never_exceed_max_safe_integer(hub):
    c = Client(hub, "alice")
    c.send(type="hello", lamport=MAX_SAFE)
    # welcome would need MAX_SAFE + 1: the socket closes instead.
    with pytest.raises(ConnectionClosed) as e:
        c.recv()
    assert e.value.rcvd.code == 1008
    assert all(m["lamport"] <= MAX_SAFE for m in c.seen)


# -- initiate -------------------------------------------------------------------

def test_initiate_errors(hub):
    c = Client(hub, "alice")
    c.hello()
    key, world, reply = c.fork()
    cookie = reply["cookie"]
    # Missing parameters: 400.
    for q in ["", "?initiate=e30", "?sig=AAAA", "?initiate=***&sig=***"]:
        status, _, _ = hub.request("GET", f"/world/echo.js{q}", headers=c.auth)
        assert status == 400, q
    # Unknown command: 404.
    status, _, _ = c.initiate(key, world, "echo", cookie, path="/world/nope.js")
    assert status == 404
    # A flipped bit in the cookie, the initiate, the signature: 403.
    raw = unb64(cookie)
    for bit in (0, 8 * 24 + 3, 8 * len(raw) - 1):
        status, _, _ = c.initiate(key, world, "echo", b64(flip(raw, bit)))
        assert status == 403, bit
    for bit in (5, 8 * 20 + 1, 8 * 60):
        status, _, _ = c.initiate(key, world, "echo", cookie, tamper_initiate=bit)
        assert status == 403, bit
    for bit in (0, 255, 511):
        status, _, _ = c.initiate(key, world, "echo", cookie, tamper_sig=bit)
        assert status == 403, bit
    # Signed by another key, or for another world than the cookie's.
    other = Ed25519PrivateKey.generate()
    status, _, _ = c.initiate(other, world, "echo", cookie)
    assert status == 403
    status, _, _ = c.initiate(other, b64(other.public_key().public_bytes_raw()), "echo", cookie)
    assert status == 403
    # Anonymous: the route needs a login.
    status, _, _ = c.initiate(key, world, "echo", cookie, headers={})
    assert status == 401
    # Still good after all that; then a replay is 409.
    status, _, _ = c.initiate(key, world, "echo", cookie)
    assert status == 200
    status, _, _ = c.initiate(key, world, "echo", cookie)
    assert status == 409
    c.close()


def test_racing_initiates_with_one_cookie_start_one_world(hub):
    c = Client(hub, "alice")
    c.hello()
    key, world, reply = c.fork()
    barrier = threading.Barrier(6)

    def go():
        barrier.wait()
        return c.initiate(key, world, "echo", reply["cookie"])[0]

    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: go(), range(6)))
    assert statuses == [200] + [409] * 5, statuses
    c.close()


def test_cookie_from_another_session(hub):
    a1 = Client(hub, "alice")
    a1.hello()
    key, world, reply = a1.fork()
    other_session = hub.login("alice")
    status, _, _ = a1.initiate(key, world, "echo", reply["cookie"],
                               headers={"Cookie": other_session})
    assert status == 403
    status, _, _ = a1.initiate(key, world, "echo", reply["cookie"],
                               headers={"Cookie": hub.cookie("bob")})
    assert status == 403
    a1.close()


def wait_for_phase(epoch=None, lo=300, hi=1200):
    """Polls the wall clock (the server's key epochs are now_ms // 2000)
    until it is `lo..hi` ms into epoch `epoch` (or any epoch); returns it."""
    deadline = time.monotonic() + 4 * ROTATION_MS / 1000
    while time.monotonic() < deadline:
        now = int(time.time() * 1000)
        e, into = divmod(now, ROTATION_MS)
        if (epoch is None or e == epoch) and lo <= into < hi:
            return e
        if epoch is not None and e > epoch:
            raise AssertionError("missed the epoch")
        time.sleep(0.02)
    raise AssertionError("clock phase not reached")


def test_minute_key_rotation(hub):
    c = Client(hub, "alice")
    c.hello()
    e = wait_for_phase()
    k1, w1, r1 = c.fork()
    k2, w2, r2 = c.fork()
    # One rotation later the cookie was sealed under the previous key: accepted.
    wait_for_phase(e + 1)
    status, _, _ = c.initiate(k1, w1, "echo", r1["cookie"])
    assert status == 200
    # Older than two rotations: the key is gone, refused.
    wait_for_phase(e + 2)
    status, _, body = c.initiate(k2, w2, "echo", r2["cookie"])
    assert status == 403, body
    c.close()


# -- world messages -------------------------------------------------------------

def test_message_signed_by_another_world(hub):
    c = Client(hub, "alice")
    c.hello()
    k1, w1 = c.start()
    k2, w2 = c.start()
    c.say(k1, w1, "forged", signer=k2)
    assert "signature" in expect_error(c)
    c.say(k1, w1, "genuine")
    assert c.recv()["body"] == "genuine"
    c.close()


def test_replayed_and_stale_lamports(hub):
    c = Client(hub, "alice")
    c.hello()
    k, w = c.start()
    c.say(k, w, "first", lamport=100)
    assert c.recv()["body"] == "first"
    c.say(k, w, "first", lamport=100)
    assert "replay" in expect_error(c)
    c.say(k, w, "older", lamport=99)
    assert "replay" in expect_error(c)
    c.close()


def test_message_for_a_world_of_another_session(hub):
    a = Client(hub, "alice")
    a.hello()
    ka, wa = a.start()
    b = Client(hub, "bob")
    b.hello()
    b.say(ka, wa, "not yours")  # even with the right key
    assert "unknown world" in expect_error(b)
    a2 = Client(hub, "alice", cookie=hub.login("alice"))
    a2.hello()
    a2.say(ka, wa, "not this socket's")
    assert "unknown world" in expect_error(a2)
    assert quiet(a)
    a.say(ka, wa, "still mine")
    assert a.recv()["body"] == "still mine"
    for c in (a, b, a2):
        c.close()


def test_disconnect_from_client_and_socket_close(hub):
    c = Client(hub, "alice")
    c.hello()
    k, w = c.start()
    c.send(type="disconnect", world=w)
    m = c.recv()
    assert (m["type"], m["world"]) == ("disconnect", w)
    c.say(k, w, "after")
    assert "world" in expect_error(c)
    c.send(type="disconnect", world=w)
    expect_error(c)
    # The key is free again: the same world can be forked and started anew.
    _, _, reply = c.fork(key=k)
    assert reply["type"] == "fork-cookie", reply
    status, _, body = c.initiate(k, w, "echo", reply["cookie"])
    assert status == 200, body
    c.close()


def test_messages_to_an_ended_world_are_logged_as_illegal_transitions():
    # A server of its own: its log budget (10 lines a second) is this test's.
    s = AuthSigma(CONFIG, {"alice": USERS["alice"]})
    try:
        c = Client(s, "alice")
        c.hello()
        k, w = c.start()
        c.send(type="disconnect", world=w)
        assert c.recv()["type"] == "disconnect"
        c.say(k, w, "after the end")
        assert "unknown world" in expect_error(c)
        c.send(type="disconnect", world=w)
        assert "unknown world" in expect_error(c)
        # Logged before the error was sent; the socket stays usable.
        log = [l for l in s.stderr().splitlines() if "illegal world transition" in l]
        assert len(log) == 2, s.stderr()
        assert w in log[0] and "Message" in log[0] and "Disconnect" in log[1]
        k2, w2 = c.start()
        c.say(k2, w2, "alive")
        assert c.recv()["body"] == "alive"
        c.close()
    finally:
        s.stop()


def open_connections(hub):
    status, _, body = hub.request("GET", "/metrics")
    assert status == 200
    line = next(l for l in body.decode().splitlines() if l.startswith("sigma_connections_open "))
    return int(line.split()[1])


def test_socket_close_ends_its_worlds(hub):
    c = Client(hub, "alice")
    c.hello()
    c.start()
    key, world, reply = c.fork()
    c.close()
    # Poll until the server has let go of the socket (only the metrics
    # request itself is open), then the cookie names a socket that is gone.
    deadline = time.monotonic() + 5
    while open_connections(hub) > 1:
        assert time.monotonic() < deadline, "socket still open on the server"
        time.sleep(0.02)
    status, _, body = c.initiate(key, world, "echo", reply["cookie"])
    assert status == 403, body
    assert json.loads(body)["error"] == "session_socket_gone"


# -- access lists -----------------------------------------------------------------

def test_commands_are_limited_to_their_users(acl):
    a = Client(acl, "alice")
    assert [c["name"] for c in a.hello()["commands"]] == ["echo", "secret", "team"]
    b = Client(acl, "bob")
    assert [c["name"] for c in b.hello()["commands"]] == ["echo"]
    for command in ("secret", "team"):
        _, _, reply = b.fork(command)
        assert (reply["type"], reply["reason"]) == ("fork-refused", "unknown_command")
        # Even holding a good cookie (alice's), bob's initiate is refused
        # before the cookie is looked at.
        key, world, reply = a.fork(command)
        assert reply["type"] == "fork-cookie"
        status, _, body = b.initiate(key, world, command, reply["cookie"])
        assert (status, json.loads(body)["error"]) == (404, "unknown_command")
    k, w = a.start("secret")
    a.say(k, w, "only alice")
    assert a.recv()["body"] == "only alice"
    k, w = b.start("echo")
    b.say(k, w, "anyone")
    assert b.recv()["body"] == "anyone"
    a.close()
    b.close()


def test_a_burst_in_one_read_is_answered_in_order(hub):
    """Messages that reach sigma in one read have their signatures verified
    as one batch: a bad one among them is refused alone, a replay is
    still a replay, and every answer keeps its place."""
    from websockets.frames import Frame, Opcode

    c = Client(hub, "alice")
    c.hello()
    k1, w1 = c.start()
    k2, w2 = c.start()
    plan = [(k1, w1, "a", None), (k2, w2, "b", None), (k1, w1, "bad", k2),
            (k1, w1, "c", None), (k1, w1, "replay", "again"), (k2, w2, "d", None),
            (k2, w2, "e", None), (k1, w1, "f", None)]
    wire = b""
    last = None
    for key, world, body, twist in plan:
        if twist == "again":
            n = last
        else:
            c.lamport += 1
            n = last = c.lamport
        signer = twist if twist not in (None, "again") else key
        sig = signer.sign(f"{world}\n{n}\n{body}".encode())
        text = json.dumps({"type": "world", "world": world, "lamport": n, "body": body,
                           "sig": b64(sig)})
        wire += Frame(Opcode.TEXT, text.encode()).serialize(
            mask=True, extensions=[])
    c.ws.socket.sendall(wire)
    got = [c.recv() for _ in plan]
    seen = [m["body"] if m["type"] == "world" else m["code"] for m in got]
    assert seen == ["a", "b", "bad_signature", "c", "replayed", "d", "e", "f"], got
    assert [m["world"] for m in got if m["type"] == "world"] == [w1, w2, w1, w2, w2, w1]
    c.close()
