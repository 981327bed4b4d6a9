"""&broadcast (DESIGN §6, wire format §9), driven by real clients.

One sigma process with users alice, bob and carol serves the module; each
test uses its own channels. Clients log in with `POST /login` and open
cookie-authenticated WebSockets at /broadcast (default route, auth optional).
"""
import asyncio
import json
import socket
import struct
import threading
import time

import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.sync.client import connect

import rawws
from helpers_auth import AuthSigma, raw_ws

USERS = {"alice": "alice-password-1", "bob": "bob-password-2", "carol": "carol-password-3"}

CONFIG = """
[server]
max_connections = 10000
max_connections_per_ip = 5000

[auth]
login_per_ip_per_minute = 1000
login_per_user_per_minute = 1000

[websocket]
close_timeout = "10s"

# Configured rules come before the built-in public:* and user:{user}:*.
[[broadcast.rule]]
pattern = "news:*"
subscribe = "anyone"
publish = ["carol"]

# No history: a channel is forgotten once its last subscriber leaves.
[[broadcast.rule]]
pattern = "nohist:*"
subscribe = "logged_in"
publish = "logged_in"
history_size = 0

[[broadcast.rule]]
pattern = "public:readonly"
subscribe = "logged_in"
publish = "nobody"
"""

FANOUT_SUBSCRIBERS = 1000
FANOUT_MESSAGES = 1000


@pytest.fixture(scope="module")
def hub():
    s = AuthSigma(CONFIG, USERS)
    yield s
    s.stop()


def ws(hub, user=None, **kw):
    return connect(hub.url("/broadcast"), additional_headers=hub.ws_headers(user),
                   open_timeout=10, close_timeout=2, **kw)


def send(c, **msg):
    c.send(json.dumps(msg))


def recv(c, timeout=5):
    return json.loads(c.recv(timeout=timeout))


def is_subscribed(m, channel):
    """`subscribed` for `channel`: the channel's last seq and its epoch."""
    return (m.get("type"), m.get("channel")) == ("subscribed", channel) \
        and isinstance(m.get("seq"), int) and isinstance(m.get("epoch"), str)


def subscribe(c, channel):
    send(c, type="subscribe", channel=channel)
    m = recv(c)
    assert is_subscribed(m, channel), m
    return m


def test_two_users_chat_with_true_from(hub):
    with ws(hub, "alice") as a, ws(hub, "bob") as b:
        subscribe(a, "public:chat")
        subscribe(b, "public:chat")
        send(a, type="publish", channel="public:chat", data={"text": "hi bob"})
        want = {"type": "message", "channel": "public:chat", "seq": 1,
                "from": "alice", "data": {"text": "hi bob"}}
        assert recv(a) == want
        assert recv(b) == want
        # A claimed `from` is ignored: deliveries carry the true publisher.
        send(b, type="publish", channel="public:chat", data="hi alice", **{"from": "alice"})
        for c in (a, b):
            m = recv(c)
            assert (m["seq"], m["from"], m["data"]) == (2, "bob", "hi alice")
        # Any JSON value, null included.
        for i, data in enumerate([None, 0, [1, "two", {"3": 3.5}], "σ ✓"]):
            send(a, type="publish", channel="public:chat", data=data)
            m = recv(b)
            assert (m["seq"], m["from"], m["data"]) == (3 + i, "alice", data)


def test_user_channels_belong_to_their_user(hub):
    with ws(hub, "alice") as a, ws(hub, "bob") as b:
        send(a, type="subscribe", channel="user:bob:inbox")
        err = recv(a)
        assert (err["type"], err["code"], err["channel"]) == ("error", "forbidden", "user:bob:inbox")
        send(a, type="publish", channel="user:bob:inbox", data="psst")
        err = recv(a)
        assert (err["type"], err["code"], err["channel"]) == ("error", "forbidden", "user:bob:inbox")
        # The socket stays open and usable; each user has their own channel.
        subscribe(a, "user:alice:inbox")
        subscribe(b, "user:bob:inbox")
        send(a, type="publish", channel="user:alice:inbox", data="note to self")
        m = recv(a)
        assert (m["channel"], m["from"], m["data"]) == ("user:alice:inbox", "alice", "note to self")
        send(b, type="publish", channel="user:bob:inbox", data="mine")
        m = recv(b)
        assert (m["channel"], m["from"], m["data"]) == ("user:bob:inbox", "bob", "mine")
        # Nothing leaked to alice.
        with pytest.raises(TimeoutError):
            a.recv(timeout=0.3)
        # Over HTTP too.
        status, body = hub.post_json("/broadcast/user:bob:inbox", "psst", user="alice")
        assert (status, body["error"]) == (403, "forbidden") and body["message"]


