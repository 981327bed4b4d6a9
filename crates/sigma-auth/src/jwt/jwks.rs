//! JWKS: an external issuer's published keys, cached by `kid`.
//!
//! Verification never waits on the network: it looks keys up in the cache
//! ([`JwksCache::key`]). Fetching is the caller's, through the small
//! [`JwksFetch`] trait ([`HttpJwksFetch`] in production, an in-memory map in
//! tests), and is bounded three ways: a periodic refresh at most every
//! `refresh` interval, a refresh on an unknown `kid` at most once per
//! `min_refetch` interval (so a stream of tokens with random `kid`s costs at
//! most one request per interval per issuer), and a body of at most
//! [`MAX_JWKS_BYTES`] with at most [`MAX_JWKS_KEYS`] keys. Times are
//! arguments (Unix seconds). A failed or empty fetch keeps the keys the
//! cache had. Only keys that fit the issuer's pinned algorithm are kept
//! (see [`VerifyKey::from_jwk`]); secret (`oct`) keys never are.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Deserialize;

use super::keys::{Jwk, JwtAlgorithm, VerifyKey};

/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Most keys accepted in one JWKS document.
pub const MAX_JWKS_KEYS: usize = 32;
/// How often a JWKS is refreshed when nothing asks for it sooner.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(10 * 60);
/// The shortest time between two fetches of one JWKS (unknown `kid`,
/// failures).
pub const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// The whole-request timeout of [`HttpJwksFetch`].
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a JWKS refresh did not install keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwksError {
    /// The request failed (connection, TLS, status); the text is the
    /// fetcher's, without the body.
    Fetch(String),
    /// The body is larger than [`MAX_JWKS_BYTES`].
    TooLarge,
    /// The body is not a JWKS document.
    NotJwks,
    /// More than [`MAX_JWKS_KEYS`] keys.
    TooManyKeys,
    /// No key in the document fits the pinned algorithm.
    NoUsableKeys,
    /// A fetch of this JWKS happened less than `min_refetch` ago.
    RateLimited,
    /// The issuer has static keys, not a JWKS URL.
    NotJwksIssuer,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fetch(e) => write!(f, "JWKS fetch failed: {e}"),
            Self::TooLarge => write!(f, "JWKS document larger than {MAX_JWKS_BYTES} bytes"),
            Self::NotJwks => f.write_str("not a JWKS document"),
            Self::TooManyKeys => write!(f, "JWKS document with more than {MAX_JWKS_KEYS} keys"),
            Self::NoUsableKeys => f.write_str("no JWKS key fits the pinned algorithm"),
            Self::RateLimited => f.write_str("JWKS fetched too recently"),
            Self::NotJwksIssuer => f.write_str("issuer has no JWKS URL"),
        }
    }
}

impl std::error::Error for JwksError {}

/// A boxed future, so that `dyn JwksFetch` works.
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, JwksError>> + Send + 'a>>;

/// Fetches a JWKS document. Implementations bound the body to
/// [`MAX_JWKS_BYTES`] and time out.
pub trait JwksFetch: Send + Sync {
    /// The body of `url`.
    fn fetch<'a>(&'a self, url: &'a str) -> FetchFuture<'a>;
}

/// [`JwksFetch`] over HTTPS with `reqwest` (rustls, webpki roots, no
/// redirects, [`JWKS_FETCH_TIMEOUT`]).
#[derive(Debug, Clone)]
pub struct HttpJwksFetch {
    client: reqwest::Client,
}

impl HttpJwksFetch {
    /// A fetcher with its own connection pool.
    pub fn new() -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sigma/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        Ok(Self { client })
    }
}

