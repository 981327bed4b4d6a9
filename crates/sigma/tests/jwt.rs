//! Bearer JWT vectors from an independent implementation (PyJWT).
//!
//! `tests/data/jwt/gen_vectors.py` made the keys and tokens in
//! `tests/data/jwt/` (it is not run here); this test loads the issuers the
//! way the server does (`ExternalIssuer::load` reads the key files, the
//! JWKS comes through a `JwksFetch`), replays every token at the recorded
//! "now" and asserts the exact `JwtError` variant, or the user and issuer
//! of a valid token. It also checks that sigma's own `Issuer` derives the
//! same Ed25519 key and `kid` from a seed as PyJWT/cryptography, and issues
//! the very token PyJWT made from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sigma::auth::jwt::{
    ExternalIssuer, FetchFuture, Issuer, JwksError, JwksFetch, JwtAlgorithm, JwtConfigErrorKind,
    JwtError, JwtIssuerConfig, KeyError, Verifier,
};

#[derive(Deserialize)]
struct Vectors {
    generator: String,
    now: u64,
    leeway: u64,
    issuers: Vec<IssuerEntry>,
    sigma: SigmaEntry,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct IssuerEntry {
    config: JwtIssuerConfig,
    #[serde(default)]
    jwks_file: Option<String>,
}

#[derive(Deserialize)]
struct SigmaEntry {
    seed_hex: String,
    issuer: String,
    audience: String,
    ttl: u64,
    user: String,
    kid: String,
    x: String,
    token: String,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    token: String,
    #[serde(default)]
    ok: Option<Ok>,
    #[serde(default)]
    error: Option<Expected>,
}

#[derive(Deserialize)]
struct Ok {
    user: String,
    issuer: String,
}

#[derive(Deserialize)]
struct Expected {
    kind: String,
    #[serde(default)]
    claim: Option<String>,
    #[serde(default)]
    expected: Option<JwtAlgorithm>,
    #[serde(default)]
    got: Option<JwtAlgorithm>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    len: Option<usize>,
}

impl Expected {
    /// Whether `e` is exactly the expected error (`Malformed`'s text is
    /// sigma's own and not compared).
    fn matches(&self, e: &JwtError) -> bool {
        let want = match self.kind.as_str() {
            "Malformed" => return matches!(e, JwtError::Malformed(_)),
            "TooLong" => JwtError::TooLong {
                len: self.len.unwrap_or_default(),
            },
            "AlgNone" => JwtError::AlgNone,
            "AlgMismatch" => JwtError::AlgMismatch {
                expected: self.expected.unwrap_or(JwtAlgorithm::Hs256),
                got: self.got,
            },
            "UnknownIssuer" => JwtError::UnknownIssuer,
            "UnknownKey" => JwtError::UnknownKey {
                issuer: self.issuer.clone().unwrap_or_default(),
                kid: self.kid.clone(),
            },
            "BadSignature" => JwtError::BadSignature,
            "Expired" => JwtError::Expired,
            "NotYetValid" => JwtError::NotYetValid,
            "WrongIssuer" => JwtError::WrongIssuer,
            "WrongAudience" => JwtError::WrongAudience,
            "MissingClaim" => JwtError::MissingClaim(self.claim.clone().unwrap_or_default()),
            "InvalidClaim" => JwtError::InvalidClaim(self.claim.clone().unwrap_or_default()),
            other => panic!("unknown expected kind {other}"),
        };
        *e == want
    }
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jwt")
}

fn load() -> Vectors {
    let text = std::fs::read_to_string(data_dir().join("vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Serves JWKS documents from memory.
struct MemFetch(HashMap<String, Vec<u8>>);

impl JwksFetch for MemFetch {
    fn fetch<'a>(&'a self, url: &'a str) -> FetchFuture<'a> {
        let r = self
            .0
            .get(url)
            .cloned()
            .ok_or_else(|| JwksError::Fetch("404".into()));
        Box::pin(async move { r })
    }
}

fn sigma_issuer(v: &Vectors) -> Issuer {
    let hex = &v.sigma.seed_hex;
    let seed: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Issuer::new(
        &seed.try_into().unwrap(),
        v.sigma.issuer.clone(),
        v.sigma.audience.clone(),
        Duration::from_secs(v.sigma.ttl),
    )
}

async fn verifier(v: &Vectors) -> Verifier {
    let mut docs = HashMap::new();
    let mut b = Verifier::builder().leeway(Duration::from_secs(v.leeway));
    for entry in &v.issuers {
        let mut cfg = entry.config.clone();
        if let Some(f) = &cfg.key_file {
            cfg.key_file = Some(data_dir().join(f));
        }
        if let (Some(url), Some(file)) = (&cfg.jwks_url, &entry.jwks_file) {
            docs.insert(url.clone(), std::fs::read(data_dir().join(file)).unwrap());
        }
        let ext = ExternalIssuer::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
        b = b.external(ext);
    }
    let verifier = b
        .own(&sigma_issuer(v))
        .fetcher(Arc::new(MemFetch(docs)))
        .build()
        .unwrap();
    for out in verifier.refresh_due(v.now).await {
        assert_eq!(out.result, Ok(1), "JWKS of {}", out.issuer);
    }
    verifier
}

#[tokio::test]
async fn pyjwt_vectors() {
    let v = load();
    assert!(v.generator.contains("PyJWT"), "{}", v.generator);
    let verifier = verifier(&v).await;
    let mut failures = Vec::new();
    let (mut valid, mut rejected) = (0, 0);
    for t in &v.vectors {
        let got = verifier.verify(&t.token, v.now);
        match (&t.ok, &t.error, &got) {
            (Some(ok), None, Ok(verified)) => {
                if verified.user != ok.user || verified.issuer != ok.issuer {
                    failures.push(format!("{}: verified as {verified:?}", t.name));
                }
                valid += 1;
            }
            (None, Some(want), Err(e)) => {
                if !want.matches(e) {
                    failures.push(format!("{}: want {}, got {e:?}", t.name, want.kind));
                }
                // Display never carries the token.
                if t.token.len() > 8 && e.to_string().contains(&t.token) {
                    failures.push(format!("{}: Display contains the token", t.name));
                }
                assert!(!e.reason().is_empty());
                rejected += 1;
            }
            _ => failures.push(format!("{}: unexpected {got:?}", t.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(valid >= 8, "{valid} valid vectors");
    assert!(rejected >= 40, "{rejected} rejection vectors");
}

#[tokio::test]
async fn every_algorithm_and_rejection_is_covered() {
    let v = load();
    let names: Vec<&str> = v.vectors.iter().map(|t| t.name.as_str()).collect();
    for must in [
        "eddsa_valid",
        "rs256_valid",
        "es256_valid",
        "hs256_valid",
        "jwks_rs256_valid",
        "expired",
        "nbf_in_future",
        "wrong_iss",
        "wrong_aud",
        "alg_none",
        "hs256_with_rsa_public_key",
        "rs256_to_es256_issuer",
        "tampered_payload",
        "truncated_signature",
        "not_a_token",
    ] {
        assert!(names.contains(&must), "missing vector {must}");
    }
}

#[tokio::test]
async fn sigma_issues_what_pyjwt_issues() {
    let v = load();
    let iss = sigma_issuer(&v);
    assert_eq!(iss.kid(), v.sigma.kid, "RFC 7638 thumbprint");
    assert_eq!(
        iss.public_jwk().x,
        v.sigma.x,
        "Ed25519 public key from seed"
    );
    let (token, expires_in) = iss.issue(&v.sigma.user, v.now);
    assert_eq!(expires_in, v.sigma.ttl);
    assert_eq!(token, v.sigma.token, "byte-identical to PyJWT's token");
    let verified = verifier(&v).await.verify(&v.sigma.token, v.now).unwrap();
    assert_eq!(verified.user, v.sigma.user);
    assert_eq!(verified.issuer, v.sigma.issuer);
}

#[test]
fn key_files_must_fit_the_pinned_algorithm() {
    let cfg = |alg, file: &str| JwtIssuerConfig {
        issuer: "i".into(),
        audience: "a".into(),
        algorithm: alg,
        key_file: Some(data_dir().join(file)),
        jwks_url: None,
        user_claim: None,
    };
    let kind = |c: JwtIssuerConfig| ExternalIssuer::load(&c).err().map(|e| e.kind);
    use JwtAlgorithm::*;
    for (alg, file) in [
        (Rs256, "rs256.pub.pem"),
        (Es256, "es256.pub.pem"),
        (EdDsa, "ed25519.pub.pem"),
        (Hs256, "hs256.secret"),
    ] {
        assert_eq!(kind(cfg(alg, file)), None, "{alg} {file}");
    }
    for (alg, file) in [
        (Rs256, "es256.pub.pem"),
        (Rs256, "ed25519.pub.pem"),
        (Es256, "rs256.pub.pem"),
        (Es256, "ed25519.pub.pem"),
        (EdDsa, "rs256.pub.pem"),
        (EdDsa, "es256.pub.pem"),
        (Rs256, "hs256.secret"),
        (EdDsa, "jwks.json"),
    ] {
        assert_eq!(
            kind(cfg(alg, file)),
            Some(JwtConfigErrorKind::Key(KeyError::BadPem { alg })),
            "{alg} {file}"
        );
    }
    // A public key as an HS256 secret is the algorithm-confusion attack.
    for file in ["rs256.pub.pem", "es256.pub.pem", "ed25519.pub.pem"] {
        assert_eq!(
            kind(cfg(Hs256, file)),
            Some(JwtConfigErrorKind::Key(KeyError::SecretIsPem)),
            "{file}"
        );
    }
    assert!(matches!(
        kind(cfg(Rs256, "no-such-file.pem")),
        Some(JwtConfigErrorKind::Io { .. })
    ));
}
