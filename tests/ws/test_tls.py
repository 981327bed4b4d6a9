"""`S` with a real WebSocket client (DESIGN §2a, issue #16): Python
`websockets` over wss:// to sigma's `T127.0.0.1:0[SHA]`, certificates from
a test CA made with `cryptography`.

- echo over wss://;
- a certificate swapped (files rewritten, SIGHUP) under an open wss://
  connection: the open one keeps working, the next handshake gets the new
  certificate;
- with TLS on, the session cookie is `Secure` and same-origin means https://;
- https:// and wss:// upstreams (route `ca`, names checked).

Every wait polls a condition with a deadline; nothing sleeps to synchronise.
"""
import asyncio
import datetime
import hashlib
import http.client
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAME = "wss.test"


def binary():
    return os.environ.get("TEST_SIGMA_BIN") or str(ROOT / "target" / "release" / "sigma")


class Pki:
    def __init__(self, d: pathlib.Path):
        self.dir = d
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wss test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = name
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = d / "ca.pem"
        self.ca_path.write_bytes(self.ca.public_bytes(serialization.Encoding.PEM))

    def leaf(self, stem: str, names):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        c, k = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        # Written whole, then renamed into place (what a reload sees).
        for path, data in (
            (c, cert.public_bytes(serialization.Encoding.PEM)),
            (k, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return c, k

    def context(self):
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        return ctx


class TlsSigma:
    def __init__(self, names=(NAME,), config=None, pipeline="T127.0.0.1:0[SHA]", pki=None):
        self.tmp = tempfile.TemporaryDirectory()
        base = pathlib.Path(self.tmp.name)
        self.pki = pki or Pki(base)
        self.cert, self.key = self.pki.leaf(f"site-{id(self)}", list(names))
        cfg = base / "sigma.toml"
        if config is None:
            config = f'[tls]\ncert = "{self.cert}"\nkey = "{self.key}"\n'
        cfg.write_text(config)
        self.stderr_path = base / "stderr"
        self.proc = subprocess.Popen(
            [binary(), "serve", "--config", str(cfg), "--pipeline", pipeline,
             "--data", str(base / "data")],
            stdout=subprocess.PIPE, stderr=open(self.stderr_path, "w"), text=True,
        )
        self.password = None
        self.port = None
        for line in self.proc.stdout:
            if line.startswith("created user admin with password "):
                self.password = line.split()[-1]
            if line.startswith("listening on "):
                self.port = int(line.split()[2].rsplit(":", 1)[1])
                break
        assert self.port, "sigma did not start: " + self.stderr_path.read_text()

    def connect(self):
        """A TLS socket to sigma, verified against the test CA for NAME."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.pki.context().wrap_socket(raw, server_hostname=NAME)

    def fingerprint(self):
        with self.connect() as s:
            return hashlib.sha256(s.getpeercert(True)).hexdigest()

    def url(self, path="/echo"):
        return f"wss://{NAME}:{self.port}{path}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.tmp.cleanup()


@pytest.fixture
def tls_sigma():
    s = TlsSigma()
    yield s
    s.stop()


def ws_connect(s: TlsSigma, path="/echo", **kw):
    # The name resolves to the server by connecting the socket ourselves.
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    return websockets.connect(s.url(path), ssl=s.pki.context(), sock=sock,
                              server_hostname=NAME, **kw)


def test_wss_echo(tls_sigma):
    async def run():
        async with ws_connect(tls_sigma) as ws:
            await ws.send("hello over tls")
            assert await ws.recv() == "hello over tls"
            await ws.send(b"\x00\x01" * 5000)
            assert await ws.recv() == b"\x00\x01" * 5000
    asyncio.run(run())


def test_certificate_swapped_under_an_open_wss_connection(tls_sigma):
    before = tls_sigma.fingerprint()

    async def run():
        async with ws_connect(tls_sigma) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            tls_sigma.pki.leaf(f"site-{id(tls_sigma)}", [NAME])
            tls_sigma.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while tls_sigma.fingerprint() == before:
                assert time.monotonic() < deadline, "the new certificate is not served"
                await asyncio.sleep(0.05)
            # The open connection is untouched.
            for i in range(3):
                await ws.send(f"after {i}")
                assert await ws.recv() == f"after {i}"
    asyncio.run(run())
    # And a new wss:// connection verifies against the new certificate.
    async def again():
        async with ws_connect(tls_sigma) as ws:
            await ws.send("new")
            assert await ws.recv() == "new"
    asyncio.run(again())


def test_session_cookie_is_secure_with_tls(tls_sigma):
    assert tls_sigma.password, "no first-start admin password seen"
    c = http.client.HTTPSConnection("127.0.0.1", tls_sigma.port, timeout=10,
                                    context=tls_sigma.pki.context())
    # HTTPSConnection verifies the host it connects to: give it NAME's socket.
    c.sock = tls_sigma.connect()
    body = json.dumps({"user": "admin", "password": tls_sigma.password})
    c.request("POST", "/login", body=body, headers={
        "Host": f"{NAME}:{tls_sigma.port}", "Content-Type": "application/json", "Origin": f"https://{NAME}:{tls_sigma.port}"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    cookies = [v for k, v in r.getheaders() if k.lower() == "set-cookie"]
    assert cookies and all("Secure" in v for v in cookies), cookies
    # Same-origin is checked against https://: an http:// page on the
    # same host is another origin.
    c = http.client.HTTPSConnection("127.0.0.1", tls_sigma.port, timeout=10)
    c.sock = tls_sigma.connect()
    c.request("POST", "/login", body=body, headers={
        "Host": f"{NAME}:{tls_sigma.port}", "Content-Type": "application/json",
        "Origin": f"http://{NAME}:{tls_sigma.port}"})
    r = c.getresponse()
    r.read()
    assert r.status == 403, r.status


@pytest.fixture
def upstream_pair():
    """An https:// upstream (sigma on [SH], certificate for localhost from
    the test CA) behind a plain sigma whose route /up points at it with
    `ca` = the test CA; /bad: the same upstream without the CA (not
    trusted); /ip: by address, a name the certificate does not carry."""
    up = TlsSigma(names=("localhost",), pipeline="T127.0.0.1:0[SH]")
    ca = up.pki.ca_path
    front = TlsSigma(
        config=(
            f'[[route]]\npath = "/up"\nto = "https://localhost:{up.port}"\nauth = "none"\nca = "{ca}"\n'
            f'[[route]]\npath = "/bad"\nto = "https://localhost:{up.port}"\nauth = "none"\n'
            f'[[route]]\npath = "/ip"\nto = "https://127.0.0.1:{up.port}"\nauth = "none"\nca = "{ca}"\n'
        ),
        pipeline="T127.0.0.1:0[HA]",
    )
    yield up, front
    front.stop()
    up.stop()


def test_https_upstream_with_route_ca(upstream_pair):
    up, front = upstream_pair
    c = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    c.request("GET", "/up/healthz")
    r = c.getresponse()
    assert (r.status, r.read()) == (200, b"ok\n")
    # Without the route's `ca` the upstream's certificate is not trusted.
    c.request("GET", "/bad/healthz")
    r = c.getresponse()
    r.read()
    assert r.status == 502
    # The name is checked: the certificate is for localhost, not 127.0.0.1.
    c.request("GET", "/ip/healthz")
    r = c.getresponse()
    r.read()
    assert r.status == 502


def test_wss_upstream_pass_through(upstream_pair):
    up, front = upstream_pair

    async def run():
        async with websockets.connect(f"ws://127.0.0.1:{front.port}/up/echo") as ws:
            await ws.send("through wss")
            assert await ws.recv() == "through wss"
    asyncio.run(run())
