"""The upstream reverse proxy (DESIGN §6, issue #6; docs/proxy.md), over real sockets.

A real upstream runs in the test process (a threaded `http.server` and a
`websockets` echo server, on 127.0.0.1); sigma is started with routes to it.
The upstream records what it received, so the tests check what sigma set and
removed. No sleeps: timeouts are sigma's own (300 ms read_timeout), and every
wait is a socket read with a deadline.
"""
import asyncio
import base64
import hashlib
import hmac
import http.client
import http.server
import json
import queue
import re
import socket
import tempfile
import threading
import time

import pytest
import websockets

from helpers_auth import AuthSigma

USERS = {"alice": "alice-password-1"}
BIG = 20 * 1024 * 1024
JWT_SECRET = b"proxy-test-shared-secret-0123456789abcdef"
JWT_ISSUER = "proxy-test"


def bearer(user):
    """An `Authorization` value: an HS256 token of the test issuer for `user`."""
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"iss": JWT_ISSUER, "aud": "sigma-proxy-test", "sub": user,
              "exp": int(time.time()) + 600}
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(JWT_SECRET, head + b"." + body, hashlib.sha256).digest())
    return "Bearer " + (head + b"." + body + b"." + sig).decode()


class Upstream:
    """A threaded HTTP upstream; `behaviour(handler)` answers each request."""

    def __init__(self):
        self.seen = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def read_body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    total = 0
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return total
                        total += len(self.rfile.read(size))
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length", "0"))
                got = 0
                while got < n:
                    chunk = self.rfile.read(min(65536, n - got))
                    if not chunk:
                        break
                    got += len(chunk)
                return got

            def handle_one(self):
                size = self.read_body()
                outer.seen.append({"path": self.path, "method": self.command,
                                   "headers": list(self.headers.items()), "body_len": size})
                path = self.path
                if path.startswith("/base/slow"):
                    self.rfile.read(1)  # never answers; sigma's read_timeout fires
                    return
                if path.startswith("/base/big"):
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    piece = b"x" * 65536
                    for _ in range(BIG // len(piece)):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                if path.startswith("/base/cookies"):
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.send_header("Set-Cookie", "sigma_session=planted; Path=/; HttpOnly")
                    self.send_header("Set-Cookie", "sigma_oauth=planted; Path=/auth")
                    self.send_header("Set-Cookie", "app=1; Path=/")
                    self.end_headers()
                    return
                if path.startswith("/base/truncated"):
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"only ten b")
                    self.close_connection = True
                    return
                ident = dict((k.lower(), v) for k, v in self.headers.items()).get("x-sigma-identity", "")
                body = json.dumps({"path": path, "body_len": size}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "keep-alive, X-Hop")
                self.send_header("X-Hop", "secret")
                self.send_header("Keep-Alive", "timeout=5")
                self.send_header("Proxy-Authenticate", "Basic")
                self.send_header("X-Kept", "yes")
                if "/echo-right" in path:
                    self.send_header("X-Sigma-Identity", ident)
                elif "/echo-wrong" in path:
                    self.send_header("X-Sigma-Identity", "v1.forged")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = handle_one

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class WsUpstream:
    """A `websockets` echo server that records the handshake headers."""

    def __init__(self):
        self.headers = []
        self.closed = []
        self.closes = queue.Queue()  # (path, code, reason) of each socket
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def echo(ws):
            self.headers.append(dict((k.lower(), v) for k, v in ws.request.headers.raw_items()))
            try:
                async for m in ws:
                    if m == "bye":
                        await ws.close(4001, "bye from upstream")
                        break
                    if m == "big":
                        # Over sigma's [websocket] max_frame and max_message.
                        await ws.send("x" * 300000)
                        continue
                    await ws.send(m)
            except websockets.ConnectionClosed:
                pass  # a close code other than 1000/1001
            finally:
                self.closed.append(ws.close_code)
                self.closes.put((ws.request.path, ws.close_code, ws.close_reason))

        def respond(connection, request, response):
            # For echo_identity: `/echo-right` answers with the identity it
            # was sent, `/echo-wrong` with a forged one, others with none.
            if "/echo-right" in request.path:
                response.headers["X-Sigma-Identity"] = request.headers.get("X-Sigma-Identity", "")
            elif "/echo-wrong" in request.path:
                response.headers["X-Sigma-Identity"] = "v1.forged"
            return response

        async def main():
            self.stop_event = asyncio.Event()
            async with websockets.serve(echo, "127.0.0.1", 0, process_response=respond) as srv:
                self.port = srv.sockets[0].getsockname()[1]
                self.ready.set()
                await self.stop_event.wait()

        self.loop.run_until_complete(main())

    def stop(self):
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(5)


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def env():
    up = Upstream()
    wsup = WsUpstream()
    keys = tempfile.TemporaryDirectory()
    key_file = f"{keys.name}/jwt.secret"
    with open(key_file, "wb") as f:
        f.write(JWT_SECRET)
    config = f"""
[[auth.jwt]]
issuer = "{JWT_ISSUER}"
audience = "sigma-proxy-test"
algorithm = "HS256"
key_file = "{key_file}"

[http]
head_timeout = "5s"
max_body = 67108864

[websocket]
max_frame = 65536
max_message = 262144

[[route]]
path = "/api"
to = "http://127.0.0.1:{up.port}/base"
read_timeout = "300ms"
auth = "optional"

[[route]]
path = "/open"
to = "http://127.0.0.1:{up.port}/base"
auth = "none"

[[route]]
path = "/small"
to = "http://127.0.0.1:{up.port}/base"
max_body = 1000
auth = "optional"

[[route]]
path = "/strict"
to = "http://127.0.0.1:{up.port}/base"
echo_identity = true
auth = "optional"

[[route]]
path = "/down"
to = "http://127.0.0.1:{closed_port()}"
auth = "optional"

[[route]]
path = "/wsup"
to = "http://127.0.0.1:{wsup.port}"
auth = "optional"

[[route]]
path = "/wsstrict"
to = "http://127.0.0.1:{wsup.port}"
echo_identity = true
auth = "optional"

[[route]]
path = "/wsdown"
to = "http://127.0.0.1:{closed_port()}"
auth = "optional"

[[route]]
path = "/admin"
to = "http://127.0.0.1:{up.port}/admin"
auth = "required"

[[route]]
path = "/"
to = "http://127.0.0.1:{up.port}"
auth = "optional"
"""
    s = AuthSigma(config, USERS)
    yield s, up, wsup
    s.stop()
    up.stop()
    wsup.stop()
    keys.cleanup()


