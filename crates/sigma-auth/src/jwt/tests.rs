//! Unit tests of the verifier with sigma's own issuer, JWKS refresh with an
//! in-memory fetcher, and properties. The vectors from an independent
//! implementation (PyJWT) are in `crates/sigma/tests/jwt.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::json;

use super::*;

const NOW: u64 = 1_700_000_000;
const TTL: Duration = Duration::from_secs(900);

fn seed(b: u8) -> [u8; 32] {
    [b; 32]
}

fn sigma() -> Issuer {
    Issuer::new(&seed(7), "https://sigma.test".into(), "sigma".into(), TTL)
}

fn verifier(issuer: &Issuer) -> Verifier {
    Verifier::builder().own(issuer).build().unwrap()
}

/// A token signed by `issuer` with sigma's usual header and these claims.
fn signed(issuer: &Issuer, claims: serde_json::Value) -> String {
    let header = json!({"alg":"EdDSA","typ":"JWT","kid":issuer.kid()});
    fuzzing::sign_parts(
        issuer,
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
    )
}

fn claims(user: &str) -> serde_json::Value {
    json!({"iss":"https://sigma.test","aud":"sigma","sub":user,"exp":NOW + 60,"iat":NOW})
}

#[test]
fn issue_then_verify() {
    let iss = sigma();
    let (token, expires_in) = iss.issue("alice", NOW);
    assert_eq!(expires_in, 900);
    let v = verifier(&iss).verify(&token, NOW).unwrap();
    assert_eq!(v.user, "alice");
    assert_eq!(v.issuer, "https://sigma.test");
    assert_eq!(
        v.claims,
        Claims {
            iss: "https://sigma.test".into(),
            sub: Some("alice".into()),
            aud: vec!["sigma".into()],
            exp: NOW + 900,
            nbf: None,
            iat: Some(NOW),
            sid: None,
        }
    );
    // A session's token carries its handle, and verifies the same.
    let (token2, _) = iss.issue_for_session("alice", "h4ndle", NOW);
    let v2 = verifier(&iss).verify(&token2, NOW).unwrap();
    assert_eq!(v2.claims.sid.as_deref(), Some("h4ndle"));
    // The header names the key and the algorithm.
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header, json!({"alg":"EdDSA","typ":"JWT","kid":iss.kid()}));
}

#[test]
fn the_groups_claim_keeps_valid_group_names_only() {
    let iss = sigma();
    let v = verifier(&iss);
    let mut c = claims("alice");
    c["groups"] = json!(["ops", "Domain Users", 7, "admins", "ops", ""]);
    let got = v.verify(signed(&iss, c), NOW).unwrap();
    assert_eq!(got.groups, vec!["admins".to_owned(), "ops".to_owned()]);
    let mut c = claims("alice");
    c["groups"] = json!("admins");
    assert!(v.verify(signed(&iss, c), NOW).unwrap().groups.is_empty());
    assert!(v
        .verify(signed(&iss, claims("alice")), NOW)
        .unwrap()
        .groups
        .is_empty());
}

#[test]
fn expiry_and_leeway_boundaries() {
    let iss = sigma();
    let (token, _) = iss.issue("alice", NOW);
    let exp = NOW + 900;
    let v = verifier(&iss);
    assert!(v.verify(&token, exp + 29).is_ok(), "inside the 30 s leeway");
    assert_eq!(v.verify(&token, exp + 30), Err(JwtError::Expired));
    let strict = Verifier::builder()
        .own(&iss)
        .leeway(Duration::ZERO)
        .build()
        .unwrap();
    assert!(strict.verify(&token, exp - 1).is_ok());
    assert_eq!(strict.verify(&token, exp), Err(JwtError::Expired));
    // Issued in the future (clock skew beyond the leeway).
    assert!(v.verify(&token, NOW - 30).is_ok());
    assert_eq!(v.verify(&token, NOW - 31), Err(JwtError::NotYetValid));
}

