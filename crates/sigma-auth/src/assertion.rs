//! The signed identity for upstreams (DESIGN §4): with `assert_identity =
//! true` on an upstream route, each request carries `X-Sigma-Assertion`,
//! an EdDSA JWT published at `GET /.well-known/sigma/jwks.json`, with
//!
//! | claim | value |
//! |---|---|
//! | `iss` | `[auth] public_url` (`sigma` without one) |
//! | `aud` | the upstream's origin as configured (`http://127.0.0.1:9000`) |
//! | `sub`, `groups`, `provider` | the identity |
//! | `iat`, `exp` | now, now + [`ASSERTION_TTL_SECS`] |
//! | `jti` | 16 random bytes, base64url: a replay cache key |
//! | `htm`, `htu` | the method, and the path with query, of this request as the upstream receives it |
//!
//! so an assertion leaked from one request cannot pass for another
//! method, path or upstream. A client's own `X-Sigma-*` headers never pass
//! (`sigma_core::strip_identity_headers`).
//!
//! **Keys rotate** every [`ROTATION_SECS`] without any coordination: the
//! key of period `n` (`n = now / ROTATION_SECS`) is derived from the
//! store's secret seed and `n` (SHA-256 of a label, the seed and `n`), so
//! every node of a cluster signs with the same key in the same period and
//! a restart changes nothing. The JWKS lists the keys of the current and
//! the previous period ([`published`]): an assertion lives 60 s, far less
//! than a period, so the old key stays published until its last
//! assertion expired.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use sigma_core::{AssertedRequest, Asserter, Identity};
use sigma_store::{Store, StoreError};

use crate::jwt::{Issuer, PublicJwk};

/// How long an assertion is valid.
pub const ASSERTION_TTL_SECS: u64 = 60;
/// How long one assertion key signs (a day).
pub const ROTATION_SECS: u64 = 86_400;

/// The key seed of rotation period `period`, from the store's `seed`.
fn period_seed(seed: &[u8; 32], period: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sigma-assertion-key\0");
    h.update(seed);
    h.update(period.to_be_bytes());
    h.finalize().into()
}

/// The signer of period `period`.
fn period_issuer(seed: &[u8; 32], iss: &str, period: u64) -> Issuer {
    Issuer::new(
        &period_seed(seed, period),
        iss.to_owned(),
        String::new(),
        Duration::from_secs(ASSERTION_TTL_SECS),
    )
}

/// The public keys of assertions valid at `now_unix`: the current
/// period's and the previous one's.
pub fn published(seed: &[u8; 32], now_unix: u64) -> Vec<PublicJwk> {
    let period = now_unix / ROTATION_SECS;
    let mut out = vec![period_issuer(seed, "", period).public_jwk()];
    if let Some(prev) = period.checked_sub(1) {
        out.push(period_issuer(seed, "", prev).public_jwk());
    }
    out
}

/// The store's seed of sigma's keys (made on first use).
pub fn seed_of(store: &Arc<dyn Store>) -> Result<[u8; 32], StoreError> {
    let seed = store.secret(crate::TOKEN_SEED_SECRET, 32)?;
    let len = seed.len();
    seed.try_into().map_err(|_| StoreError::SecretLength {
        name: crate::TOKEN_SEED_SECRET.to_owned(),
        stored: len,
        wanted: 32,
    })
}

/// Makes assertions with the key of the current period.
pub struct Assertions {
    seed: [u8; 32],
    iss: String,
    /// The signer of the period last used.
    current: Mutex<Option<(u64, Arc<Issuer>)>>,
}

impl Assertions {
    /// Assertions signed with keys derived from the seed in `store`,
    /// issued as `iss`.
    pub fn from_store(store: &Arc<dyn Store>, iss: &str) -> Result<Self, StoreError> {
        Ok(Self {
            seed: seed_of(store)?,
            iss: iss.to_owned(),
            current: Mutex::new(None),
        })
    }

