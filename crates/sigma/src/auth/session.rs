//! Server-side sessions behind the `sigma_session` cookie (DESIGN §4).
//!
//! ```text
//!  request ──Cookie: sigma_session=ID──▶ [ A: Sessions::lookup ] ──identity──▶ route
//! ```
//!
//! The cookie carries only an opaque 256-bit id; the record (user, created,
//! last seen, absolute expiry) lives in the store, so restarts keep users
//! logged in and logout is real. Lookups hit an in-memory cache first (the
//! hot path: one read lock and a hash probe); a miss reads the store once
//! and caches the live session. Unknown ids are never cached, so random
//! cookies cannot grow memory. `last_seen` is kept in memory and written
//! back at most once per [`TOUCH_PERSIST_INTERVAL`], without an fsync.
//! Logout and password changes revoke in the store and the cache.
//! A session opened through an OAuth provider that is no longer configured
//! is no session (and is deleted): removing a provider logs its users out.
//! This module does not decide who may log in.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cookie::{Cookie, SameSite};
use sigma_http::Header;

use crate::auth::{Identity, Provider};
use crate::store::{SessionId, SessionRecord, Store, StoreError};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "sigma_session";

/// `last_seen` is written back to the store at most this often per session
/// (milliseconds; session times are unix milliseconds, so that short
/// timeouts are exact).
pub const TOUCH_PERSIST_INTERVAL: u64 = 60_000;

/// Most live sessions kept in memory; past it, the cache is cleared and
/// refilled from the store on demand (a bound, not an expected size).
const MAX_CACHED: usize = 100_000;

/// A session known to be live.
#[derive(Debug)]
struct Live {
    identity: Arc<Identity>,
    record: SessionRecord,
    last_seen: AtomicU64,
    persisted: AtomicU64,
}

/// The session manager of a sigma process.
pub struct Sessions {
    store: Arc<dyn Store>,
    cache: RwLock<HashMap<SessionId, Arc<Live>>>,
    idle: u64,
    lifetime: u64,
    secure: bool,
    /// The configured OAuth providers: a session of any other is refused.
    oauth_providers: BTreeSet<String>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("idle", &self.idle)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions in `store`, expiring after `idle` without use or `lifetime`
    /// after login; `secure` marks the cookie `Secure`. Sessions opened
    /// through an OAuth provider count only if it is in `oauth_providers`.
    pub fn new(
        store: Arc<dyn Store>,
        idle: Duration,
        lifetime: Duration,
        secure: bool,
        oauth_providers: BTreeSet<String>,
    ) -> Self {
        Self {
            store,
            cache: RwLock::new(HashMap::new()),
            idle: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            lifetime: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            secure,
            oauth_providers,
        }
    }

    /// The identity of a live session at `now` (unix ms), touching its
    /// `last_seen`. Expired sessions are removed.
    pub fn lookup(&self, id: &SessionId, now: u64) -> Option<Arc<Identity>> {
        let cached = self.cache.read().ok().and_then(|c| c.get(id).cloned());
        let live = match cached {
            Some(live) => live,
            None => {
                let record = self.store.session_get(id).ok().flatten()?;
                let Some(identity) = identity_of(&record, &self.oauth_providers) else {
                    // Opened through a provider that is gone from the
                    // configuration (or an unknown kind): no session.
                    self.delete_later(id);
                    return None;
                };
                let live = Arc::new(Live {
                    identity: Arc::new(identity),
                    last_seen: AtomicU64::new(record.last_seen),
                    persisted: AtomicU64::new(record.last_seen),
                    record,
                });
                if let Ok(mut c) = self.cache.write() {
                    if c.len() >= MAX_CACHED {
                        c.clear();
                    }
                    c.insert(id.clone(), Arc::clone(&live));
                }
                live
            }
        };
        let last = live.last_seen.load(Ordering::Relaxed);
        if now >= live.record.expires || now >= last.saturating_add(self.idle) {
            self.forget(id);
            self.delete_later(id);
            return None;
        }
        live.last_seen.fetch_max(now, Ordering::Relaxed);
        let persisted = live.persisted.load(Ordering::Relaxed);
        if now >= persisted.saturating_add(TOUCH_PERSIST_INTERVAL)
            && live
                .persisted
                .compare_exchange(persisted, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let mut record = live.record.clone();
            record.last_seen = now;
            // A store write may block on the disk: never on the executor.
            let store = Arc::clone(&self.store);
            let id = id.clone();
            let write = move || {
                if let Err(e) = store.session_put(&id, &record, false) {
                    tracing::warn!(error = %e, "could not record session use");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(write)),
                Err(_) => write(),
            }
        }
        Some(Arc::clone(&live.identity))
    }