#[test]
fn rfc8037_key_thumbprint_and_signature() {
    // RFC 8037 A.1 (private key), A.3 (thumbprint), A.4 (signature).
    let d: [u8; 32] = URL_SAFE_NO_PAD
        .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
        .unwrap()
        .try_into()
        .unwrap();
    let iss = Issuer::new(&d, "i".into(), "a".into(), TTL);
    let jwk = iss.public_jwk();
    assert_eq!(jwk.x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    assert_eq!(jwk.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    assert_eq!(
        serde_json::to_value(&jwk).unwrap(),
        json!({"kty":"OKP","crv":"Ed25519","x":jwk.x,"kid":jwk.kid,"alg":"EdDSA","use":"sig"})
    );
    assert_eq!(
        iss.jwks(),
        json!({"keys":[serde_json::to_value(&jwk).unwrap()]})
    );
    let t = fuzzing::sign_parts(&iss, br#"{"alg":"EdDSA"}"#, b"Example of Ed25519 signing");
    assert_eq!(
        t,
        "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.\
         hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    );
}

#[test]
fn another_seed_is_another_key() {
    let iss = sigma();
    let v = verifier(&iss);
    let other = Issuer::new(&seed(8), "https://sigma.test".into(), "sigma".into(), TTL);
    assert_ne!(other.kid(), iss.kid());
    let (token, _) = other.issue("alice", NOW);
    assert_eq!(
        v.verify(&token, NOW),
        Err(JwtError::UnknownKey {
            issuer: "https://sigma.test".into(),
            kid: Some(other.kid().into()),
        })
    );
    // Forged with our kid but the other key.
    let header = json!({"alg":"EdDSA","kid":iss.kid()});
    let forged = fuzzing::sign_parts(
        &other,
        header.to_string().as_bytes(),
        claims("alice").to_string().as_bytes(),
    );
    assert_eq!(v.verify(&forged, NOW), Err(JwtError::BadSignature));
    // Without a kid the only key is used, and it does not verify.
    let forged = fuzzing::sign_parts(
        &other,
        br#"{"alg":"EdDSA"}"#,
        claims("alice").to_string().as_bytes(),
    );
    assert_eq!(v.verify(&forged, NOW), Err(JwtError::BadSignature));
}

#[test]
fn claim_rules() {
    let iss = sigma();
    let v = verifier(&iss);
    let with = |patch: serde_json::Value| {
        let mut c = claims("alice");
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val.clone();
            }
        }
        v.verify(signed(&iss, c), NOW)
    };
    let missing = |c: &str| Err(JwtError::MissingClaim(c.into()));
    let invalid = |c: &str| Err(JwtError::InvalidClaim(c.into()));
    assert!(with(json!({})).is_ok());
    assert_eq!(with(json!({"exp": null})), missing("exp"));
    assert_eq!(with(json!({"aud": null})), missing("aud"));
    assert_eq!(with(json!({"sub": null})), missing("sub"));
    assert_eq!(with(json!({"iss": null})), missing("iss"));
    assert_eq!(with(json!({"exp": NOW - 31})), Err(JwtError::Expired));
    assert_eq!(
        with(json!({"exp": (NOW + 60) as f64 + 0.5})),
        invalid("exp")
    );
    assert_eq!(with(json!({"exp": "never"})), invalid("exp"));
    assert_eq!(with(json!({"nbf": NOW + 31})), Err(JwtError::NotYetValid));
    assert!(with(json!({"nbf": NOW + 30})).is_ok());
    assert_eq!(with(json!({"nbf": -5})), invalid("nbf"));
    assert_eq!(with(json!({"iat": NOW + 31})), Err(JwtError::NotYetValid));
    assert_eq!(with(json!({"aud": "other"})), Err(JwtError::WrongAudience));
    assert!(with(json!({"aud": ["other", "sigma"]})).is_ok());
    assert_eq!(with(json!({"aud": []})), Err(JwtError::WrongAudience));
    assert_eq!(with(json!({"aud": ["sigma", 1]})), invalid("aud"));
    assert_eq!(with(json!({"aud": {"sigma": true}})), invalid("aud"));
    assert_eq!(
        with(json!({"iss": "https://evil.test"})),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        with(json!({"iss": "https://SIGMA.test"})),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(with(json!({"iss": ["https://sigma.test"]})), invalid("iss"));
    assert_eq!(with(json!({"sub": ""})), invalid("sub"));
    assert_eq!(
        with(json!({"sub": "al\r\nX-Sigma-User: root"})),
        invalid("sub")
    );
    assert_eq!(with(json!({"sub": 42})), invalid("sub"));
    assert!(with(json!({"sub": "u".repeat(MAX_USER_BYTES)})).is_ok());
    assert_eq!(
        with(json!({"sub": "u".repeat(MAX_USER_BYTES + 1)})),
        invalid("sub")
    );
}

#[test]
fn unknown_issuer_without_a_known_kid() {
    let iss = sigma();
    let v = verifier(&iss);
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.test");
    let t = fuzzing::sign_parts(&iss, br#"{"alg":"EdDSA"}"#, c.to_string().as_bytes());
    assert_eq!(v.verify(&t, NOW), Err(JwtError::UnknownIssuer));
    let t = fuzzing::sign_parts(
        &iss,
        br#"{"alg":"EdDSA","kid":"nope"}"#,
        c.to_string().as_bytes(),
    );
    assert_eq!(v.verify(&t, NOW), Err(JwtError::UnknownIssuer));
}

#[test]
fn alg_mismatch_is_checked_before_the_key() {
    let iss = sigma();
    let v = verifier(&iss);
    for (alg, got) in [
        ("HS256", Some(JwtAlgorithm::Hs256)),
        ("RS256", Some(JwtAlgorithm::Rs256)),
        ("ES256", Some(JwtAlgorithm::Es256)),
        ("HS512", None),
        ("eddsa", None),
    ] {
        let header = json!({"alg": alg, "kid": iss.kid()});
        let t = fuzzing::sign_parts(
            &iss,
            header.to_string().as_bytes(),
            claims("alice").to_string().as_bytes(),
        );
        assert_eq!(
            v.verify(&t, NOW),
            Err(JwtError::AlgMismatch {
                expected: JwtAlgorithm::EdDsa,
                got
            }),
            "{alg}"
        );
    }
}

#[test]
fn duplicate_issuers_are_a_config_error() {
    let iss = sigma();
    let err = Verifier::builder().own(&iss).own(&iss).build().unwrap_err();
    assert_eq!(err.kind, JwtConfigErrorKind::DuplicateIssuer);
}

#[test]
fn debug_and_display_keep_secrets() {
    let iss = sigma();
    let dbg = format!("{iss:?} {:?}", verifier(&iss));
    assert!(dbg.contains("[redacted]"), "{dbg}");
    let seed_b64 = URL_SAFE_NO_PAD.encode(seed(7));
    assert!(!dbg.contains(&seed_b64));
    assert!(!dbg.contains("7, 7, 7"), "{dbg}");
    let (token, _) = iss.issue("alice", NOW);
    let err = verifier(&iss).verify(&token, NOW + 10_000).unwrap_err();
    assert!(!err.to_string().contains(&token));
}

#[test]
fn reasons_are_stable_and_distinct() {
    let all = [
        JwtError::TooLong { len: 1 },
        JwtError::Malformed("x"),
        JwtError::AlgNone,
        JwtError::AlgMismatch {
            expected: JwtAlgorithm::EdDsa,
            got: None,
        },
        JwtError::UnknownIssuer,
        JwtError::UnknownKey {
            issuer: "i".into(),
            kid: None,
        },
        JwtError::BadSignature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::MissingClaim("exp".into()),
        JwtError::InvalidClaim("exp".into()),
    ];
    let mut reasons: Vec<_> = all.iter().map(JwtError::reason).collect();
    assert!(all.iter().all(|e| e.status() == 401));
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
}

// ---------------------------------------------------------------------------
// JWKS with an in-memory fetcher.

#[derive(Default)]
struct MemFetch {
    docs: Mutex<HashMap<String, Vec<u8>>>,
    calls: AtomicUsize,
}

impl MemFetch {
    fn set(&self, url: &str, body: serde_json::Value) {
        self.docs
            .lock()
            .unwrap()
            .insert(url.into(), body.to_string().into_bytes());
    }
}

impl JwksFetch for MemFetch {
    fn fetch<'a>(&'a self, url: &'a str) -> FetchFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let r = self
            .docs
            .lock()
            .unwrap()
            .get(url)
            .cloned()
            .ok_or_else(|| JwksError::Fetch("404".into()));
        Box::pin(async move { r })
    }
}

const JWKS_URL: &str = "https://id.test/jwks";

fn jwks_issuer() -> ExternalIssuer {
    ExternalIssuer::with_key_bytes(
        &JwtIssuerConfig {
            issuer: "https://id.test".into(),
            audience: "sigma".into(),
            algorithm: JwtAlgorithm::EdDsa,
            key_file: None,
            jwks_url: Some(JWKS_URL.into()),
            user_claim: Some("email".into()),
        },
        b"",
    )
    .unwrap()
}

fn ext_token(key: &Issuer, kid: &str) -> String {
    let header = json!({"alg":"EdDSA","kid":kid});
    let c = json!({"iss":"https://id.test","aud":["sigma"],"email":"bob@id.test","exp":NOW + 60});
    fuzzing::sign_parts(key, header.to_string().as_bytes(), c.to_string().as_bytes())
}

fn jwk_with_kid(key: &Issuer, kid: &str) -> serde_json::Value {
    let mut j = serde_json::to_value(key.public_jwk()).unwrap();
    j["kid"] = json!(kid);
    j
}

#[tokio::test]
async fn jwks_refresh_on_unknown_kid_is_rate_limited() {
    let k1 = Issuer::new(&seed(1), "x".into(), "x".into(), TTL);
    let k2 = Issuer::new(&seed(2), "x".into(), "x".into(), TTL);
    let fetch = Arc::new(MemFetch::default());
    fetch.set(JWKS_URL, json!({"keys":[jwk_with_kid(&k1, "k1")]}));
    let v = Verifier::builder()
        .external(jwks_issuer())
        .fetcher(fetch.clone())
        .build()
        .unwrap();
    assert!(v.needs_refresh(NOW));
    // Before any fetch the key is unknown; verify() never fetches.
    let t1 = ext_token(&k1, "k1");
    assert!(matches!(
        v.verify(&t1, NOW),
        Err(JwtError::UnknownKey { .. })
    ));
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 0);
    // Start-up refresh.
    let out = v.refresh_due(NOW).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].result, Ok(1));
    assert!(!v.needs_refresh(NOW + 1));
    let ok = v.verify(&t1, NOW).unwrap();
    assert_eq!(ok.user, "bob@id.test");
    assert_eq!(ok.issuer, "https://id.test");
    // The issuer rotates to k2; a k2 token triggers one refetch, but only
    // after min_refetch since the last one.
    fetch.set(
        JWKS_URL,
        json!({"keys":[jwk_with_kid(&k1, "k1"), jwk_with_kid(&k2, "k2")]}),
    );
    let t2 = ext_token(&k2, "k2");
    assert_eq!(
        v.verify_or_refresh(&t2, NOW + 10).await,
        Err(JwtError::UnknownKey {
            issuer: "https://id.test".into(),
            kid: Some("k2".into())
        })
    );
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 1, "rate-limited");
    let ok = v.verify_or_refresh(&t2, NOW + 30).await.unwrap();
    assert_eq!(ok.user, "bob@id.test");
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 2);
    // Random kids cost at most one fetch per interval.
    for i in 0..20 {
        let t = ext_token(&k2, &format!("random-{i}"));
        let _ = v.verify_or_refresh(&t, NOW + 31 + i).await;
    }
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 2);
    let _ = v
        .verify_or_refresh(ext_token(&k2, "random"), NOW + 60)
        .await;
    assert_eq!(fetch.calls.load(Ordering::SeqCst), 3);
    // A failed fetch keeps the keys.
    fetch.docs.lock().unwrap().clear();
    let out = v.refresh_due(NOW + 60 + 600).await;
    assert!(matches!(out[0].result, Err(JwksError::Fetch(_))));
    assert!(v.verify(&t1, NOW).is_ok());
    // Only configured JWKS issuers can be refreshed.
    assert_eq!(
        v.refresh_issuer("https://nope", NOW).await,
        Err(JwksError::NotJwksIssuer)
    );
}