impl JwksFetch for HttpJwksFetch {
    fn fetch<'a>(&'a self, url: &'a str) -> FetchFuture<'a> {
        Box::pin(async move {
            let err = |e: reqwest::Error| JwksError::Fetch(e.without_url().to_string());
            let mut resp = self
                .client
                .get(url)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(err)?;
            if !resp.status().is_success() {
                return Err(JwksError::Fetch(format!("HTTP status {}", resp.status())));
            }
            if resp
                .content_length()
                .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
            {
                return Err(JwksError::TooLarge);
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(err)? {
                if body.len().saturating_add(chunk.len()) > MAX_JWKS_BYTES {
                    return Err(JwksError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
    }
}

/// The cached keys of one JWKS URL, pinned to one algorithm.
pub struct JwksCache {
    url: String,
    alg: JwtAlgorithm,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    keys: Vec<Arc<VerifyKey>>,
    /// When keys were last installed.
    fetched_at: Option<u64>,
    /// When a fetch was last started (successful or not).
    attempted_at: Option<u64>,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.read();
        f.debug_struct("JwksCache")
            .field("url", &self.url)
            .field("alg", &self.alg)
            .field("keys", &st.keys.len())
            .field("fetched_at", &st.fetched_at)
            .finish()
    }
}

impl JwksCache {
    /// An empty cache for `url`; keys must fit `alg`.
    pub fn new(url: String, alg: JwtAlgorithm) -> Self {
        Self {
            url,
            alg,
            state: RwLock::new(State::default()),
        }
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pinned algorithm.
    pub fn alg(&self) -> JwtAlgorithm {
        self.alg
    }

    /// The key for `kid`; without a `kid`, the only key if there is exactly
    /// one.
    pub fn key(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        let st = self.read();
        match kid {
            Some(kid) => st.keys.iter().find(|k| k.kid() == Some(kid)).cloned(),
            None => match st.keys.as_slice() {
                [only] => Some(Arc::clone(only)),
                _ => None,
            },
        }
    }

    /// Whether a key with this `kid` is cached.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.read().keys.iter().any(|k| k.kid() == Some(kid))
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a periodic refresh is due: never fetched, or fetched
    /// `refresh` ago, and not attempted within `min_refetch`.
    pub fn is_due(&self, now_unix: u64, refresh: Duration, min_refetch: Duration) -> bool {
        let st = self.read();
        elapsed(st.attempted_at, now_unix, min_refetch) && elapsed(st.fetched_at, now_unix, refresh)
    }

    /// Claims the right to fetch now: false if a fetch started less than
    /// `min_refetch` ago (so concurrent callers fetch once).
    pub fn try_begin(&self, now_unix: u64, min_refetch: Duration) -> bool {
        let mut st = self.write();
        if !elapsed(st.attempted_at, now_unix, min_refetch) {
            return false;
        }
        st.attempted_at = Some(now_unix);
        true
    }

    /// Parses a JWKS document and replaces the cached keys with the usable
    /// ones; on any error the old keys stay. Returns the number of keys.
    pub fn install(&self, body: &[u8], now_unix: u64) -> Result<usize, JwksError> {
        let keys = parse_jwks(self.alg, body)?;
        let n = keys.len();
        let mut st = self.write();
        st.keys = keys.into_iter().map(Arc::new).collect();
        st.fetched_at = Some(now_unix);
        Ok(n)
    }

    /// Fetches and installs (the caller has won [`JwksCache::try_begin`]).
    pub async fn refresh(&self, fetch: &dyn JwksFetch, now_unix: u64) -> Result<usize, JwksError> {
        let body = fetch.fetch(&self.url).await?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        self.install(&body, now_unix)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // The state is replaced whole under the lock, so a panic elsewhere
        // cannot leave it half-written: poisoning is safe to ignore.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// True if `since` is unset, lies in the future (the clock went back), or
/// is at least `interval` before `now`.
fn elapsed(since: Option<u64>, now: u64, interval: Duration) -> bool {
    match since {
        None => true,
        Some(t) => now < t || now - t >= interval.as_secs(),
    }
}

/// The keys of a JWKS document that fit `alg`, first of each `kid`.
pub fn parse_jwks(alg: JwtAlgorithm, body: &[u8]) -> Result<Vec<VerifyKey>, JwksError> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    if body.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|_| JwksError::NotJwks)?;
    if doc.keys.len() > MAX_JWKS_KEYS {
        return Err(JwksError::TooManyKeys);
    }
    let mut out: Vec<VerifyKey> = Vec::new();
    for v in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        let Ok(key) = VerifyKey::from_jwk(alg, &jwk) else {
            continue;
        };
        if out.iter().any(|k| k.kid() == key.kid()) {
            continue;
        }
        out.push(key);
    }
    if out.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn ed_jwk(seed: u8, kid: &str) -> serde_json::Value {
        let x = URL_SAFE_NO_PAD.encode(
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
                .verifying_key()
                .to_bytes(),
        );
        serde_json::json!({"kty":"OKP","crv":"Ed25519","x":x,"kid":kid})
    }

    #[test]
    fn keeps_only_fitting_keys() {
        let doc = serde_json::json!({"keys":[
            ed_jwk(1, "a"),
            {"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","kid":"h"},
            {"kty":"RSA","n":"AQAB","e":"AQAB","kid":"r"},
            {"kty":"weird"},
            "not an object",
            ed_jwk(2, "a"),
            ed_jwk(3, "b"),
        ]});
        let keys = parse_jwks(JwtAlgorithm::EdDsa, doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid()).collect();
        assert_eq!(kids, vec![Some("a"), Some("b")]);
        assert_eq!(
            parse_jwks(JwtAlgorithm::Rs256, doc.to_string().as_bytes()).unwrap_err(),
            JwksError::NoUsableKeys
        );
        assert_eq!(
            parse_jwks(JwtAlgorithm::Hs256, doc.to_string().as_bytes()).unwrap_err(),
            JwksError::NoUsableKeys
        );
    }

    #[test]
    fn limits() {
        let many: Vec<_> = (0..=MAX_JWKS_KEYS)
            .map(|i| ed_jwk(1, &i.to_string()))
            .collect();
        let doc = serde_json::json!({ "keys": many });
        assert_eq!(
            parse_jwks(JwtAlgorithm::EdDsa, doc.to_string().as_bytes()).unwrap_err(),
            JwksError::TooManyKeys
        );
        let at: Vec<_> = (0..MAX_JWKS_KEYS)
            .map(|i| ed_jwk(1, &i.to_string()))
            .collect();
        let doc = serde_json::json!({ "keys": at });
        assert_eq!(
            parse_jwks(JwtAlgorithm::EdDsa, doc.to_string().as_bytes())
                .unwrap()
                .len(),
            MAX_JWKS_KEYS
        );
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert_eq!(
            parse_jwks(JwtAlgorithm::EdDsa, &big).unwrap_err(),
            JwksError::TooLarge
        );
        assert_eq!(
            parse_jwks(JwtAlgorithm::EdDsa, b"{}").unwrap_err(),
            JwksError::NotJwks
        );
    }

    #[test]
    fn cache_lookup_and_failed_install_keeps_keys() {
        let cache = JwksCache::new("https://id.example/jwks".into(), JwtAlgorithm::EdDsa);
        assert!(cache.key(None).is_none());
        let one = serde_json::json!({"keys":[ed_jwk(1, "a")]}).to_string();
        assert_eq!(cache.install(one.as_bytes(), 100), Ok(1));
        assert!(cache.key(Some("a")).is_some());
        assert!(
            cache.key(None).is_some(),
            "a single key serves kid-less tokens"
        );
        assert!(cache.key(Some("b")).is_none());
        assert!(cache.install(b"garbage", 200).is_err());
        assert!(cache.has_kid("a"));
        let two = serde_json::json!({"keys":[ed_jwk(1, "a"), ed_jwk(2, "b")]}).to_string();
        assert_eq!(cache.install(two.as_bytes(), 300), Ok(2));
        assert!(cache.key(None).is_none(), "ambiguous without a kid");
    }

    #[test]
    fn refresh_schedule_and_rate_limit() {
        let refresh = Duration::from_secs(600);
        let min = Duration::from_secs(30);
        let cache = JwksCache::new("u".into(), JwtAlgorithm::EdDsa);
        assert!(cache.is_due(1000, refresh, min));
        assert!(cache.try_begin(1000, min));
        assert!(!cache.try_begin(1029, min), "second fetch within 30 s");
        assert!(!cache.is_due(1029, refresh, min));
        // The fetch failed: retry allowed after min_refetch.
        assert!(cache.is_due(1030, refresh, min));
        assert!(cache.try_begin(1030, min));
        let one = serde_json::json!({"keys":[ed_jwk(1, "a")]}).to_string();
        cache.install(one.as_bytes(), 1030).unwrap();
        assert!(!cache.is_due(1629, refresh, min));
        assert!(cache.is_due(1630, refresh, min));
        // A clock that went back does not block fetching forever.
        assert!(cache.try_begin(10, min));
    }
}