def get(s, method, path, headers=None, body=None):
    c = http.client.HTTPConnection(s.host, s.port, timeout=20)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def last_headers(up):
    return [(k.lower(), v) for k, v in up.seen[-1]["headers"]]


def test_identity_headers_are_set_by_sigma_only(env):
    s, up, _ = env
    forged = {"X-Sigma-User": "admin", "X_Sigma_User": "admin", "x-sigma-identity": "v1.forged",
              "X-Sigma-Provider": "root", "X-Forwarded-For": "6.6.6.6"}
    st, _, body = get(s, "GET", "/api/x?q=1", headers=forged)
    assert st == 200, body
    assert json.loads(body)["path"] == "/base/x?q=1"
    h = last_headers(up)
    sigma = [(k, v) for k, v in h if k.replace("_", "-").startswith("x-sigma-")]
    assert sigma == [("x-sigma-identity", "null")], h
    assert ("x-forwarded-for", "127.0.0.1") in h and ("x-forwarded-proto", "http") in h
    assert dict(h)["host"] == f"127.0.0.1:{up.port}"

    headers = dict(forged, Cookie=s.cookie("alice") + "; app=1")
    st, _, body = get(s, "GET", "/api/y", headers=headers)
    assert st == 200, body
    h = last_headers(up)
    assert dict(h)["cookie"] == "app=1"  # sigma's session cookie stays with sigma
    sigma = dict((k, v) for k, v in h if k.replace("_", "-").startswith("x-sigma-"))
    assert sigma["x-sigma-user"] == "alice"
    assert sigma["x-sigma-provider"] == "password"
    assert sigma["x-sigma-identity"].startswith("v1.")
    assert set(sigma) == {"x-sigma-user", "x-sigma-provider", "x-sigma-identity"}, h
    assert [k for k, _ in h].count("x-sigma-user") == 1


def test_hop_by_hop_headers_are_removed_both_ways(env):
    s, up, _ = env
    st, headers, _ = get(s, "GET", "/api/hop", headers={
        "Connection": "X-Client-Hop", "X-Client-Hop": "1", "TE": "trailers",
        "Proxy-Authorization": "Basic x", "X-End": "kept"})
    assert st == 200
    h = dict(last_headers(up))
    for gone in ("x-client-hop", "te", "proxy-authorization"):
        assert gone not in h, h
    assert h["x-end"] == "kept"
    for gone in ("x-hop", "keep-alive", "proxy-authenticate"):
        assert gone not in headers, headers
    assert headers["x-kept"] == "yes"
    assert "x-sigma-identity" not in headers


