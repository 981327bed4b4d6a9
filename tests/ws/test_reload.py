"""SIGHUP reload (DESIGN §8, issue #15) seen by the Python `websockets` client.

The headline of the reload: one `&broadcast` subscription, on one socket, keeps
receiving across three reloads that each change something else, and every
publish (before, between and after them) arrives in order. A WebSocket on a
route the reload removes is closed with 1001. A reload is over when /metrics
counts it (`sigma_config_reloads_total`, incremented last); no sleeps.
"""
import json
import pathlib
import signal
import time
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import DEFAULT_CONFIG

BASE = DEFAULT_CONFIG + """
[[broadcast.rule]]
pattern = "open:*"
subscribe = "anyone"
publish = "anyone"
"""


def route(path, to, auth="none"):
    return f'\n[[route]]\npath = "{path}"\nto = "{to}"\nauth = "{auth}"\n'


def reloads(s):
    with urllib.request.urlopen(f"http://{s.addr}/metrics", timeout=10) as r:
        text = r.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("sigma_config_reloads_total{"):
            key, value = line.rsplit(" ", 1)
            counts[key.split('"')[1]] = int(value)
    return counts["ok"], counts["error"]


def reload(s, config, ok=True):
    """Rewrites the config file, sends SIGHUP, waits until the reload is counted."""
    before = reloads(s)
    (pathlib.Path(s.dir.name) / "sigma.toml").write_text(config)
    s.signal(signal.SIGHUP)
    want = (before[0] + 1, before[1]) if ok else (before[0], before[1] + 1)
    deadline = time.monotonic() + 20
    while (now := reloads(s)) != want:
        assert time.monotonic() < deadline, f"reload not counted: {now}, wanted {want}"


def publish(s, channel, data):
    req = urllib.request.Request(
        f"http://{s.addr}/bc/{channel}", data=json.dumps(data).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202
        return json.loads(r.read())["seq"]


def test_broadcast_subscription_survives_three_reloads(make_sigma):
    s = make_sigma(BASE + route("/bc", "&broadcast"))
    with connect(s.url("/bc"), open_timeout=10, close_timeout=2) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": "open:py"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        configs = [
            BASE + route("/bc", "&broadcast") + route("/more", "&echo"),
            BASE + route("/bc", "&broadcast", auth="optional") + route("/more", "&echo"),
            BASE.replace('head_timeout = "5s"', 'head_timeout = "6s"')
            + route("/bc", "&broadcast", auth="optional"),
        ]
        sent = []
        for i in range(len(configs) + 1):
            if i > 0:
                reload(s, configs[i - 1])
            for k in range(3):
                data = {"round": i, "k": k}
                sent.append((publish(s, "open:py", data), data))
        got = []
        for _ in sent:
            m = json.loads(ws.recv(timeout=10))
            assert m["type"] == "message" and m["channel"] == "open:py", m
            got.append((m["seq"], m["data"]))
        assert got == sent
        assert [g[0] for g in got] == list(range(got[0][0], got[0][0] + len(got)))
        # The same socket, never reconnected, still publishes and receives.
        ws.send(json.dumps({"type": "publish", "channel": "open:py", "data": "own"}))
        m = json.loads(ws.recv(timeout=10))
        assert (m["data"], m["seq"]) == ("own", got[-1][0] + 1)
    assert reloads(s) == (3, 0)


def test_removed_route_closes_its_websocket_with_1001_and_bad_config_is_kept_out(make_sigma):
    s = make_sigma(BASE + route("/gone", "&echo") + route("/stays", "&echo"))
    with connect(s.url("/gone"), open_timeout=10, close_timeout=2) as gone, \
            connect(s.url("/stays"), open_timeout=10, close_timeout=2) as stays:
        reload(s, "no_such_key = 1\n" + BASE, ok=False)
        gone.send("still here")
        assert gone.recv(timeout=10) == "still here"
        reload(s, BASE + route("/stays", "&echo"))
        with pytest.raises(ConnectionClosed) as closed:
            gone.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        stays.send("after")
        assert stays.recv(timeout=10) == "after"