    /// Opens a session for `user` at `now` (unix ms), durably; returns its id.
    pub fn create(
        &self,
        user: &str,
        provider: &Provider,
        now: u64,
    ) -> Result<SessionId, StoreError> {
        let id = SessionId::generate()?;
        let record = SessionRecord {
            user: user.to_owned(),
            provider: provider.to_string(),
            created: now,
            last_seen: now,
            expires: now.saturating_add(self.lifetime),
        };
        self.store.session_put(&id, &record, true)?;
        Ok(id)
    }

    /// Revokes a session in the store and the cache.
    pub fn revoke(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.forget(id);
        self.store.session_delete(id)
    }

    /// Drops every cached session of `user` (after a password change or
    /// deletion elsewhere revoked them in the store).
    pub fn forget_user(&self, user: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.retain(|_, live| live.record.user != user);
        }
    }

    /// Deletes a dead session's record. Best effort, off the executor: the
    /// record is dead either way (and purged by expiry if this is lost).
    fn delete_later(&self, id: &SessionId) {
        let store = Arc::clone(&self.store);
        let id = id.clone();
        let delete = move || drop(store.session_delete(&id));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(delete)),
            Err(_) => delete(),
        }
    }

    fn forget(&self, id: &SessionId) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(id);
        }
    }

    /// `Set-Cookie` value for a new session.
    pub fn set_cookie(&self, id: &SessionId) -> String {
        Cookie::build((COOKIE_NAME, id.to_cookie()))
            .http_only(true)
            .same_site(SameSite::Lax)
            .path("/")
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(self.lifetime / 1000).unwrap_or(i64::MAX),
            ))
            .build()
            .to_string()
    }

    /// `Set-Cookie` value that deletes the session cookie.
    pub fn clear_cookie(&self) -> String {
        Cookie::build((COOKIE_NAME, ""))
            .http_only(true)
            .same_site(SameSite::Lax)
            .path("/")
            .secure(self.secure)
            .max_age(cookie::time::Duration::ZERO)
            .build()
            .to_string()
    }
}

/// The identity a session record stands for: `password`, or
/// `oauth:<name>` of a configured provider. Anything else (a provider
/// removed from the configuration, an unknown kind) is no identity, and
/// never taken for a password login.
fn identity_of(record: &SessionRecord, oauth_providers: &BTreeSet<String>) -> Option<Identity> {
    let provider = match record.provider.strip_prefix("oauth:") {
        Some(name) if oauth_providers.contains(name) => Provider::OAuth(name.to_owned()),
        None if record.provider == "password" => Provider::Password,
        _ => return None,
    };
    Some(Identity {
        user: record.user.clone(),
        provider,
        world: None,
    })
}

/// The session id in a request's `Cookie` headers, if there is exactly a
/// well-formed one. Other cookies are ignored; a malformed value is no
/// session (never an error: the request is then anonymous).
pub fn session_cookie(headers: &[Header]) -> Option<SessionId> {
    let mut found = None;
    for h in headers.iter().filter(|h| h.is("cookie")) {
        let Ok(value) = std::str::from_utf8(&h.value) else {
            continue;
        };
        for c in Cookie::split_parse(value).flatten() {
            if c.name() == COOKIE_NAME {
                // Two session cookies (e.g. a planted one on a parent
                // domain): trust neither.
                if found.is_some() {
                    return None;
                }
                found = Some(SessionId::from_cookie(c.value()));
            }
        }
    }
    found.flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> Header {
        Header::new(&b"Cookie"[..], v.as_bytes().to_vec())
    }

    #[test]
    fn provider_of_a_record() {
        let rec = |provider: &str| SessionRecord {
            user: "alice".into(),
            provider: provider.into(),
            created: 0,
            last_seen: 0,
            expires: 1,
        };
        let known: BTreeSet<String> = ["corp".to_string()].into_iter().collect();
        let provider = |p: &str| identity_of(&rec(p), &known).map(|i| i.provider);
        assert_eq!(provider("password"), Some(Provider::Password));
        assert_eq!(provider("oauth:corp"), Some(Provider::OAuth("corp".into())));
        // A provider no longer configured, or an unknown kind: no session,
        // never a password one.
        assert_eq!(provider("oauth:gone"), None);
        assert_eq!(provider("oauth:"), None);
        assert_eq!(provider("jwt:x"), None);
        assert_eq!(provider(""), None);
    }

    #[test]
    fn cookie_parsing() {
        let id = SessionId([7; 32]);
        let v = id.to_cookie();
        assert_eq!(
            session_cookie(&[h(&format!("a=b; sigma_session={v}; c=d"))]),
            Some(id.clone())
        );
        assert_eq!(
            session_cookie(&[h("a=b"), h(&format!("sigma_session={v}"))]),
            Some(id.clone())
        );
        assert_eq!(session_cookie(&[h("sigma_session=short")]), None);
        assert_eq!(
            session_cookie(&[h(&format!("sigma_session={v}; sigma_session={v}"))]),
            None
        );
        assert_eq!(session_cookie(&[]), None);
    }
}
