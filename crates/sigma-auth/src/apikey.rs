//! API keys (DESIGN §4): `Authorization: Bearer sgk_…` is the identity
//! `{user: NAME, provider: "apikey"}` of the key named NAME, with its
//! groups, on every route (policies apply).
//!
//! ```text
//!  Bearer sgk_… ──▶ [ ApiKeys::lookup ] ──SHA-256──▶ cache ──miss──▶ store (by hash)
//! ```
//!
//! A key is `sgk_` and 43 base64url characters (32 random bytes); the
//! store keeps only its SHA-256 (hex), so the lookup is an exact match on
//! a hash, never a comparison of secrets. Found keys are cached for
//! [`CACHE_TTL`] (bounded, [`MAX_CACHED`]); a key deleted through this
//! node's admin socket is forgotten at once ([`ApiKeys::forget`]), one
//! deleted on another node of a cluster within the TTL. Wrong keys are
//! throttled per client network by `A` ([`crate::throttle`]).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use sigma_store::{Store, StoreError};

use crate::{Identity, Provider};

/// The prefix of every API key.
pub const PREFIX: &str = "sgk_";
/// How long a found key is trusted without asking the store again.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Most keys cached (then the cache starts over).
pub const MAX_CACHED: usize = 10_000;

/// A fresh key and its hash: (`sgk_…`, hex SHA-256).
pub fn generate() -> Result<(String, String), StoreError> {
    let mut raw = [0u8; 32];
    sigma_store::random_bytes(&mut raw)?;
    let key = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let hash = hash(key.as_bytes());
    Ok((key, hash))
}

/// The hex SHA-256 of `key` (what the store keeps).
pub fn hash(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// True if `token` has the shape of a key: `sgk_` and 43 base64url
/// characters.
pub fn well_formed(token: &[u8]) -> bool {
    token.len() == PREFIX.len() + 43
        && token.starts_with(PREFIX.as_bytes())
        && token.get(PREFIX.len()..).is_some_and(|r| {
            r.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The keys `A` knows: the store, behind a small cache.
pub struct ApiKeys {
    store: Arc<dyn Store>,
    cache: RwLock<HashMap<String, (Arc<Identity>, Instant)>>,
}

impl ApiKeys {
    /// Keys from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The identity of `token` (a whole `sgk_…` key), `None` if no key
    /// has its hash. A store error is an error (the caller answers 503).
    pub fn lookup(&self, token: &[u8]) -> Result<Option<Arc<Identity>>, StoreError> {
        let h = hash(token);
        let now = Instant::now();
        if let Some((id, at)) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&h)
        {
            if now.duration_since(*at) < CACHE_TTL {
                return Ok(Some(Arc::clone(id)));
            }
        }
        let found = crate::session::off_executor(|| self.store.apikey_by_hash(&h))?;
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let Some((name, rec)) = found else {
            cache.remove(&h);
            return Ok(None);
        };
        let id = Arc::new(Identity {
            user: name,
            provider: Provider::ApiKey,
            world: None,
            session: None,
            groups: rec.groups,
        });
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(h, (Arc::clone(&id), now));
        Ok(Some(id))
    }

    /// Forgets the cached identity of the key `name` (deleted).
    pub fn forget(&self, name: &str) {
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (id, _)| id.user != name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_store::{ApiKeyRecord, ApiKeyStore as _, RedbStore};

    #[test]
    fn keys_have_their_shape_and_are_found_by_hash_only() {
        let (key, h) = generate().unwrap();
        assert!(well_formed(key.as_bytes()), "{key}");
        assert_eq!(h, hash(key.as_bytes()));
        assert_eq!(h.len(), 64);
        let (other, _) = generate().unwrap();
        assert_ne!(key, other);
        for bad in [
            "sgk_",
            "sgk_short",
            "xyz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!well_formed(bad.as_bytes()), "{bad}");
        }
        let store = Arc::new(RedbStore::in_memory().unwrap());
        let rec = ApiKeyRecord {
            hash: h.clone(),
            groups: vec!["bots".into()],
            created: 1,
        };
        assert!(store.apikey_create("robot", &rec).unwrap());
        let keys = ApiKeys::new(store.clone());
        let id = keys.lookup(key.as_bytes()).unwrap().expect("found");
        assert_eq!(
            (id.user.as_str(), &id.provider),
            ("robot", &Provider::ApiKey)
        );
        assert_eq!(id.groups, vec!["bots".to_owned()]);
        assert!(keys.lookup(other.as_bytes()).unwrap().is_none());
        // Deleted in the store and forgotten: gone at once.
        assert!(store.apikey_delete("robot").unwrap());
        keys.forget("robot");
        assert!(keys.lookup(key.as_bytes()).unwrap().is_none());
    }
}
