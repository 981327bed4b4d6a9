#!/usr/bin/env python3
"""Generates the JWT test vectors for sigma with an independent implementation.

Where it sits: `A` (crates/sigma-auth/src/jwt.rs) verifies bearer tokens;
crates/sigma/tests/jwt.rs replays the tokens written here and asserts the
exact `JwtError` for each. This script is NOT run by the tests: its output
(keys and vectors.json, all test-only) is committed. Re-run it only to
change the vectors:

    .venv/bin/pip install pyjwt cryptography
    .venv/bin/python crates/sigma/tests/data/jwt/gen_vectors.py

Tokens are made with PyJWT (and, where PyJWT refuses to make an attack
token, by hand with hashlib/hmac): valid EdDSA, RS256, ES256 and HS256
tokens; expired, not yet valid, wrong iss, wrong aud, missing claims; alg
none; HS256 signed with a public key PEM as the HMAC secret (algorithm
confusion); RS256 presented to an ES256-pinned issuer; foreign keys;
tampered payload and signature; truncated and garbage tokens. All times are
relative to the fixed NOW recorded in vectors.json. The keys are random on
every run, so a re-run rewrites every file here.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets

import cryptography
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

HERE = os.path.dirname(os.path.abspath(__file__))
NOW = 1_700_000_000
LEEWAY = 30
AUD = "sigma"

RS_ISS = "https://rs.example"
ES_ISS = "https://es.example"
ED_ISS = "https://ed.example"
HS_ISS = "https://hs.example"
JWKS_ISS = "https://jwks.example"
JWKS_URL = "https://jwks.example/.well-known/jwks.json"
JWKS_KID = "jwks-rsa-1"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write(name: str, data: bytes) -> None:
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def pem_private(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_public(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(iss, sub="alice", **extra):
    c = {"iss": iss, "aud": AUD, "sub": sub, "iat": NOW - 60, "exp": NOW + 3600}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def hand_signed_hs256(header: dict, payload: dict, secret: bytes) -> str:
    """An HS256 token made without PyJWT (which refuses PEM secrets)."""
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    p = b64(json.dumps(payload, separators=(",", ":")).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"


def main() -> None:
    rs_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    hs_secret = secrets.token_hex(32).encode()  # 64 ASCII bytes
    jwks_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Keys sigma does not trust (for forged signatures).
    rs_evil = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es_evil = ec.generate_private_key(ec.SECP256R1())
    ed_evil = ed25519.Ed25519PrivateKey.generate()

    write("rs256.key.pem", pem_private(rs_key))
    write("rs256.pub.pem", pem_public(rs_key))
    write("es256.key.pem", pem_private(es_key))
    write("es256.pub.pem", pem_public(es_key))
    write("ed25519.key.pem", pem_private(ed_key))
    write("ed25519.pub.pem", pem_public(ed_key))
    write("hs256.secret", hs_secret + b"\n")
    write("jwks-rsa.key.pem", pem_private(jwks_key))
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(jwks_key.public_key()))
    jwk.update({"kid": JWKS_KID, "use": "sig", "alg": "RS256"})
    # A key of another type and an encryption key, which sigma must skip.
    other = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(es_evil.public_key()))
    other.update({"kid": "ec-other"})
    enc = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rs_evil.public_key()))
    enc.update({"kid": "rsa-enc", "use": "enc"})
    write("jwks.json", json.dumps({"keys": [other, enc, jwk]}, indent=2).encode() + b"\n")

    rs_pub_pem = pem_public(rs_key)
    es_pub_pem = pem_public(es_key)
    ed_pub_pem = pem_public(ed_key)

    vectors = []

    def ok(name, token, user, issuer):
        vectors.append({"name": name, "token": token, "ok": {"user": user, "issuer": issuer}})

    def bad(name, token, error, **detail):
        vectors.append({"name": name, "token": token, "error": {"kind": error, **detail}})

    enc_ = jwt.encode

    # Valid tokens, one per algorithm.
    rs_valid = enc_(claims(RS_ISS), rs_key, algorithm="RS256")
    ok("rs256_valid", rs_valid, "alice", RS_ISS)
    ok("es256_valid", enc_(claims(ES_ISS), es_key, algorithm="ES256"), "alice", ES_ISS)
    ok("eddsa_valid", enc_(claims(ED_ISS), ed_key, algorithm="EdDSA"), "alice", ED_ISS)
    ok("hs256_valid", enc_(claims(HS_ISS), hs_secret, algorithm="HS256"), "alice", HS_ISS)
    ok(
        "jwks_rs256_valid",
        enc_(
            claims(JWKS_ISS, sub="c-123", email="carol@example.com"),
            jwks_key,
            algorithm="RS256",
            headers={"kid": JWKS_KID},
        ),
        "carol@example.com",
        JWKS_ISS,
    )
    ok(
        "aud_array_valid",
        enc_(claims(RS_ISS, aud=["other", AUD]), rs_key, algorithm="RS256"),
        "alice",
        RS_ISS,
    )
    ok(
        "expired_within_leeway",
        enc_(claims(ES_ISS, exp=NOW - LEEWAY + 5), es_key, algorithm="ES256"),
        "alice",
        ES_ISS,
    )
    ok(
        "nbf_within_leeway",
        enc_(claims(ED_ISS, nbf=NOW + LEEWAY - 5), ed_key, algorithm="EdDSA"),
        "alice",
        ED_ISS,
    )

    # Time.
    bad("expired", enc_(claims(RS_ISS, exp=NOW - 3600), rs_key, algorithm="RS256"), "Expired")
    bad(
        "expired_at_leeway_edge",
        enc_(claims(ES_ISS, exp=NOW - LEEWAY), es_key, algorithm="ES256"),
        "Expired",
    )
    bad("nbf_in_future", enc_(claims(ED_ISS, nbf=NOW + 3600), ed_key, algorithm="EdDSA"), "NotYetValid")
    bad("iat_in_future", enc_(claims(HS_ISS, iat=NOW + 3600), hs_secret, algorithm="HS256"), "NotYetValid")
    bad("missing_exp", enc_(claims(RS_ISS, exp=None), rs_key, algorithm="RS256"), "MissingClaim", claim="exp")
    bad("float_exp", enc_(claims(RS_ISS, exp=NOW + 3600.5), rs_key, algorithm="RS256"), "InvalidClaim", claim="exp")

    # Issuer and audience.
    bad("wrong_iss", enc_(claims("https://evil.example"), rs_key, algorithm="RS256"), "UnknownIssuer")
    bad("missing_iss", enc_(claims(None), rs_key, algorithm="RS256"), "MissingClaim", claim="iss")
    bad(
        "wrong_iss_with_trusted_kid",
        enc_(claims("https://evil.example"), jwks_key, algorithm="RS256", headers={"kid": JWKS_KID}),
        "WrongIssuer",
    )
    bad("wrong_aud", enc_(claims(RS_ISS, aud="other"), rs_key, algorithm="RS256"), "WrongAudience")
    bad(
        "wrong_aud_array",
        enc_(claims(ES_ISS, aud=["a", "b"]), es_key, algorithm="ES256"),
        "WrongAudience",
    )
    bad("missing_aud", enc_(claims(ED_ISS, aud=None), ed_key, algorithm="EdDSA"), "MissingClaim", claim="aud")
    bad(
        "missing_user_claim",
        enc_(claims(JWKS_ISS), jwks_key, algorithm="RS256", headers={"kid": JWKS_KID}),
        "MissingClaim",
        claim="email",
    )

    # alg none (PyJWT makes it with algorithm="none"), and other spellings.
    bad("alg_none", enc_(claims(RS_ISS), None, algorithm="none"), "AlgNone")
    for spelling in ["None", "NONE", "nOnE"]:
        h = b64(json.dumps({"alg": spelling, "typ": "JWT"}).encode())
        p = b64(json.dumps(claims(RS_ISS)).encode())
        bad(f"alg_{spelling}", f"{h}.{p}.", "AlgNone")
    # alg none with a signature copied from a valid token.
    h = b64(json.dumps({"alg": "none"}).encode())
    bad("alg_none_with_signature", f"{h}.{rs_valid.split('.')[1]}.{rs_valid.split('.')[2]}", "AlgNone")

    # Algorithm confusion: HS256 with the public key PEM as the HMAC secret.
    for name, iss, pem, pinned in [
        ("hs256_with_rsa_public_key", RS_ISS, rs_pub_pem, "RS256"),
        ("hs256_with_ec_public_key", ES_ISS, es_pub_pem, "ES256"),
        ("hs256_with_ed_public_key", ED_ISS, ed_pub_pem, "EdDSA"),
    ]:
        t = hand_signed_hs256({"alg": "HS256", "typ": "JWT"}, claims(iss), pem)
        bad(name, t, "AlgMismatch", expected=pinned, got="HS256")
    jwks_pem = pem_public(jwks_key)
    bad(
        "hs256_with_jwks_public_key",
        hand_signed_hs256({"alg": "HS256", "kid": JWKS_KID}, claims(JWKS_ISS, email="x@y"), jwks_pem),
        "AlgMismatch",
        expected="RS256",
        got="HS256",
    )
    # An asymmetric token to the HS256 issuer, and across asymmetric ones.
    bad("rs256_to_hs256_issuer", enc_(claims(HS_ISS), rs_key, algorithm="RS256"), "AlgMismatch", expected="HS256", got="RS256")
    bad("rs256_to_es256_issuer", enc_(claims(ES_ISS), rs_key, algorithm="RS256"), "AlgMismatch", expected="ES256", got="RS256")
    bad("es256_to_eddsa_issuer", enc_(claims(ED_ISS), es_key, algorithm="ES256"), "AlgMismatch", expected="EdDSA", got="ES256")
    bad("ps256_to_rs256_issuer", enc_(claims(RS_ISS), rs_key, algorithm="PS256"), "AlgMismatch", expected="RS256", got=None)
    bad("hs512_to_hs256_issuer", enc_(claims(HS_ISS), hs_secret, algorithm="HS512"), "AlgMismatch", expected="HS256", got=None)

    # Keys sigma does not trust.
    bad("rs256_foreign_key", enc_(claims(RS_ISS), rs_evil, algorithm="RS256"), "BadSignature")
    bad("es256_foreign_key", enc_(claims(ES_ISS), es_evil, algorithm="ES256"), "BadSignature")
    bad("eddsa_foreign_key", enc_(claims(ED_ISS), ed_evil, algorithm="EdDSA"), "BadSignature")
    bad("hs256_wrong_secret", enc_(claims(HS_ISS), b"x" * 64, algorithm="HS256"), "BadSignature")
    bad(
        "jwks_unknown_kid",
        enc_(claims(JWKS_ISS, email="x@y"), rs_evil, algorithm="RS256", headers={"kid": "rotated-2"}),
        "UnknownKey",
        issuer=JWKS_ISS,
        kid="rotated-2",
    )
    bad(
        "jwks_enc_key_kid",
        enc_(claims(JWKS_ISS, email="x@y"), rs_evil, algorithm="RS256", headers={"kid": "rsa-enc"}),
        "UnknownKey",
        issuer=JWKS_ISS,
        kid="rsa-enc",
    )

    # Tampering.
    h, p, s = rs_valid.split(".")
    p2 = b64(json.dumps(claims(RS_ISS, sub="root")).encode())
    bad("tampered_payload", f"{h}.{p2}.{s}", "BadSignature")
    s2 = ("B" if s[10] != "B" else "C").join([s[:10], s[11:]])
    bad("tampered_signature", f"{h}.{p}.{s2}", "BadSignature")
    bad("signature_stripped", f"{h}.{p}.", "BadSignature")
    bad("truncated_signature", rs_valid[:-10], "BadSignature")
    bad("truncated_two_parts", f"{h}.{p}", "Malformed")
    bad("truncated_mid_header", rs_valid[:7], "Malformed")
    bad("padded_base64", f"{h}=.{p}.{s}", "Malformed")
    bad("jwe_five_parts", f"{h}.{p}.{s}.{s}.{s}", "Malformed")
    bad("crit_header", enc_(claims(RS_ISS), rs_key, algorithm="RS256", headers={"crit": ["exp"]}), "Malformed")

    # Garbage.
    for name, t in [
        ("empty", ""),
        ("not_a_token", "not a token!"),
        ("dots_only", ".."),
        ("bad_base64_chars", "eyJ!!.eyJ.abc"),
        ("standard_base64_alphabet", "ab+c/.ab+c.ab+c"),
        ("header_not_json", f"{b64(b'hello')}.{p}.{s}"),
        ("header_array", f"{b64(b'[1]')}.{p}.{s}"),
        ("payload_not_object", f"{h}.{b64(b'[1,2,3]')}.{s}"),
        ("non_utf8_payload", f"{h}.{b64(bytes([0xff, 0xfe]))}.{s}"),
    ]:
        bad(name, t, "Malformed")
    big = enc_(claims(RS_ISS, pad="x" * 9000), rs_key, algorithm="RS256")
    bad("too_long", big, "TooLong", len=len(big))

    # sigma's own issuer: a token made by PyJWT with the Ed25519 key that
    # sigma derives from SEED. Ed25519 is deterministic and both sides write
    # compact JSON with sorted members, so Issuer::issue must give the same
    # token byte for byte.
    seed = bytes(range(32))
    own = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    x = b64(own.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    thumb = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    kid = b64(hashlib.sha256(thumb.encode()).digest())
    ttl = 900
    own_claims = {"aud": AUD, "exp": NOW + ttl, "iat": NOW, "iss": "https://sigma.example", "sub": "dave"}
    own_token = enc_(own_claims, own, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})

    out = {
        "generator": f"gen_vectors.py with PyJWT {jwt.__version__}, cryptography {cryptography.__version__}",
        "now": NOW,
        "leeway": LEEWAY,
        "issuers": [
            {"config": {"issuer": RS_ISS, "audience": AUD, "algorithm": "RS256", "key_file": "rs256.pub.pem"}},
            {"config": {"issuer": ES_ISS, "audience": AUD, "algorithm": "ES256", "key_file": "es256.pub.pem"}},
            {"config": {"issuer": ED_ISS, "audience": AUD, "algorithm": "EdDSA", "key_file": "ed25519.pub.pem"}},
            {"config": {"issuer": HS_ISS, "audience": AUD, "algorithm": "HS256", "key_file": "hs256.secret"}},
            {
                "config": {
                    "issuer": JWKS_ISS,
                    "audience": AUD,
                    "algorithm": "RS256",
                    "jwks_url": JWKS_URL,
                    "user_claim": "email",
                },
                "jwks_file": "jwks.json",
            },
        ],
        "sigma": {
            "seed_hex": seed.hex(),
            "issuer": "https://sigma.example",
            "audience": AUD,
            "ttl": ttl,
            "user": "dave",
            "kid": kid,
            "x": x,
            "token": own_token,
        },
        "vectors": vectors,
    }
    write("vectors.json", json.dumps(out, indent=2).encode() + b"\n")
    print(f"{len(vectors)} vectors written to {HERE}")


if __name__ == "__main__":
    main()