    fn issuer_at(&self, now_unix: u64) -> Arc<Issuer> {
        let period = now_unix / ROTATION_SECS;
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match &*cur {
            Some((p, i)) if *p == period => Arc::clone(i),
            _ => {
                let i = Arc::new(period_issuer(&self.seed, &self.iss, period));
                *cur = Some((period, Arc::clone(&i)));
                i
            }
        }
    }
}

impl Asserter for Assertions {
    fn assert(&self, identity: &Identity, req: AssertedRequest<'_>, now_unix: u64) -> String {
        let mut jti = [0u8; 16];
        // No randomness (a very early boot): the jti still differs by time.
        if sigma_store::random_bytes(&mut jti).is_err() {
            jti[..8].copy_from_slice(&now_unix.to_le_bytes());
        }
        let issuer = self.issuer_at(now_unix);
        let claims = json!({
            "iss": issuer.issuer(),
            "aud": req.audience,
            "sub": identity.user,
            "groups": identity.groups,
            "provider": identity.provider.to_string(),
            "iat": now_unix,
            "exp": now_unix.saturating_add(ASSERTION_TTL_SECS),
            "jti": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
            "htm": req.method,
            "htu": req.target,
        });
        issuer.sign_json(&claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_core::Provider;
    use sigma_store::RedbStore;

    fn decode(part: &str) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        serde_json::from_slice(&b64.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn an_assertion_names_the_request_and_its_published_key() {
        let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory().unwrap());
        let a = Assertions::from_store(&store, "https://chat.example.com").unwrap();
        let id = Identity {
            user: "alice".into(),
            provider: Provider::Password,
            world: None,
            session: None,
            groups: vec!["admins".into()],
        };
        let req = AssertedRequest {
            audience: "http://127.0.0.1:9000",
            method: "GET",
            target: "/base/x?y=1",
        };
        let now = 1_800_000_000;
        let t = a.assert(&id, req, now);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "https://chat.example.com");
        assert_eq!(claims["aud"], "http://127.0.0.1:9000");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["groups"], json!(["admins"]));
        assert_eq!(claims["htu"], "/base/x?y=1");
        assert_eq!(claims["exp"], now + 60);
        let header = decode(parts[0]);
        assert_eq!(header["alg"], "EdDSA");
        let seed = seed_of(&store).unwrap();
        let kids: Vec<String> = published(&seed, now).into_iter().map(|k| k.kid).collect();
        assert_eq!(header["kid"], kids[0].as_str());
        assert_ne!(t, a.assert(&id, req, now), "a fresh jti each time");
    }

    #[test]
    fn keys_rotate_and_the_previous_one_stays_published() {
        let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory().unwrap());
        let a = Assertions::from_store(&store, "sigma").unwrap();
        let seed = seed_of(&store).unwrap();
        let id = Identity {
            user: "bot".into(),
            provider: Provider::ApiKey,
            world: None,
            session: None,
            groups: vec![],
        };
        let req = AssertedRequest {
            audience: "http://u",
            method: "POST",
            target: "/",
        };
        let end = 20_000 * ROTATION_SECS - 1;
        let kid = |t: &str| decode(t.split('.').next().unwrap())["kid"].clone();
        let before = kid(&a.assert(&id, req, end));
        let after = kid(&a.assert(&id, req, end + 1));
        assert_ne!(before, after, "a new period, a new key");
        // Just after the rotation both are published; a period later only
        // the newer one (and the one after).
        let at =
            |t: u64| -> Vec<String> { published(&seed, t).into_iter().map(|k| k.kid).collect() };
        assert_eq!(
            at(end + 1),
            vec![
                after.as_str().unwrap().to_owned(),
                before.as_str().unwrap().to_owned()
            ]
        );
        assert!(!at(end + 1 + ROTATION_SECS).contains(&before.as_str().unwrap().to_owned()));
        // Another node (another `Assertions` on the same store) signs alike.
        let b = Assertions::from_store(&store, "sigma").unwrap();
        assert_eq!(kid(&b.assert(&id, req, end)), before);
    }
}
