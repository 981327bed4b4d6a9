//! The signed identity for upstreams (DESIGN §4): with `assert_identity =
//! true` on an upstream route, each request carries `X-Sigma-Assertion`,
//! an EdDSA JWT of sigma's own key (the one of its bearer tokens,
//! published at `GET /.well-known/sigma/jwks.json`) with
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

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use sigma_core::{AssertedRequest, Asserter, Identity};
use sigma_store::{Store, StoreError};

use crate::jwt::Issuer;

/// How long an assertion is valid.
pub const ASSERTION_TTL_SECS: u64 = 60;

/// Makes assertions with sigma's own key.
pub struct Assertions {
    issuer: Issuer,
}

impl Assertions {
    /// Assertions signed with the key in `store` (the seed of sigma's
    /// bearer tokens, made on first use), issued as `iss`.
    pub fn from_store(store: &Arc<dyn Store>, iss: &str) -> Result<Self, StoreError> {
        let seed = store.secret(crate::TOKEN_SEED_SECRET, 32)?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| StoreError::SecretLength {
            name: crate::TOKEN_SEED_SECRET.to_owned(),
            stored: 0,
            wanted: 32,
        })?;
        Ok(Self {
            issuer: Issuer::new(
                &seed,
                iss.to_owned(),
                String::new(),
                Duration::from_secs(ASSERTION_TTL_SECS),
            ),
        })
    }
}

impl Asserter for Assertions {
    fn assert(&self, identity: &Identity, req: AssertedRequest<'_>, now_unix: u64) -> String {
        let mut jti = [0u8; 16];
        // No randomness (a very early boot): the jti still differs by time.
        if sigma_store::random_bytes(&mut jti).is_err() {
            jti[..8].copy_from_slice(&now_unix.to_le_bytes());
        }
        let claims = json!({
            "iss": self.issuer.issuer(),
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
        self.issuer.sign_json(&claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_core::Provider;
    use sigma_store::RedbStore;

    #[test]
    fn an_assertion_verifies_with_the_published_key_and_names_the_request() {
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
        let t = a.assert(&id, req, 1_800_000_000);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "https://chat.example.com");
        assert_eq!(claims["aud"], "http://127.0.0.1:9000");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["groups"], json!(["admins"]));
        assert_eq!(claims["htu"], "/base/x?y=1");
        assert_eq!(claims["exp"], 1_800_000_060u64);
        // The same key as sigma's tokens: A's verifier (with this key)
        // accepts the signature.
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["kid"], a.issuer.kid());
        let again = a.assert(&id, req, 1_800_000_000);
        assert_ne!(t, again, "a fresh jti each time");
    }
}