def test_forbidden_error_shape(hub):
    with ws(hub, "carol") as c:
        send(c, type="subscribe", channel="user:alice:x")
        err = recv(c)
        assert err["type"] == "error"
        assert err["code"] == "forbidden"
        assert err["channel"] == "user:alice:x"
        assert isinstance(err["message"], str) and err["message"]
        # Channels outside every rule are refused too.
        send(c, type="subscribe", channel="secret")
        assert recv(c)["code"] == "forbidden"


def test_bad_messages_keep_the_socket_open(hub):
    with ws(hub, "carol") as c:
        for bad in ["not json", "[1,2]", '{"type":"dance","channel":"public:x"}',
                    '{"type":"subscribe"}', '{"channel":"public:x"}',
                    '{"type":"publish","channel":"public:x"}',
                    '{"type":"subscribe","channel":42}']:
            c.send(bad)
            err = recv(c)
            assert (err["type"], err["code"]) == ("error", "bad_message"), (bad, err)
            assert isinstance(err["message"], str)
        c.send(b"\x00binary")
        assert recv(c)["code"] == "bad_message"
        for name in ["", "has space", "a/b", "x" * 129, "é"]:
            send(c, type="subscribe", channel=name)
            err = recv(c)
            assert (err["type"], err["code"]) == ("error", "bad_channel"), name
        subscribe(c, "public:" + "x" * 121)  # 128 characters: the limit
        subscribe(c, "public:still-works")


def test_subscription_limit(hub):
    with ws(hub, "carol") as c:
        for i in range(256):
            send(c, type="subscribe", channel=f"public:many:{i}")
        for i in range(256):
            assert is_subscribed(recv(c), f"public:many:{i}")
        send(c, type="subscribe", channel="public:many:one-too-many")
        err = recv(c)
        assert (err["code"], err["channel"]) == ("too_many_subscriptions", "public:many:one-too-many")
        # Subscribing again to one it has is an error; unsubscribing frees a slot.
        send(c, type="subscribe", channel="public:many:7")
        assert recv(c)["code"] == "already_subscribed"
        send(c, type="unsubscribe", channel="public:many:0")
        subscribe(c, "public:many:one-too-many")


def test_unsubscribe_and_close_stop_deliveries(hub):
    with ws(hub, "alice") as a, ws(hub, "bob") as b:
        subscribe(a, "nohist:unsub")
        subscribe(b, "nohist:unsub")
        send(b, type="unsubscribe", channel="nohist:unsub")
        subscribe(b, "nohist:unsub-sync")
        send(a, type="publish", channel="nohist:unsub", data=1)
        assert recv(a)["data"] == 1
        # b's next delivery is from the sync channel, not the one it left.
        send(a, type="publish", channel="nohist:unsub-sync", data="sync")
        m = recv(b)
        assert (m["channel"], m["data"]) == ("nohist:unsub-sync", "sync")
    # All gone: a publish reaches no one. The client's close reaches the
    # server's connection task asynchronously, so poll (bounded) until the
    # subscriptions are released rather than assume they already are.
    deadline = time.monotonic() + 10
    while True:
        status, body = hub.post_json("/broadcast/nohist:unsub", 2, user="alice")
        if body == {"seq": 0} or time.monotonic() > deadline:
            break
    assert (status, body) == (202, {"seq": 0})


def test_anonymous_clients(hub):
    with ws(hub) as anon:
        send(anon, type="subscribe", channel="public:chat")
        err = recv(anon)
        assert (err["code"], err["channel"]) == ("forbidden", "public:chat")
        send(anon, type="publish", channel="public:chat", data="hi")
        assert recv(anon)["code"] == "forbidden"
    status, body = hub.post_json("/broadcast/public:chat", "hi")
    assert (status, body["error"]) == (403, "forbidden") and body["message"]


def test_configured_rules(hub):
    # news:*: anyone may subscribe (anonymous clients too), only carol publishes.
    with ws(hub) as anon, ws(hub, "alice") as a:
        subscribe(anon, "news:today")
        subscribe(a, "news:today")
        send(a, type="publish", channel="news:today", data="fake")
        err = recv(a)
        assert (err["type"], err["code"], err["channel"]) == ("error", "forbidden", "news:today")
        status, body = hub.post_json("/broadcast/news:today", "headline", user="carol")
        assert (status, body) == (202, {"seq": 1})
        for c in (anon, a):
            assert recv(c) == {"type": "message", "channel": "news:today", "seq": 1,
                               "from": "carol", "data": "headline"}
    # A configured rule wins over the built-in public:* one.
    with ws(hub, "bob") as b:
        subscribe(b, "public:readonly")
        send(b, type="publish", channel="public:readonly", data="x")
        assert recv(b)["code"] == "forbidden"
    assert hub.post_json("/broadcast/public:readonly", 1, user="carol")[0] == 403


