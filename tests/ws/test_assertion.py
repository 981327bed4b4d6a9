"""The signed identity for upstreams (DESIGN §4, docs/upstream-identity.md),
verified by an independent implementation: PyJWT with sigma's published
JWKS, exactly as an upstream service would.

A real upstream (a threaded `http.server`) records the `X-Sigma-Assertion`
it receives; the test verifies it with `jwt.decode` (EdDSA, audience =
the upstream's origin, issuer = sigma's public_url), checks `htm`/`htu`
name this very request (so a replay against another path is detectable),
and that a client cannot smuggle its own assertion.
"""
import http.server
import json
import queue
import threading
import time

import jwt
import pytest

from helpers_auth import AuthSigma

USERS = {"alice": "alice-password-1"}


class Upstream:
    def __init__(self):
        self.seen = queue.Queue()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                outer.seen.put((self.command, self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self):
        return self.seen.get(timeout=10)

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def env():
    up = Upstream()
    config = f"""
[auth]
public_url = "https://chat.example.com"

[[route]]
path = "/api"
to = "http://127.0.0.1:{up.port}/base"
assert_identity = true

[[route]]
path = "/plain"
to = "http://127.0.0.1:{up.port}/plain"
"""
    s = AuthSigma(config, USERS)
    yield s, up
    s.stop()
    up.stop()


def jwks(s):
    status, _, body = s.request("GET", "/.well-known/sigma/jwks.json")
    assert status == 200
    return json.loads(body)


def header(headers, name):
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def key_for(s, token):
    """The published key the token's header names (as an upstream picks it)."""
    keys = jwks(s)["keys"]
    assert all(k["alg"] == "EdDSA" and k["crv"] == "Ed25519" for k in keys), keys
    kid = jwt.get_unverified_header(token)["kid"]
    match = [k for k in keys if k["kid"] == kid]
    assert len(match) == 1, (kid, keys)
    return jwt.PyJWK(match[0])


def test_the_assertion_verifies_with_pyjwt_and_names_this_request(env):
    s, up = env
    # A client's own assertion never reaches the upstream.
    status, _, _ = s.request("GET", "/api/things?id=7",
                             headers={"Cookie": s.cookie("alice"), "X-Sigma-Assertion": "forged"})
    assert status == 200
    method, path, headers = up.next()
    assert (method, path) == ("GET", "/base/things?id=7")
    token = header(headers, "x-sigma-assertion")
    assert token and token != "forged"
    key = key_for(s, token)
    before = int(time.time())
    claims = jwt.decode(token, key=key, algorithms=["EdDSA"],
                        audience=f"http://127.0.0.1:{up.port}",
                        issuer="https://chat.example.com",
                        options={"require": ["exp", "iat", "sub", "jti"]})
    assert claims["sub"] == "alice"
    assert claims["provider"] == "password"
    assert claims["groups"] == []
    assert claims["htm"] == "GET"
    assert claims["htu"] == path
    assert 0 < claims["exp"] - claims["iat"] <= 60
    assert abs(claims["iat"] - before) <= 5
    # A replay against another path or method is detectable: another
    # request's assertion names that request, so an upstream comparing
    # htm/htu with the request it serves refuses the first one there.
    s.request("POST", "/api/other", body=b"x",
              headers={"Cookie": s.cookie("alice"), "Origin": "https://chat.example.com"})
    m2, p2, h2 = up.next()
    other = jwt.decode(header(h2, "x-sigma-assertion"), key=key_for(s, header(h2, "x-sigma-assertion")),
                       algorithms=["EdDSA"], audience=f"http://127.0.0.1:{up.port}",
                       issuer="https://chat.example.com")
    assert (other["htm"], other["htu"]) == (m2, p2) == ("POST", "/base/other")
    assert (claims["htm"], claims["htu"]) != (m2, p2)
    # A wrong audience (another upstream) is refused by the library.
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key=key, algorithms=["EdDSA"], audience="http://127.0.0.1:1",
                   issuer="https://chat.example.com")
    # Each request gets its own jti.
    s.request("GET", "/api/things?id=7", headers={"Cookie": s.cookie("alice")})
    _, _, headers2 = up.next()
    again = jwt.decode(header(headers2, "x-sigma-assertion"), key=key, algorithms=["EdDSA"],
                       audience=f"http://127.0.0.1:{up.port}", issuer="https://chat.example.com")
    assert again["jti"] != claims["jti"]


def test_routes_without_assert_identity_send_none(env):
    s, up = env
    status, _, _ = s.request("GET", "/plain/x",
                             headers={"Cookie": s.cookie("alice"), "X-Sigma-Assertion": "forged"})
    assert status == 200
    _, _, headers = up.next()
    assert header(headers, "x-sigma-assertion") is None
