//! Invariant: any bytes: `Verifier::verify` and `SessionId::from_cookie` never panic; a token that verifies has `exp > now` (leeway 0), no `nbf`/`iat` after now, a configured issuer, that issuer's audience in `aud` and a user of 1..=256 bytes without control characters; a refusal's `Display` never contains a JWS-shaped token; a cookie that parses re-encodes to the same text, and every session id round-trips through its cookie.
//!
//! Where it sits: `A`, on the two credentials a client can present: the
//! `sigma_session` cookie and an `Authorization: Bearer` token. Random
//! bytes almost never carry a valid signature, so one mode signs the
//! fuzzer's header and payload with sigma's own key (`jwt::fuzzing`) to
//! reach the claim checks behind the signature; a second issuer with a JWKS
//! (installed from memory) is configured too.
//!
//! Input layout: byte 0 = mode (0: the rest is a raw token; 1: the rest is
//! a whole `Authorization` value; 2: signed by sigma's key, 3: signed by the
//! JWKS issuer's key, the rest split at byte 1 into header and payload
//! JSON); bytes 2..6 = seconds added to a fixed `now`; the rest = data. The
//! data is also tried as a session cookie, in every mode.

#![no_main]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sigma::auth::jwt::{
    bearer_token, fuzzing, ExternalIssuer, FetchFuture, Issuer, JwksError, JwksFetch, JwtAlgorithm,
    JwtIssuerConfig, Verifier, MAX_USER_BYTES,
};
use sigma::store::SessionId;

/// 2023-11-14, the base of `now`.
const BASE_NOW: u64 = 1_700_000_000;
const OWN_ISS: &str = "https://sigma.fuzz";
const EXT_ISS: &str = "https://ext.fuzz";
const EXT_JWKS: &str = "https://ext.fuzz/jwks";
const AUD: &str = "sigma";

struct Fixture {
    own: Issuer,
    ext: Issuer,
    verifier: Verifier,
}

struct MemFetch(HashMap<String, Vec<u8>>);

impl JwksFetch for MemFetch {
    fn fetch<'a>(&'a self, url: &'a str) -> FetchFuture<'a> {
        let r = self.0.get(url).cloned().ok_or(JwksError::NotJwks);
        Box::pin(async move { r })
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let own = Issuer::new(
            &[7; 32],
            OWN_ISS.into(),
            AUD.into(),
            Duration::from_secs(900),
        );
        // The JWKS issuer's key: a second Ed25519 key, published with kid "ext-1".
        let ext = Issuer::new(
            &[9; 32],
            EXT_ISS.into(),
            AUD.into(),
            Duration::from_secs(900),
        );
        let mut jwk = serde_json::to_value(ext.public_jwk()).unwrap();
        jwk["kid"] = "ext-1".into();
        let doc = serde_json::json!({ "keys": [jwk] })
            .to_string()
            .into_bytes();
        let cfg = JwtIssuerConfig {
            issuer: EXT_ISS.into(),
            audience: AUD.into(),
            algorithm: JwtAlgorithm::EdDsa,
            key_file: None,
            jwks_url: Some(EXT_JWKS.into()),
            user_claim: Some("email".into()),
        };
        let verifier = Verifier::builder()
            .own(&own)
            .external(ExternalIssuer::with_key_bytes(&cfg, b"").unwrap())
            .leeway(Duration::ZERO)
            .fetcher(Arc::new(MemFetch(HashMap::from([(
                EXT_JWKS.to_owned(),
                doc,
            )]))))
            .build()
            .unwrap();
        // The in-memory fetch is ready at once: poll the refresh to completion.
        {
            let mut fut = std::pin::pin!(verifier.refresh_due(BASE_NOW));
            let mut cx = Context::from_waker(Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(out) => assert!(out.iter().all(|o| o.result == Ok(1)), "{out:?}"),
                Poll::Pending => panic!("in-memory JWKS fetch pending"),
            }
        }
        Fixture { own, ext, verifier }
    })
}

fn check_token(f: &Fixture, token: &[u8], now: u64) {
    match f.verifier.verify(token, now) {
        Ok(v) => {
            assert!(v.claims.exp > now, "exp {} <= now {now}", v.claims.exp);
            assert!(v.claims.nbf.is_none_or(|t| t <= now));
            assert!(v.claims.iat.is_none_or(|t| t <= now));
            assert!(v.issuer == OWN_ISS || v.issuer == EXT_ISS, "{}", v.issuer);
            assert_eq!(v.claims.iss, v.issuer);
            assert!(v.claims.aud.iter().any(|a| a == AUD));
            assert!(!v.user.is_empty() && v.user.len() <= MAX_USER_BYTES);
            assert!(!v.user.chars().any(char::is_control));
        }
        Err(e) => {
            assert!(!e.reason().is_empty());
            assert_eq!(e.status(), 401);
            // A token that is plain text may well be a word of the message
            // ("outside base64url"); a JWS-shaped one must never show.
            let jws_shaped = token
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if jws_shaped && token.len() >= 16 {
                let shown = e.to_string();
                assert!(
                    !shown.as_bytes().windows(token.len()).any(|w| w == token),
                    "Display shows the token: {shown}"
                );
            }
        }
    }
}

fn check_cookie(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(id) = SessionId::from_cookie(s) {
            assert_eq!(id.to_cookie(), s, "one spelling per id");
        }
    }
    if let Some(bytes) = data.first_chunk::<32>() {
        let id = SessionId(*bytes);
        assert_eq!(SessionId::from_cookie(&id.to_cookie()), Some(id));
    }
}

fuzz_target!(|input: &[u8]| {
    let [mode, split, d0, d1, d2, d3, data @ ..] = input else {
        return;
    };
    let f = fixture();
    let now = BASE_NOW + u64::from(u32::from_le_bytes([*d0, *d1, *d2, *d3]));
    check_cookie(data);
    match mode % 4 {
        0 => check_token(f, data, now),
        1 => {
            if let Some(t) = bearer_token(data) {
                check_token(f, t, now);
            }
        }
        m => {
            let at = usize::from(*split).min(data.len());
            let (header, payload) = data.split_at(at);
            let key = if m == 2 { &f.own } else { &f.ext };
            let token = fuzzing::sign_parts(key, header, payload);
            check_token(f, token.as_bytes(), now);
        }
    }
});
