"""World budgets per user (DESIGN §5 step 3, issue #13) over real sockets.

The world limit, the fork rate and the set of used fork cookies belong to
the user — across all of its login sessions, bearer tokens and session
sockets — so neither a second login, a bearer token from /auth/token nor a
reconnect buys more, and one user exhausting its budget leaves every other
user alone. A world key is active at most once on the whole server. One
sigma process with small limits; each test takes users of its own (the
budgets are per user, and kept past a user's last socket), so no test
spends another's.
"""
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from helpers_auth import AuthSigma
from test_worlds import Client, open_connections

POOL = [f"user{n}" for n in range(16)]

# Cookies open for 60 s to 120 s and used ones are remembered as long, so
# nothing in a test rotates away.
CONFIG = """
[auth]
login_per_ip_per_minute = 1000
login_per_user_per_minute = 1000

[worlds]
activation_timeout = "5s"
max_per_user = 3
forks_per_minute = 5
max_used_per_user = 4
key_rotation = "60s"
"""


@pytest.fixture(scope="module")
def tight():
    s = AuthSigma(CONFIG, {u: f"{u}-password" for u in POOL})
    s.fresh = iter(POOL)
    yield s
    s.stop()


def fresh(hub):
    """A user no other test has used: a full budget."""
    return next(hub.fresh)


def token(hub, user):
    """A bearer token from /auth/token, for a fresh login of `user`."""
    status, _, body = hub.request(
        "POST", "/auth/token", body="{}",
        headers={"Content-Type": "application/json", "Origin": hub.origin,
                 "Cookie": hub.login(user)})
    assert status == 200, body
    return json.loads(body)["token"]


def reason(reply):
    assert reply["type"] == "fork-refused", reply
    return reply["reason"]


def error(body):
    return json.loads(body)["error"]


def wait_closed(hub, c):
    """Closes `c`, the only socket open, and waits until the server let go
    of it (only the metrics request itself is open)."""
    c.close()
    deadline = time.monotonic() + 5
    while open_connections(hub) > 1:
        assert time.monotonic() < deadline, "socket still open on the server"
        time.sleep(0.02)


def test_fork_limit_and_rate_on_one_socket(tight):
    c = Client(tight, fresh(tight))
    c.hello()
    started = [c.start() for _ in range(3)]  # three forks, three worlds
    assert reason(c.fork()[2]) == "limit"    # a limit refusal spends no token
    c.send(type="disconnect", world=started[0][1])
    assert c.recv()["type"] == "disconnect"
    assert c.fork()[2]["type"] == "fork-cookie"  # the fourth
    assert c.fork()[2]["type"] == "fork-cookie"  # the fifth
    assert reason(c.fork()[2]) == "rate"
    c.close()


def test_sessions_and_tokens_of_one_user_share_its_limit_and_rate(tight):
    # max_per_user = 3, forks_per_minute = 5, over two cookie sessions and
    # a bearer token of one user: together, not each.
    user = fresh(tight)
    a = Client(tight, user)
    b = Client(tight, user)
    t = Client(tight, user, token=token(tight, user))
    for c in (a, b, t):
        c.hello()
    _, wa = a.start()
    b.start()
    kt, wt_, rt = t.fork()                   # three forks so far
    status, _, body = t.initiate(kt, wt_, "echo", rt["cookie"])
    assert status == 200, body               # three worlds, one per socket
    # The fourth world: refused on every socket, whichever session.
    for c in (a, b, t):
        assert reason(c.fork()[2]) == "limit"
    a.send(type="disconnect", world=wa)
    assert a.recv()["type"] == "disconnect"
    k4, w4, r4 = t.fork()                    # the fourth fork
    assert r4["type"] == "fork-cookie", r4
    assert b.fork()[2]["type"] == "fork-cookie"  # the fifth
    # Five forks for the user: every session and the token are out.
    for c in (a, b, t):
        assert reason(c.fork()[2]) == "rate"
    # A new login and a new token of the same user bring nothing either.
    fresh_login = Client(tight, user)
    fresh_token = Client(tight, user, token=token(tight, user))
    for c in (fresh_login, fresh_token):
        c.hello()
        assert reason(c.fork()[2]) == "rate"
    # Another user is not affected.
    other = Client(tight, fresh(tight))
    other.hello()
    other.start()
    for c in (a, b, t, fresh_login, fresh_token, other):
        c.close()


def test_racing_initiates_on_sessions_of_one_user_stay_within_the_limit(tight):
    # Five cookies (the rate) forked on three sockets of one user (two
    # logins and a bearer token), all initiated at once: three worlds.
    user = fresh(tight)
    socks = [Client(tight, user), Client(tight, user),
             Client(tight, user, token=token(tight, user))]
    for c in socks:
        c.hello()
    forks = [(c, *c.fork()) for c in (socks * 2)[:5]]
    assert all(reply["type"] == "fork-cookie" for _, _, _, reply in forks)
    barrier = threading.Barrier(len(forks))

    def go(f):
        c, key, world, reply = f
        barrier.wait()
        status, _, body = c.initiate(key, world, "echo", reply["cookie"])
        return status if status == 200 else (status, error(body))

    with ThreadPoolExecutor(len(forks)) as pool:
        results = list(pool.map(go, forks))
    assert sorted(results, key=str) == sorted([200] * 3 + [(429, "world_limit")] * 2,
                                              key=str), results
    for c in socks:
        c.close()