def test_http_publish(hub):
    with ws(hub, "alice") as a:
        subscribe(a, "public:http")
        status, body = hub.post_json("/broadcast/public:http", {"via": "http"}, user="bob")
        assert (status, body) == (202, {"seq": 1})
        assert recv(a) == {"type": "message", "channel": "public:http", "seq": 1,
                           "from": "bob", "data": {"via": "http"}}
        status, body = hub.post_json("/broadcast/public:http", [1, 2], user="carol")
        assert (status, body) == (202, {"seq": 2})
        m = recv(a)
        assert (m["seq"], m["from"], m["data"]) == (2, "carol", [1, 2])
    assert hub.post_json("/broadcast/public:http", None, user="bob", raw="{nope")[0] == 400
    assert hub.post_json("/broadcast/public:http", None, user="bob", raw="")[0] == 400
    assert hub.post_json("/broadcast/has%20space", 1, user="bob")[0] == 400
    assert hub.post_json("/broadcast/", 1, user="bob")[0] == 400
    status, headers, _ = hub.request("GET", "/broadcast/public:http",
                                     headers={"Cookie": hub.cookie("bob")})
    # GET is for server-sent events (test_broadcast_recovery.py).
    assert status == 406
    status, headers, _ = hub.request("PUT", "/broadcast/public:http", body="1",
                                     headers={"Cookie": hub.cookie("bob"), "Origin": hub.origin})
    assert status == 405 and headers["allow"] == "GET, POST"


# `[broadcast] max_message` (default 1 MiB, this module does not set it) and
# the slack the route's body limit allows beyond it (PUBLISH_BODY_SLACK).
MAX_MESSAGE = 1 << 20
BODY_SLACK = 16 << 10


def send_fragmented(c, **msg):
    """A message past websocket.max_frame (1 MiB) must be fragmented."""
    text = json.dumps(msg)
    c.send(text[i:i + (256 << 10)] for i in range(0, len(text), 256 << 10))


def test_ws_publish_at_max_message_and_one_past(hub):
    # Deliveries of about 1 MiB: lift the client's own 1 MiB default.
    with ws(hub, "alice", max_size=None) as a, ws(hub, "bob", max_size=None) as b:
        subscribe(b, "public:big")
        at = "x" * (MAX_MESSAGE - 2)  # encoded: 2 quotes + the letters
        send_fragmented(a, type="publish", channel="public:big", data=at)
        m = recv(b, timeout=10)
        assert (m["seq"], m["from"], len(m["data"])) == (1, "alice", len(at))
        send_fragmented(a, type="publish", channel="public:big", data=at + "x")
        err = recv(a, timeout=10)
        assert (err["type"], err["code"], err["channel"]) == \
            ("error", "message_too_large", "public:big")
        assert "max_message" in err["message"]
        # The socket stays open; the refused publish used no seq and
        # reached no one: bob's next message is the next small one.
        send(a, type="publish", channel="public:big", data="small")
        m = recv(b, timeout=10)
        assert (m["seq"], m["data"]) == (2, "small")
        # Also to a channel nobody subscribes to (no state, still refused).
        send_fragmented(a, type="publish", channel="public:nobody-here", data=at + "x")
        assert recv(a, timeout=10)["code"] == "message_too_large"


