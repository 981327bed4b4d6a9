"""&broadcast history, recovery, presence, ids and server-sent events
(DESIGN §6, wire format §9; issue #19), driven by real clients.

One sigma process with users alice, bob and carol serves the module (one
test restarts it); each test uses its own channels.
"""
import http.client
import json

import pytest
from websockets.sync.client import connect

from helpers_auth import AuthSigma

USERS = {"alice": "alice-password-1", "bob": "bob-password-2", "carol": "carol-password-3"}

CONFIG = """
[auth]
login_per_ip_per_minute = 1000
login_per_user_per_minute = 1000

[broadcast]
history_size = 50

[[broadcast.rule]]
pattern = "room:*"
subscribe = "logged_in"
publish = "logged_in"
presence = ["carol"]
join_leave = true

[[broadcast.rule]]
pattern = "small:*"
subscribe = "logged_in"
publish = "logged_in"
history_size = 3
"""


@pytest.fixture(scope="module")
def hub():
    s = AuthSigma(CONFIG, USERS)
    yield s
    s.stop()


def ws(hub, user=None):
    return connect(hub.url("/broadcast"), additional_headers=hub.ws_headers(user),
                   open_timeout=10, close_timeout=2)


def send(c, **msg):
    c.send(json.dumps(msg))


def recv(c, timeout=5):
    return json.loads(c.recv(timeout=timeout))


def nothing_more(hub, c, channel):
    """Nothing else was queued for `c` on `channel`: a marker published
    now is the next message it gets."""
    publish(hub, "alice", channel, "marker")
    m = recv(c)
    assert (m["type"], m["data"]) == ("message", "marker"), m


def subscribe(c, channel, **extra):
    send(c, type="subscribe", channel=channel, **extra)
    m = recv(c)
    assert (m["type"], m["channel"]) == ("subscribed", channel), m
    return m


def publish(hub, user, channel, data):
    status, body = hub.post_json(f"/broadcast/{channel}", data, user=user)
    assert status == 202, (status, body)
    return body["seq"]


def test_reconnect_with_since_gets_exactly_the_missed_messages_then_live(hub):
    ch = "public:recover"
    with ws(hub, "bob") as b:
        ack = subscribe(b, ch)
        epoch = ack["epoch"]
        assert ack["seq"] == 0 and "recovered" not in ack
        publish(hub, "alice", ch, "first")
        assert recv(b)["seq"] == 1
    # Disconnected: three messages are published meanwhile.
    for i in range(2, 5):
        assert publish(hub, "alice", ch, f"m{i}") == i
    with ws(hub, "bob") as b:
        ack = subscribe(b, ch, since={"seq": 1, "epoch": epoch}, id="r1")
        assert ack == {"type": "subscribed", "channel": ch, "seq": 4, "epoch": epoch,
                       "recovered": True, "id": "r1"}
        got = [recv(b) for _ in range(3)]
        assert [(m["seq"], m["data"], m["from"]) for m in got] == \
            [(2, "m2", "alice"), (3, "m3", "alice"), (4, "m4", "alice")]
        publish(hub, "alice", ch, "live")
        m = recv(b)
        assert (m["seq"], m["data"]) == (5, "live")
        nothing_more(hub, b, ch)


def test_a_gap_or_a_foreign_epoch_is_not_recovered(hub):
    ch = "small:gap"
    with ws(hub, "bob") as b:
        epoch = subscribe(b, ch)["epoch"]
        for i in range(1, 7):
            publish(hub, "alice", ch, i)
        # history_size 3 keeps 4..6: from seq 1, 2 and 3 are gone.
        with ws(hub, "carol") as c:
            ack = subscribe(c, ch, since={"seq": 1, "epoch": epoch})
            assert (ack["recovered"], ack["seq"]) == (False, 6)
            nothing_more(hub, c, ch)
            recv(b)
        with ws(hub, "carol") as c:
            ack = subscribe(c, ch, since={"seq": 4, "epoch": epoch})
            assert ack["recovered"] is True
            assert [recv(c)["seq"] for _ in range(3)] == [5, 6, 7]
        with ws(hub, "carol") as c:
            assert subscribe(c, ch, since={"seq": 3, "epoch": "feed"})["recovered"] is False
            # `history` says what is kept, newest last.
            send(c, type="history", channel=ch, limit=2, id=9)
            h = recv(c)
            assert (h["type"], h["id"], h["epoch"], h["seq"]) == ("history", 9, epoch, 7)
            assert [m["data"] for m in h["messages"]] == [6, "marker"]


def test_the_epoch_changes_when_the_node_restarts(hub):
    ch = "public:restart"
    with ws(hub, "bob") as b:
        epoch = subscribe(b, ch)["epoch"]
        publish(hub, "alice", ch, "before")
        assert recv(b)["data"] == "before"
    hub.restart()
    with ws(hub, "bob") as b:
        ack = subscribe(b, ch, since={"seq": 1, "epoch": epoch})
        # One node keeps history in memory: it is gone, and the client is
        # told so, under a new epoch.
        assert ack["recovered"] is False
        assert ack["epoch"] != epoch and ack["seq"] == 0