#[tokio::test]
async fn jwks_kid_of_another_issuer_is_wrong_issuer() {
    let k1 = Issuer::new(&seed(1), "x".into(), "x".into(), TTL);
    let fetch = Arc::new(MemFetch::default());
    fetch.set(JWKS_URL, json!({"keys":[jwk_with_kid(&k1, "k1")]}));
    let v = Verifier::builder()
        .external(jwks_issuer())
        .fetcher(fetch)
        .build()
        .unwrap();
    v.refresh_due(NOW).await;
    let header = json!({"alg":"EdDSA","kid":"k1"});
    let c = json!({"iss":"https://evil.test","aud":"sigma","email":"bob","exp":NOW + 60});
    let t = fuzzing::sign_parts(&k1, header.to_string().as_bytes(), c.to_string().as_bytes());
    assert_eq!(v.verify(&t, NOW), Err(JwtError::WrongIssuer));
}

// ---------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_input_never_panics(s in ".{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let iss = sigma();
        let v = verifier(&iss);
        let _ = v.verify(&s, NOW);
        let _ = v.verify(&bytes, NOW);
        let _ = bearer_token(&bytes);
    }

    #[test]
    fn arbitrary_jws_shapes_never_panic(
        h in "[A-Za-z0-9_-]{0,80}",
        p in "[A-Za-z0-9_-]{0,80}",
        s in "[A-Za-z0-9_-]{0,100}",
        header in ".{0,60}",
        payload in ".{0,80}",
    ) {
        let iss = sigma();
        let v = verifier(&iss);
        let _ = v.verify(format!("{h}.{p}.{s}"), NOW);
        let t = fuzzing::sign_parts(&iss, header.as_bytes(), payload.as_bytes());
        if let Ok(ok) = v.verify(&t, NOW) {
            prop_assert!(ok.claims.exp > NOW);
        }
    }

    #[test]
    fn any_single_byte_change_is_rejected(
        user in "[a-z]{1,12}",
        pos in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let iss = sigma();
        let v = verifier(&iss);
        let (token, _) = iss.issue(&user, NOW);
        let mut bytes = token.into_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        prop_assert!(v.verify(&bytes, NOW).is_err());
    }

    #[test]
    fn truncations_are_rejected(user in "[a-z]{1,12}", cut in any::<prop::sample::Index>()) {
        let iss = sigma();
        let v = verifier(&iss);
        let (token, _) = iss.issue(&user, NOW);
        let n = cut.index(token.len());
        prop_assert!(v.verify(&token[..n], NOW).is_err());
    }
}