def test_echo_identity(env):
    s, up, _ = env
    for path in ("/strict/plain", "/strict/echo-wrong"):
        st, _, body = get(s, "GET", path)
        assert st == 502, (path, st)
        assert b"body_len" not in body
    st, headers, body = get(s, "GET", "/strict/echo-right", headers={"Cookie": s.cookie("alice")})
    assert st == 200, body
    assert json.loads(body)["path"] == "/base/echo-right"
    assert "x-sigma-identity" not in headers
    st, _, metrics = get(s, "GET", "/metrics")
    assert st == 200
    count = [l for l in metrics.decode().splitlines() if l.startswith("sigma_identity_mismatch_total")]
    assert count and int(count[0].split()[-1]) >= 2, count


def test_upstream_down_is_502_and_slow_is_504(env):
    s, _, _ = env
    st, _, body = get(s, "GET", "/down/x")
    assert st == 502 and b"refused" not in body.lower()
    st, _, _ = get(s, "GET", "/api/slow")
    assert st == 504


def test_large_response_streams_with_bounded_memory(env):
    s, _, _ = env
    base = rss_kib(s.proc.pid)
    c = http.client.HTTPConnection(s.host, s.port, timeout=30)
    c.request("GET", "/api/big")
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Transfer-Encoding") == "chunked"
    total = 0
    peak = 0
    while True:
        chunk = r.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        peak = max(peak, rss_kib(s.proc.pid))
    c.close()
    assert total == BIG
    # sigma never held the body: its memory grew far less than 20 MiB.
    assert peak - base < 12 * 1024, (base, peak)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_large_request_body_streams_to_the_upstream(env):
    s, up, _ = env
    size = 24 * 1024 * 1024

    def gen():
        piece = b"y" * 65536
        for _ in range(size // len(piece)):
            yield piece

    c = http.client.HTTPConnection(s.host, s.port, timeout=30)
    c.request("POST", "/api/upload", body=gen(), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    body = r.read()
    c.close()
    assert r.status == 200, body
    assert json.loads(body)["body_len"] == size
    assert up.seen[-1]["body_len"] == size


def test_route_max_body_still_applies(env):
    s, _, _ = env
    st, _, _ = get(s, "POST", "/small/x", body=b"z" * 2000)
    assert st == 413


def test_websocket_through_the_proxy_echoes(env):
    s, _, wsup = env

    async def go():
        async with websockets.connect(s.url("/wsup/chat"), additional_headers={"X-Sigma-User": "admin"}) as ws:
            await ws.send("hello upstream")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello upstream"
            await ws.send(b"\x00\x01")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x01"

    asyncio.run(go())
    h = wsup.headers[-1]
    assert h["x-sigma-identity"] == "null"
    assert "x-sigma-user" not in h


def test_websocket_upstream_down_refuses_the_upgrade_with_502(env):
    s, _, _ = env

    async def go():
        with pytest.raises(websockets.InvalidStatus) as e:
            async with websockets.connect(s.url("/wsdown/x")):
                pass
        return e.value.response.status_code

    assert asyncio.run(go()) == 502


def test_chunked_body_over_route_max_body_is_413(env):
    s, _, _ = env

    def gen():
        for _ in range(4):
            yield b"z" * 600

    c = http.client.HTTPConnection(s.host, s.port, timeout=20)
    c.request("POST", "/small/x", body=gen(), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 413


def test_truncated_upstream_body_is_not_passed_off_as_whole(env):
    s, _, _ = env
    c = http.client.HTTPConnection(s.host, s.port, timeout=20)
    c.request("GET", "/api/truncated")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Length") == "1000"
    with pytest.raises(http.client.IncompleteRead):
        r.read()
    c.close()


def test_pipelined_requests_keep_their_order_and_head_has_no_body(env):
    s, _, _ = env
    sock = socket.create_connection((s.host, s.port), timeout=20)
    reqs = (b"GET /api/first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /api/second HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /api/third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    sock.sendall(reqs)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    text = data.decode()
    assert text.count("HTTP/1.1 200 OK") == 4, text
    first = text.index('"/base/first"')
    third = text.index('"/base/third"')
    assert first < text.index("ok\n") < third
    assert '"/base/second"' not in text  # HEAD: no body


def test_pipelined_uploads_each_arrive_whole(env):
    s, _, _ = env
    size = 2 * 1024 * 1024
    sock = socket.create_connection((s.host, s.port), timeout=30)
    one = b"POST /api/up1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + b"a" * size
    two = b"POST /api/up2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size + b"b" * size
    sent = threading.Thread(target=lambda: sock.sendall(one + two))
    sent.start()
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sent.join(30)
    sock.close()
    bodies = [json.loads(m) for m in re.findall(rb"\{[^}]*\}", data)]
    assert bodies == [{"path": "/base/up1", "body_len": size}, {"path": "/base/up2", "body_len": size}], data[:500]


def test_websocket_close_propagates_both_ways(env):
    s, _, wsup = env

    async def upstream_closes():
        async with websockets.connect(s.url("/wsup/a")) as ws:
            await ws.send("bye")
            with pytest.raises(websockets.ConnectionClosed) as e:
                await asyncio.wait_for(ws.recv(), 10)
            return e.value.rcvd.code, e.value.rcvd.reason

    assert asyncio.run(upstream_closes()) == (4001, "bye from upstream")

    before = len(wsup.closed)

    async def client_closes():
        async with websockets.connect(s.url("/wsup/b")) as ws:
            await ws.send("ping")
            assert await asyncio.wait_for(ws.recv(), 10) == "ping"
        # The upstream socket closes too: poll with a deadline.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(wsup.closed) <= before and loop.time() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(client_closes())
    assert len(wsup.closed) > before


def rejections(s, reason):
    st, _, metrics = get(s, "GET", "/metrics")
    assert st == 200
    line = [l for l in metrics.decode().splitlines()
            if l.startswith(f'sigma_rejections_total{{reason="{reason}"}}')]
    return int(line[0].split()[-1]) if line else 0


def test_ambiguous_paths_are_refused_before_routing(env):
    """Route lookup, A's admission and the upstream see one path: one that
    could be read two ways (`/x/../admin/u` matches `/`, most upstreams
    serve `/admin/u`) is refused with 400 and never forwarded."""
    s, up, _ = env
    before = len(up.seen)
    refused = rejections(s, "invalid_path")
    bad = ["/x/../admin/u", "/x/%2e%2e/admin/u", "/x/.%2E/admin/u", "/x/..;/admin/u",
           "/api/../z", "/api/%2E%2E/z", "/api//x", "/x/./admin/u", "/api/a%00b",
           "/api/a\\b", "/api/a%zz", "/admin#/x"]
    for path in bad:
        st, _, body = get(s, "GET", path)
        assert st == 400, (path, st, body)
        assert json.loads(body)["error"] == "invalid_path", body
        assert json.loads(body)["message"], body
    assert len(up.seen) == before, up.seen[before:]
    assert rejections(s, "invalid_path") >= refused + len(bad)
    # Another spelling of /admin is /admin: its rule applies.
    for path in ["/admin/u", "/%61dmin/u", "/%61%64%6D%69%6E/u"]:
        st, _, _ = get(s, "GET", path)
        assert st == 401, path
    assert len(up.seen) == before
    # The upstream gets the normalised path (unreserved escapes decoded,
    # the others upper-cased) and the query exactly as sent.
    st, _, body = get(s, "GET", "/api/%7Euser/caf%c3%a9/%41?q=%2e%2e//x")
    assert st == 200, body
    assert json.loads(body)["path"] == "/base/~user/caf%C3%A9/A?q=%2e%2e//x"
    st, _, body = get(s, "GET", "/%61pi/x")
    assert st == 200 and json.loads(body)["path"] == "/base/x", body
    st, _, body = get(s, "GET", "/admin/u", headers={"Cookie": s.cookie("alice")})
    assert st == 200 and json.loads(body)["path"] == "/admin/u", body


def test_encoded_separators_never_reach_an_upstream(env):
    """An upstream that decodes `%2F` / `%5C` before routing would see other
    segments than sigma routed on: such paths are refused (400)."""
    s, up, _ = env
    before = len(up.seen)
    for path in ["/api/a%2Fb", "/api/a%2fb", "/api/..%2Fadmin", "/api/a%5Cb", "/x%2F..%2Fadmin/u"]:
        st, _, body = get(s, "GET", path)
        assert st == 400, (path, st, body)
    assert len(up.seen) == before

    async def go():
        with pytest.raises(websockets.InvalidStatus) as e:
            async with websockets.connect(s.url("/wsup/a%2Fb")):
                pass
        return e.value.response.status_code

    assert asyncio.run(go()) == 400


def test_oversize_upstream_message_closes_the_client_with_1009(env):
    """The upstream is held to sigma's [websocket] limits (not the client
    library's 64 MiB default): over them, the client's socket closes 1009."""
    s, _, wsup = env
    before = len(wsup.closed)

    async def go():
        async with websockets.connect(s.url("/wsup/big"), max_size=None) as ws:
            await ws.send("small")
            assert await asyncio.wait_for(ws.recv(), 10) == "small"
            await ws.send("big")
            with pytest.raises(websockets.ConnectionClosed) as e:
                while True:
                    m = await asyncio.wait_for(ws.recv(), 10)
                    assert len(m) < 300000, "the oversize message got through"
            return e.value.rcvd.code

    assert asyncio.run(go()) == 1009


def mismatches(s):
    st, _, metrics = get(s, "GET", "/metrics")
    assert st == 200
    line = [l for l in metrics.decode().splitlines() if l.startswith("sigma_identity_mismatch_total")]
    return int(line[0].split()[-1])


def test_echo_identity_applies_to_websocket_upgrades(env):
    """With echo_identity, the upstream's 101 must carry the X-Sigma-Identity
    it was sent, or the client's upgrade is refused (502, identity_mismatch)."""
    s, _, wsup = env
    before = mismatches(s)

    async def refused(path):
        with pytest.raises(websockets.InvalidStatus) as e:
            async with websockets.connect(s.url(path)):
                pass
        return e.value.response.status_code

    async def echoes(path, headers=None):
        async with websockets.connect(s.url(path), additional_headers=headers or {}) as ws:
            await ws.send("hi")
            return await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(refused("/wsstrict/plain")) == 502
    assert asyncio.run(refused("/wsstrict/echo-wrong")) == 502
    assert mismatches(s) == before + 2
    assert asyncio.run(echoes("/wsstrict/echo-right")) == "hi"
    alice = {"Cookie": s.cookie("alice"), "Origin": s.origin}
    assert asyncio.run(echoes("/wsstrict/echo-right", alice)) == "hi"
    assert wsup.headers[-1]["x-sigma-user"] == "alice"
    assert mismatches(s) == before + 2


def test_user_names_are_encoded_unambiguously(env):
    """X-Sigma-User is percent-encoded with `%` itself encoded, so two
    names never give the same header (`zoë` and the name `zo%C3%AB`)."""
    s, up, _ = env
    for user, sent in [("zoë", "zo%C3%AB"), ("zo%C3%AB", "zo%25C3%25AB"),
                       ("a b+c", "a%20b+c"), ("100%", "100%25"), ("bob", "bob")]:
        st, _, body = get(s, "GET", "/api/who", headers={"Authorization": bearer(user)})
        assert st == 200, (user, body)
        h = dict(last_headers(up))
        assert h["x-sigma-user"] == sent, (user, h)
        assert h["x-sigma-provider"] == f"jwt:{JWT_ISSUER}"


def test_sigma_credentials_do_not_cross_the_proxy(env):
    """The bearer token A authenticated with is not forwarded (the upstream
    could replay it); an Authorization A did not read is. An upstream cannot
    set sigma's session or OAuth state cookie on the client."""
    s, up, wsup = env
    token = bearer("carol")
    st, _, body = get(s, "GET", "/api/creds", headers={"Authorization": token})
    assert st == 200, body
    h = dict(last_headers(up))
    assert "authorization" not in h, h
    assert h["x-sigma-user"] == "carol"
    # auth = "none": A does not authenticate, the header is the upstream's.
    st, _, _ = get(s, "GET", "/open/creds", headers={"Authorization": "Basic dXA6c3RyZWFt"})
    assert st == 200
    assert dict(last_headers(up))["authorization"] == "Basic dXA6c3RyZWFt"
    # sigma's OAuth state cookie stays with sigma, like the session.
    st, _, _ = get(s, "GET", "/api/creds", headers={"Cookie": "sigma_oauth=st; app=2"})
    assert st == 200 and dict(last_headers(up))["cookie"] == "app=2"

    async def ws_as(headers):
        async with websockets.connect(s.url("/wsup/creds"), additional_headers=headers) as ws:
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), 10) == "x"

    asyncio.run(ws_as({"Authorization": token}))
    h = wsup.headers[-1]
    assert "authorization" not in h, h
    assert h["x-sigma-user"] == "carol"
    assert h["x-forwarded-for"] == "127.0.0.1"

    # Set-Cookie of sigma's cookies from the upstream: dropped.
    c = http.client.HTTPConnection(s.host, s.port, timeout=20)
    c.request("GET", "/api/cookies")
    r = c.getresponse()
    r.read()
    cookies = [v for k, v in r.getheaders() if k.lower() == "set-cookie"]
    c.close()
    assert r.status == 200
    assert cookies == ["app=1; Path=/"], cookies


class Sink:
    """An upstream that accepts connections and never reads from them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def stop(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_upstream_that_stops_reading_the_body_is_504_not_408():
    """When the upstream stops taking a request body, sigma stops reading the
    client; H's minimum body rate must not then blame the client (408): the
    proxy's read_timeout answers 504. Without the pause, the rate deadline
    (2 s grace + a few MB at 100 MB/s) comes before read_timeout (3 s)."""
    sink = Sink()
    s = AuthSigma(f"""
[http]
max_body = 1073741824
body_rate_grace = "2s"
body_min_rate = 104857600

[[route]]
path = "/sink"
to = "http://127.0.0.1:{sink.port}"
read_timeout = "3s"
auth = "optional"
""", USERS)
    try:
        c = socket.create_connection((s.host, s.port), timeout=20)
        size = 1 << 30
        c.sendall(b"POST /sink/up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)

        def send():
            piece = b"z" * 65536
            try:
                for _ in range(size // len(piece)):
                    c.sendall(piece)
            except OSError:
                pass

        threading.Thread(target=send, daemon=True).start()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(4096)  # the socket's timeout is the deadline
            assert chunk, head
            head += chunk
        c.close()
        assert head.startswith(b"HTTP/1.1 504"), head
        assert rejections(s, "body_too_slow") == 0
    finally:
        s.stop()
        sink.stop()


def close_of(wsup, path):
    """The (code, reason) the upstream socket at `path` closed with."""
    while True:
        p, code, reason = wsup.closes.get(timeout=10)
        if p == path:
            return code, reason


def test_client_close_code_reaches_the_upstream(env):
    """The client's close code and reason are passed to the upstream (not
    1005/1011), as the upstream's are to the client."""
    s, _, wsup = env

    async def closes(path, code, reason):
        async with websockets.connect(s.url(path)) as ws:
            await ws.send("ping")
            assert await asyncio.wait_for(ws.recv(), 10) == "ping"
            await ws.close(code, reason)

    asyncio.run(closes("/wsup/close-4002", 4002, "bye from client"))
    assert close_of(wsup, "/close-4002") == (4002, "bye from client")
    asyncio.run(closes("/wsup/close-1000", 1000, ""))
    assert close_of(wsup, "/close-1000") == (1000, "")


def test_forwarded_proto_is_https_behind_tls():
    """With secure cookies (a TLS terminator in front) the upstream is told
    X-Forwarded-Proto: https, over HTTP and on WebSocket handshakes."""
    up = Upstream()
    wsup = WsUpstream()
    s = AuthSigma(f"""
[auth]
cookie_secure = true

[[route]]
path = "/api"
to = "http://127.0.0.1:{up.port}/base"
auth = "optional"

[[route]]
path = "/wsup"
to = "http://127.0.0.1:{wsup.port}"
auth = "optional"
""", USERS)
    try:
        st, _, _ = get(s, "GET", "/api/x")
        assert st == 200
        assert dict(last_headers(up))["x-forwarded-proto"] == "https"

        async def go():
            async with websockets.connect(s.url("/wsup/x")) as ws:
                await ws.send("a")
                assert await asyncio.wait_for(ws.recv(), 10) == "a"

        asyncio.run(go())
        assert wsup.headers[-1]["x-forwarded-proto"] == "https"
    finally:
        s.stop()
        up.stop()
        wsup.stop()


def test_sigmas_own_paths_are_never_forwarded(env):
    """Paths sigma keeps for itself (`/auth/...` that A does not serve,
    /healthz and /metrics with another method) are not proxied, even by
    a `/` route: they used to go through a whole-body path that claimed
    X-Forwarded-For 127.0.0.1 for every client."""
    s, up, _ = env
    before = len(up.seen)
    for method, path in [("GET", "/auth/nope"), ("POST", "/auth/x/y"), ("POST", "/metrics"),
                         ("PUT", "/healthz")]:
        st, _, _ = get(s, method, path, body=b"x" if method != "GET" else None)
        assert st == 404, (method, path, st)
    assert len(up.seen) == before, up.seen[before:]
    st, _, body = get(s, "GET", "/anything")
    assert st == 200 and json.loads(body)["path"] == "/anything"