def test_http_publish_at_max_message_and_past(hub):
    path = "/broadcast/public:bighttp"
    with ws(hub, "alice", max_size=None) as a:
        subscribe(a, "public:bighttp")
        at = "y" * (MAX_MESSAGE - 2)
        assert hub.post_json(path, at, user="bob") == (202, {"seq": 1})
        assert len(recv(a, timeout=10)["data"]) == len(at)
        assert hub.post_json(path, at + "y", user="bob") == \
            (413, {"error": "message_too_large", "max_message": MAX_MESSAGE,
                       "message": "the message is larger than the server accepts"})
        # What is measured is the data, not its spelling: whitespace around
        # it lengthens the body past max_message, not the data.
        assert hub.post_json(path, None, user="bob", raw=" " * 100 + json.dumps(at)) == \
            (202, {"seq": 2})
        assert recv(a, timeout=10)["seq"] == 2
        # A body past max_message + slack is refused by the route's body
        # limit from its Content-Length, before any of it is read: raw
        # socket, head only, then 413 and the connection closes.
        s = socket.create_connection((hub.host, hub.port), timeout=10)
        try:
            s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nOrigin: {hub.origin}\r\n"
                       f"Cookie: {hub.cookie('bob')}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {MAX_MESSAGE + BODY_SLACK + 1}\r\n\r\n").encode())
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        finally:
            s.close()
        assert got.startswith(b"HTTP/1.1 413 "), got[:200]
        # The same from the body itself (chunked: no Content-Length to judge).
        s = socket.create_connection((hub.host, hub.port), timeout=10)
        try:
            s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nOrigin: {hub.origin}\r\n"
                       f"Cookie: {hub.cookie('bob')}\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
            body = json.dumps("z" * (MAX_MESSAGE + BODY_SLACK)).encode()
            try:
                s.sendall(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused mid-body: the rest was not read
            got = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except ConnectionResetError:
                pass
        finally:
            s.close()
        assert got.startswith(b"HTTP/1.1 413 "), got[:200]
        # Neither reached the subscriber.
        assert hub.post_json(path, "after", user="bob") == (202, {"seq": 3})
        m = recv(a, timeout=10)
        assert (m["seq"], m["data"]) == (3, "after")


def test_fanout_1000_subscribers_in_order(hub):
    channel = "public:fanout"
    headers = hub.ws_headers("bob")
    url = hub.url("/broadcast")

    async def open_subscriber():
        c = await aconnect(url, additional_headers=headers, open_timeout=30,
                           close_timeout=2, max_queue=None)
        await c.send(json.dumps({"type": "subscribe", "channel": channel}))
        assert is_subscribed(json.loads(await c.recv()), channel)
        return c

    async def receive_all(c):
        seqs = []
        for _ in range(FANOUT_MESSAGES):
            m = json.loads(await c.recv())
            assert m["from"] == "alice" and m["data"] == m["seq"] and m["channel"] == channel
            seqs.append(m["seq"])
        return seqs

    async def main():
        subs = []
        for start in range(0, FANOUT_SUBSCRIBERS, 100):
            subs += await asyncio.gather(*[open_subscriber() for _ in range(start, min(start + 100, FANOUT_SUBSCRIBERS))])
        pub = await aconnect(url, additional_headers=hub.ws_headers("alice"), open_timeout=10)
        receivers = [asyncio.ensure_future(receive_all(c)) for c in subs]
        for i in range(1, FANOUT_MESSAGES + 1):
            await pub.send(json.dumps({"type": "publish", "channel": channel, "data": i}))
        results = await asyncio.wait_for(asyncio.gather(*receivers), timeout=120)
        await pub.close()
        await asyncio.gather(*[c.close() for c in subs])
        return results

    started = time.monotonic()
    results = asyncio.run(main())
    assert len(results) == FANOUT_SUBSCRIBERS
    want = list(range(1, FANOUT_MESSAGES + 1))
    for seqs in results:
        assert seqs == want
    print(f"fan-out: {FANOUT_SUBSCRIBERS} x {FANOUT_MESSAGES} in {time.monotonic() - started:.1f}s")


def test_slow_subscriber_is_closed_1008_others_unaffected(hub):
    channel = "public:slow"
    payload = "z" * 65536
    count = 200  # 13 MB: well past the slow socket's 4 MiB outbound queue
    slow = raw_ws(hub, "/broadcast", user="carol", rcvbuf=4096)
    slow.sendall(rawws.frame(0x1, json.dumps({"type": "subscribe", "channel": channel}).encode()))
    op, body = rawws.read_frame(slow)
    assert op == 0x1 and is_subscribed(json.loads(body), channel)
    with ws(hub, "bob", max_size=None) as fast, ws(hub, "alice") as pub:
        subscribe(fast, channel)
        for i in range(1, count + 1):
            # In step with the fast reader, so only the slow one falls behind.
            send(pub, type="publish", channel=channel, data={"i": i, "pad": payload})
            m = recv(fast, timeout=10)
            assert (m["seq"], m["data"]["i"]) == (i, i)
        # The slow socket was closed with 1008 once it fell behind; it was
        # never read, so its deliveries came in order up to that point.
        slow.settimeout(10)
        seen = 0
        code = None
        while True:
            f = rawws.read_frame(slow)
            assert f is not None, "closed without a close frame"
            op, body = f
            if op == 0x8:
                code = struct.unpack("!H", body[:2])[0]
                break
            assert op == 0x1
            seen += 1
            assert json.loads(body)["seq"] == seen
        assert code == 1008
        assert seen < count
        # The others carry on.
        send(pub, type="publish", channel=channel, data="after")
        m = recv(fast)
        assert (m["seq"], m["data"]) == (count + 1, "after")
    slow.close()