def test_presence_and_coalesced_join_leave(hub):
    ch = "room:lobby"
    with ws(hub, "carol") as watcher:
        subscribe(watcher, ch)
        a1 = ws(hub, "alice")
        subscribe(a1, ch)
        assert recv(watcher) == {"type": "join", "channel": ch, "user": "alice"}
        with ws(hub, "alice") as a2:
            subscribe(a2, ch)
            send(watcher, type="presence", channel=ch, id="p")
            p = recv(watcher)
            assert p == {"type": "presence", "channel": ch, "id": "p", "users": [
                {"user": "alice", "connections": 2}, {"user": "carol", "connections": 1}]}
            # Presence needs its right (only carol here).
            send(a2, type="presence", channel=ch, id=3)
            err = recv(a2)
            assert (err["type"], err["code"], err["id"]) == ("error", "forbidden", 3)
            a1.close()
        # Her second socket closed too: now she has left.
        assert recv(watcher) == {"type": "leave", "channel": ch, "user": "alice"}
        send(watcher, type="presence", channel=ch)
        assert recv(watcher)["users"] == [{"user": "carol", "connections": 1}]


def test_ids_are_echoed_on_answers_and_errors(hub):
    with ws(hub, "alice") as a:
        send(a, type="publish", channel="public:ids", data=1, id=41)
        assert recv(a) == {"type": "published", "channel": "public:ids", "seq": 0, "id": 41}
        send(a, type="subscribe", channel="user:bob:inbox", id="s")
        err = recv(a)
        assert (err["code"], err["id"], err["channel"]) == ("forbidden", "s", "user:bob:inbox")
        assert err["message"]
        send(a, type="frobnicate", channel="public:ids", id=[1])
        err = recv(a)
        assert err["code"] == "bad_message" and "id" not in err
        send(a, type="frobnicate", channel="public:ids", id=7)
        err = recv(a)
        assert (err["code"], err["id"]) == ("bad_message", 7)


class Events:
    """A server-sent event stream read line by line."""

    def __init__(self, hub, channel, user, last_event_id=None, cookie=None):
        self.conn = http.client.HTTPConnection(hub.host, hub.port, timeout=10)
        headers = {"Accept": "text/event-stream", "Cookie": cookie or hub.cookie(user)}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.conn.request("GET", f"/broadcast/{channel}", headers=headers)
        self.resp = self.conn.getresponse()

    def next(self):
        """The next event: its fields, comments skipped."""
        event = {}
        while True:
            line = self.resp.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line == "":
                if event:
                    event["data"] = json.loads(event["data"])
                    return event
                continue
            if line.startswith(":"):
                continue
            k, _, v = line.partition(": ")
            event[k] = v if k != "data" else event.get("data", "") + v

    def close(self):
        self.conn.close()


def test_server_sent_events_with_last_event_id_resume(hub):
    ch = "public:sse"
    ev = Events(hub, ch, "bob")
    assert ev.resp.status == 200
    assert ev.resp.getheader("Content-Type") == "text/event-stream"
    first = ev.next()
    assert first["event"] == "subscribed"
    epoch = first["data"]["epoch"]
    assert first["id"] == f"{epoch}:0"
    publish(hub, "alice", ch, {"n": 1})
    m = ev.next()
    assert (m["event"], m["id"]) == ("message", f"{epoch}:1")
    assert m["data"] == {"type": "message", "channel": ch, "seq": 1, "from": "alice",
                         "data": {"n": 1}}
    ev.close()
    publish(hub, "alice", ch, {"n": 2})
    publish(hub, "alice", ch, {"n": 3})
    ev = Events(hub, ch, "bob", last_event_id=m["id"])
    ack = ev.next()
    assert ack["data"]["recovered"] is True
    assert [ev.next()["data"]["data"] for _ in range(2)] == [{"n": 2}, {"n": 3}]
    ev.close()
    # The same permissions as WebSocket.
    status, _, body = hub.request("GET", f"/broadcast/user:alice:x",
                                  headers={"Accept": "text/event-stream",
                                           "Cookie": hub.cookie("bob")})
    assert status == 403 and json.loads(body)["error"] == "forbidden"
    status, _, body = hub.request("GET", f"/broadcast/{ch}", headers={"Cookie": hub.cookie("bob")})
    assert status == 406 and json.loads(body)["error"] == "not_acceptable"


def test_logout_ends_the_event_stream(hub):
    cookie = hub.login("bob")
    ev = Events(hub, "public:sse-logout", "bob", cookie=cookie)
    assert ev.next()["event"] == "subscribed"
    status, _, _ = hub.request("POST", "/logout", headers={"Cookie": cookie, "Origin": hub.origin})
    assert status == 204
    # The stream is cut off (as a socket is closed with 4401): reading
    # ends, with no further event, well before the 10 s timeout.
    ended = False
    try:
        while ev.resp.readline():
            pass
        ended = True
    except (http.client.IncompleteRead, ConnectionError):
        ended = True
    assert ended
    ev.close()