def test_reconnecting_does_not_refill_the_fork_budget(tight):
    user = fresh(tight)
    c = Client(tight, user)
    c.hello()
    for _ in range(5):
        assert c.fork()[2]["type"] == "fork-cookie"
    wait_closed(tight, c)
    # No socket of the user is open now; its budget is kept all the same.
    for again in (Client(tight, user), Client(tight, user, token=token(tight, user))):
        again.hello()
        assert reason(again.fork()[2]) == "rate"
        again.close()


def test_a_user_that_fills_its_used_cookies_is_refused_alone(tight):
    # max_used_per_user = 4: four worlds started within a key's life, then
    # the user's initiates get 429 (its own set is full); another user's
    # forks and initiates go on.
    user = fresh(tight)
    c = Client(tight, user)
    c.hello()
    forks = [c.fork() for _ in range(5)]
    assert all(r["type"] == "fork-cookie" for _, _, r in forks)
    for key, world, reply in forks[:4]:
        status, _, body = c.initiate(key, world, "echo", reply["cookie"])
        assert status == 200, body
        c.send(type="disconnect", world=world)
        assert c.recv()["type"] == "disconnect"
    key, world, reply = forks[4]
    status, hdrs, body = c.initiate(key, world, "echo", reply["cookie"])
    assert (status, error(body)) == (429, "world_rate")
    assert int(hdrs["retry-after"]) >= 1
    # Replays of the used ones are still refused.
    key, world, reply = forks[0]
    status, _, body = c.initiate(key, world, "echo", reply["cookie"])
    assert (status, error(body)) == (409, "replayed")
    # Another user: a budget and a set of its own.
    other = Client(tight, fresh(tight))
    other.hello()
    for _ in range(3):
        other.start()
    c.close()
    other.close()


def test_a_world_key_is_not_active_on_two_sockets_nor_for_two_users(tight):
    alice, bob = fresh(tight), fresh(tight)
    a1, a2, b = Client(tight, alice), Client(tight, alice), Client(tight, bob)
    for c in (a1, a2, b):
        c.hello()
    key = Ed25519PrivateKey.generate()
    # Cookies for one key on three sockets, before it is active anywhere.
    replies = {}
    for name, c in (("a1", a1), ("a2", a2), ("b", b)):
        _, world, reply = c.fork(key=key)
        assert reply["type"] == "fork-cookie", reply
        replies[name] = reply["cookie"]
    status, _, body = a1.initiate(key, world, "echo", replies["a1"])
    assert status == 200, body
    # Active on a1: another socket of the same user and another user are
    # refused, at fork and at initiate.
    for c in (a2, b):
        assert reason(c.fork(key=key)[2]) == "active"
    for name, c in (("a2", a2), ("b", b)):
        status, _, body = c.initiate(key, world, "echo", replies[name])
        assert (status, error(body)) == (409, "already_active")
    # Only a1 has the world: a message signed by the key goes nowhere on b.
    b.say(key, world, "not yours")
    assert "world" in b.recv()["message"]
    a1.say(key, world, "mine")
    assert a1.recv()["body"] == "mine"
    # a1's socket closes: the key is released, and bob's cookie (not spent
    # by the refusal) starts the world on his socket.
    a1.close()
    deadline = time.monotonic() + 5
    while True:
        status, _, body = b.initiate(key, world, "echo", replies["b"])
        if status == 200:
            break
        assert (status, error(body)) == (409, "already_active")
        assert time.monotonic() < deadline, "key not released"
        time.sleep(0.02)
    b.say(key, world, "now bob's")
    assert b.recv()["body"] == "now bob's"
    assert reason(a2.fork(key=key)[2]) == "active"
    a2.close()
    b.close()


def test_racing_initiates_of_one_key_for_two_users_start_it_once(tight):
    # Rounds of two users, each with a cookie for the same key, initiating
    # at the same instant: exactly one world starts each round.
    alice, bob = fresh(tight), fresh(tight)
    a, b = Client(tight, alice), Client(tight, bob)
    a.hello()
    b.hello()
    for _ in range(3):
        key = Ed25519PrivateKey.generate()
        forks = [(c, *c.fork(key=key)) for c in (a, b)]
        assert all(r["type"] == "fork-cookie" for _, _, _, r in forks)
        barrier = threading.Barrier(2)

        def go(f):
            c, k, w, r = f
            barrier.wait()
            status, _, body = c.initiate(k, w, "echo", r["cookie"])
            return status if status == 200 else (status, error(body))

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(go, forks))
        assert sorted(results, key=str) == sorted([200, (409, "already_active")],
                                                  key=str), results
        winner = forks[results.index(200)]
        winner[0].send(type="disconnect", world=winner[2])
        assert winner[0].recv()["type"] == "disconnect"
    a.close()
    b.close()
