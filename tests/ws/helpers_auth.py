"""Logged-in clients for the WebSocket tests: a sigma process with users.

`AuthSigma` starts the release binary like conftest's `Sigma`, but first
creates users with `sigma user add NAME --password-stdin --data DIR`, so
tests can log in (`POST /login`, JSON) and open cookie-authenticated
WebSockets. Such upgrades are cross-site checked, so every request sends an
`Origin` equal to the server's own `http://HOST:PORT`.
"""
import base64
import http.client
import json
import os
import pathlib
import socket
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


def binary():
    return os.environ.get("TEST_SIGMA_BIN") or str(ROOT / "target" / "release" / "sigma")


class AuthSigma:
    def __init__(self, config: str, users: dict):
        self.dir = tempfile.TemporaryDirectory()
        base = pathlib.Path(self.dir.name)
        data = base / "data"
        self.passwords = dict(users)
        for name, password in users.items():
            subprocess.run(
                [binary(), "user", "add", name, "--password-stdin", "--data", str(data)],
                input=password + "\n", text=True, check=True, capture_output=True, timeout=60,
            )
        cfg = base / "sigma.toml"
        cfg.write_text(config)
        self._cmd = [binary(), "serve", "--config", str(cfg), "--pipeline", "T127.0.0.1:0[HA]",
                     "--data", str(data)]
        self.stderr_path = base / "stderr"
        self._cookies = {}
        self._start()

    def _start(self):
        self.proc = subprocess.Popen(
            self._cmd, stdout=subprocess.PIPE, stderr=open(self.stderr_path, "a"), text=True,
        )
        self.addr = None
        for line in self.proc.stdout:
            if line.startswith("listening on "):
                self.addr = line.split()[2]
                break
        assert self.addr, "sigma did not start: " + self.stderr_path.read_text()
        self.host, port = self.addr.rsplit(":", 1)
        self.port = int(port)
        self.origin = f"http://{self.addr}"

    def restart(self):
        """Kills the process and starts it again on the same data (a new
        port; the sessions survive in the store)."""
        self.proc.kill()
        self.proc.wait()
        self._start()

    def url(self, path):
        return f"ws://{self.addr}{path}"

    def request(self, method, path, body=None, headers=None):
        """One HTTP request; returns (status, headers dict, body bytes)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def login(self, user):
        """The `Cookie` header value of a fresh session of `user`."""
        status, headers, body = self.request(
            "POST", "/login",
            body=json.dumps({"user": user, "password": self.passwords[user]}),
            headers={"Content-Type": "application/json"},
        )
        assert status == 200, (status, body)
        assert json.loads(body) == {"user": user}
        return headers["set-cookie"].split(";", 1)[0]

    def cookie(self, user):
        """A session cookie of `user`, logged in once per server."""
        if user not in self._cookies:
            self._cookies[user] = self.login(user)
        return self._cookies[user]

    def ws_headers(self, user=None):
        """Headers for a WebSocket upgrade as `user` (None: anonymous)."""
        h = {"Origin": self.origin}
        if user:
            h["Cookie"] = self.cookie(user)
        return h

    def post_json(self, path, data, user=None, raw=None):
        headers = {"Content-Type": "application/json", "Origin": self.origin}
        if user:
            headers["Cookie"] = self.cookie(user)
        body = raw if raw is not None else json.dumps(data)
        status, _, out = self.request("POST", path, body=body, headers=headers)
        try:
            return status, json.loads(out)
        except ValueError:
            return status, out

    def stderr(self):
        return self.stderr_path.read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.dir.cleanup()


def raw_ws(sigma, path, user=None, rcvbuf=None, timeout=10):
    """A raw WebSocket (see rawws) opened as `user`, with a small receive
    buffer if asked: for clients that never read."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((sigma.host, sigma.port))
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in sigma.ws_headers(user).items())
    s.sendall(
        (f"GET {path} HTTP/1.1\r\nHost: {sigma.addr}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
         f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "closed during handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s
