//! Server-side sessions behind the `sigma_session` cookie (DESIGN §4).
//!
//! ```text
//!  request ──Cookie: sigma_session=ID──▶ [ A: Sessions::lookup ] ──identity──▶ route
//!  request ──Bearer (sid)──────────────▶ [ A: Sessions::lookup_token ] ──live?──▶ route
//!  logout · expiry · user del · passwd ──▶ [ Sessions ] ──▶ store, cache, open sockets (4401)
//! ```
//!
//! The cookie carries only an opaque 256-bit id; the record (user, created,
//! last seen, absolute expiry) lives in the store, so restarts keep users
//! logged in and logout is real. Lookups hit an in-memory cache first (the
//! hot path: one read lock and a hash probe); a miss reads the store once,
//! off the executor (`block_in_place` on the multi-threaded runtime, so
//! the worker's other connections move on while redb reads), and caches
//! the live session. An id the store does not know is remembered in a
//! bounded negative cache ([`MAX_UNKNOWN`] ids, then forgotten at once),
//! so a client repeating a bogus cookie costs a hash probe, and a flood of
//! random cookies costs bounded memory. `last_seen` is kept in memory and written
//! back at most once per [`TOUCH_PERSIST_INTERVAL`], without an fsync.
//! A session opened through an OAuth provider that is no longer configured
//! is no session (and is deleted): removing a provider logs its users out.
//! This module does not decide who may log in.
//!
//! **Sessions that end take everything with them.** Each session has a
//! public [`SessionHandle`]: a keyed hash (SHA-256 under a secret kept in
//! the store, truncated to 128 bits) of its id, so it names the session
//! without revealing the cookie. It is the `sid` claim of sigma's bearer
//! tokens ([`Sessions::lookup_token`]: the cache maps handles to ids; a
//! miss looks among the token user's sessions in the store once, and a
//! handle found dead is remembered, bounded, so replayed tokens of ended
//! sessions cost a hash probe) and the key under which the session's open
//! WebSockets are registered ([`Sockets`]). Logout, expiry (found on use
//! or by [`Sessions::sweep`], which the server runs every
//! [`SWEEP_INTERVAL`]), a deleted user and a changed password
//! ([`Sessions::revoke_user`]) remove the session from the store and the
//! cache, mark its handle dead, and close its sockets with 4401. An open
//! WebSocket does not keep its session alive: only requests (with the
//! cookie or a token) touch `last_seen`, so a socket alone ends with its
//! session's idle timeout.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cookie::{Cookie, SameSite};
use sha2::{Digest as _, Sha256};
use sigma_http::Header;

use crate::revoke::{Registration, SessionHandle, Sockets};
use crate::{Identity, Provider};
use sigma_core::WsCloser;
use sigma_store::{Revocation, SessionId, SessionRecord, Store, StoreError};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "sigma_session";

/// `last_seen` is written back to the store at most this often per session
/// (milliseconds; session times are unix milliseconds, so that short
/// timeouts are exact).
pub const TOUCH_PERSIST_INTERVAL: u64 = 60_000;

/// Most live sessions kept in memory; past it, the cache is cleared and
/// refilled from the store on demand (a bound, not an expected size).
const MAX_CACHED: usize = 100_000;

/// Most handles of ended sessions remembered; past it, they are forgotten
/// (a token of one then costs one store read again, and is refused).
const MAX_DEAD: usize = 100_000;

/// Most unknown session ids remembered (the negative cache of cookies);
/// past it, they are all forgotten (each then costs one store read
/// again, and is refused).
pub const MAX_UNKNOWN: usize = 16_384;

/// How often the server looks for expired sessions that still have open
/// sockets ([`Sessions::sweep`]): sockets close within this (plus the
/// close handshake) of their session's expiry.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// A session known to be live.
#[derive(Debug)]
struct Live {
    identity: Arc<Identity>,
    record: SessionRecord,
    handle: SessionHandle,
    last_seen: AtomicU64,
    persisted: AtomicU64,
}

/// The in-memory side of the sessions, under one lock.
#[derive(Default)]
struct Cache {
    live: HashMap<SessionId, Arc<Live>>,
    /// The ids of the cached sessions, by handle (the `sid` of tokens).
    by_handle: HashMap<SessionHandle, SessionId>,
    /// Handles of sessions that ended (the negative cache of tokens).
    dead: HashSet<SessionHandle>,
    /// Ids the store did not know (the negative cache of cookies).
    unknown: HashSet<SessionId>,
}

impl Cache {
    fn remove(&mut self, id: &SessionId) -> Option<Arc<Live>> {
        let live = self.live.remove(id)?;
        self.by_handle.remove(&live.handle);
        Some(live)
    }

    fn forget_unknown(&mut self, id: SessionId) {
        if self.unknown.len() >= MAX_UNKNOWN {
            self.unknown.clear();
        }
        self.unknown.insert(id);
    }

    fn bury(&mut self, handle: SessionHandle) {
        if self.dead.len() >= MAX_DEAD {
            self.dead.clear();
        }
        self.dead.insert(handle);
    }
}

/// The store could not be asked about a session (PostgreSQL is
/// unreachable) and it is not cached: neither live nor gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDown;

/// The session manager of a sigma process.
pub struct Sessions {
    store: Arc<dyn Store>,
    cache: RwLock<Cache>,
    /// The key of [`Sessions::handle`].
    handle_key: [u8; 32],
    /// The open sockets of each session.
    sockets: Sockets,
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
    /// `handle_key` keys the session handles (a secret from the store).
    pub fn new(
        store: Arc<dyn Store>,
        idle: Duration,
        lifetime: Duration,
        secure: bool,
        oauth_providers: BTreeSet<String>,
        handle_key: [u8; 32],
    ) -> Self {
        Self {
            store,
            cache: RwLock::new(Cache::default()),
            handle_key,
            sockets: Sockets::new(),
            idle: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            lifetime: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            secure,
            oauth_providers,
        }
    }

    /// The public handle of session `id` (see the module docs).
    pub fn handle(&self, id: &SessionId) -> SessionHandle {
        let mut h = Sha256::new();
        h.update(b"sigma-session-handle\0");
        h.update(self.handle_key);
        h.update(id.0);
        let digest: [u8; 32] = h.finalize().into();
        let mut out = [0u8; 16];
        for (o, d) in out.iter_mut().zip(digest) {
            *o = d;
        }
        SessionHandle(out)
    }

    /// The identity of a live session at `now` (unix ms), touching its
    /// `last_seen`. Expired sessions are ended (store, cache, sockets).
    pub fn lookup(&self, id: &SessionId, now: u64) -> Option<Arc<Identity>> {
        self.lookup_checked(id, now).ok().flatten()
    }

    /// [`Sessions::lookup`], telling a session that is not there from one
    /// the store could not be asked about ([`StoreDown`]: PostgreSQL is
    /// unreachable and the session is not cached).
    pub fn lookup_checked(
        &self,
        id: &SessionId,
        now: u64,
    ) -> Result<Option<Arc<Identity>>, StoreDown> {
        let Some(live) = self.live(id)? else {
            return Ok(None);
        };
        let last = live.last_seen.load(Ordering::Relaxed);
        if now >= live.record.expires || now >= last.saturating_add(self.idle) {
            self.end(id, live.handle);
            self.delete_later(id);
            return Ok(None);
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
        Ok(Some(Arc::clone(&live.identity)))
    }

    /// The session behind one of sigma's tokens, by its `sid` claim and
    /// its user (`sub`): the session's id and identity if it is live at
    /// `now` (touching it, like [`Sessions::lookup`]).
    pub fn lookup_token(
        &self,
        handle: &SessionHandle,
        user: &str,
        now: u64,
    ) -> Option<(SessionId, Arc<Identity>)> {
        let cached = {
            let c = self.cache.read().ok()?;
            if c.dead.contains(handle) {
                return None;
            }
            c.by_handle.get(handle).cloned()
        };
        let id = match cached {
            Some(id) => id,
            None => {
                // Not cached (a restart, or the cache was cleared): the
                // session is among its user's in the store, or gone.
                let found = off_executor(|| self.store.sessions_of_user(user))
                    .ok()
                    .and_then(|ids| ids.into_iter().find(|id| self.handle(id) == *handle));
                match found {
                    Some(id) => id,
                    // `sid` and `sub` are signed together by sigma: a
                    // handle not among its user's sessions has ended.
                    None => {
                        if let Ok(mut c) = self.cache.write() {
                            c.bury(*handle);
                        }
                        return None;
                    }
                }
            }
        };
        let identity = self.lookup(&id, now)?;
        (identity.user == user).then_some((id, identity))
    }

    /// The cached session `id`, reading the store on a miss. A session
    /// that ended meanwhile (its handle is dead) is not cached again.
    fn live(&self, id: &SessionId) -> Result<Option<Arc<Live>>, StoreDown> {
        {
            let Ok(c) = self.cache.read() else {
                return Ok(None);
            };
            if let Some(live) = c.live.get(id) {
                return Ok(Some(Arc::clone(live)));
            }
            if c.unknown.contains(id) {
                return Ok(None);
            }
        }
        let record = match off_executor(|| self.store.session_get(id)) {
            Ok(Some(record)) => record,
            Ok(None) => {
                if let Ok(mut c) = self.cache.write() {
                    c.forget_unknown(id.clone());
                }
                return Ok(None);
            }
            // A store error is not "unknown": the next request asks again.
            Err(e) if e.is_unavailable() => return Err(StoreDown),
            Err(_) => return Ok(None),
        };
        let handle = self.handle(id);
        // The user's groups (policies): the local user record's if there
        // is one, and those the login brought (OIDC); a store error leaves
        // the session uncached.
        let mut groups = match off_executor(|| self.store.user_get(&record.user)) {
            Ok(user) => user.map(|u| u.groups).unwrap_or_default(),
            Err(e) if e.is_unavailable() => return Err(StoreDown),
            Err(_) => return Ok(None),
        };
        groups.extend(record.groups.iter().cloned());
        groups.sort();
        groups.dedup();
        let Some(identity) = identity_of(&record, &self.oauth_providers, handle, groups) else {
            // Opened through a provider that is gone from the
            // configuration (or an unknown kind): no session.
            self.delete_later(id);
            return Ok(None);
        };
        let live = Arc::new(Live {
            identity: Arc::new(identity),
            last_seen: AtomicU64::new(record.last_seen),
            persisted: AtomicU64::new(record.last_seen),
            handle,
            record,
        });
        let Ok(mut c) = self.cache.write() else {
            return Ok(None);
        };
        // Ended between the store read and now (a logout racing this
        // lookup): it must not come back.
        if c.dead.contains(&handle) {
            return Ok(None);
        }
        if c.live.len() >= MAX_CACHED {
            c.live.clear();
            c.by_handle.clear();
        }
        c.live.insert(id.clone(), Arc::clone(&live));
        c.by_handle.insert(handle, id.clone());
        Ok(Some(live))
    }

    /// True if session `id` is live at `now`, without touching it.
    fn alive(&self, id: &SessionId, now: u64) -> bool {
        self.live(id).ok().flatten().is_some_and(|live| {
            let last = live.last_seen.load(Ordering::Relaxed);
            now < live.record.expires && now < last.saturating_add(self.idle)
        })
    }

    /// A session ended: out of the cache, its handle dead, its sockets
    /// closed (4401). The store is the caller's.
    fn end(&self, id: &SessionId, handle: SessionHandle) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(id);
            c.bury(handle);
        }
        self.sockets.revoke(&handle);
    }

    /// Registers an open WebSocket of session `id` (user `user`) so that
    /// it closes when the session ends. One registered just as the session
    /// ended is closed at once.
    pub fn register_socket(&self, id: &SessionId, user: &str, closer: WsCloser) -> Registration {
        let handle = self.handle(id);
        let reg = self.sockets.register(handle, id, user, closer);
        let dead = self
            .cache
            .read()
            .map(|c| c.dead.contains(&handle))
            .unwrap_or(true);
        if dead {
            self.sockets.revoke(&handle);
        }
        reg
    }

    /// Ends the sessions that expired by `now` and still have open
    /// sockets, closing those (4401); how many sessions. Reads the store
    /// for sessions not cached: call it off the executor.
    pub fn sweep(&self, now: u64) -> usize {
        let mut ended = 0;
        for (handle, id) in self.sockets.sessions() {
            if !self.alive(&id, now) {
                self.end(&id, handle);
                self.delete_later(&id);
                ended += 1;
            }
        }
        ended
    }

    /// The number of open sockets registered under a session.
    pub fn open_sockets(&self) -> usize {
        self.sockets.len()
    }

    /// Opens a session for `user` at `now` (unix ms), durably, with the
    /// `groups` its login brought (an OIDC groups claim); returns its id.
    pub fn create(
        &self,
        user: &str,
        provider: &Provider,
        groups: Vec<String>,
        now: u64,
    ) -> Result<SessionId, StoreError> {
        let id = SessionId::generate()?;
        let record = SessionRecord {
            user: user.to_owned(),
            provider: provider.to_string(),
            created: now,
            last_seen: now,
            expires: now.saturating_add(self.lifetime),
            groups,
        };
        self.store.session_put(&id, &record, true)?;
        // A fresh 256-bit id is not in the negative cache; make sure.
        if let Ok(mut c) = self.cache.write() {
            c.unknown.remove(&id);
        }
        Ok(id)
    }

    /// Revokes a session: its sockets close (4401), its tokens are
    /// refused, and it is deleted from the store.
    pub fn revoke(&self, id: &SessionId) -> Result<bool, StoreError> {
        let handle = self.handle(id);
        self.end(id, handle);
        let existed = self.store.session_delete(id)?;
        // Other nodes on a shared store close their sockets of it too.
        if let Err(e) = self
            .store
            .announce_revocation(&Revocation::Session(handle.encode()))
        {
            tracing::warn!(error = %e, "could not announce a session's end to the other nodes");
        }
        Ok(existed)
    }

    /// A revocation another node announced: the session (by handle) or
    /// every session of the user ends here too, in memory (its record is
    /// already gone from the shared store): cache, tokens, sockets (4401).
    pub fn on_remote(&self, revocation: &Revocation) -> usize {
        match revocation {
            Revocation::User(user) => self.end_user(user),
            Revocation::Groups(user) => self.refresh_user(user),
            // Not a session (A's API keys handle it).
            Revocation::ApiKey(_) => 0,
            Revocation::Session(encoded) => {
                let Some(handle) = SessionHandle::parse(encoded) else {
                    return 0;
                };
                if let Ok(mut c) = self.cache.write() {
                    if let Some(id) = c.by_handle.get(&handle).cloned() {
                        c.remove(&id);
                    }
                    c.bury(handle);
                }
                self.sockets.revoke(&handle)
            }
        }
    }

    /// Ends every session of `user` in memory: cache, tokens, sockets
    /// (4401). The hook of a user deletion or a password change, whose
    /// store transaction already deleted the sessions' records.
    pub fn revoke_user(&self, user: &str) -> usize {
        let closed = self.end_user(user);
        if let Err(e) = self
            .store
            .announce_revocation(&Revocation::User(user.to_owned()))
        {
            tracing::warn!(error = %e, "could not announce a user's sessions' end to the other nodes");
        }
        closed
    }

    /// [`Sessions::revoke_user`] without telling the other nodes.
    fn end_user(&self, user: &str) -> usize {
        if let Ok(mut c) = self.cache.write() {
            let ended: Vec<(SessionId, SessionHandle)> = c
                .live
                .iter()
                .filter(|(_, live)| live.record.user == user)
                .map(|(id, live)| (id.clone(), live.handle))
                .collect();
            for (id, handle) in ended {
                c.remove(&id);
                c.bury(handle);
            }
        }
        self.sockets.revoke_user(user)
    }

    /// Forgets the cached identities of `user`'s sessions (which stay
    /// open): the next request reads them again, with the user's groups
    /// as they are now. The hook of `sigma user groups`.
    pub fn refresh_user(&self, user: &str) -> usize {
        let Ok(mut c) = self.cache.write() else {
            return 0;
        };
        let stale: Vec<SessionId> = c
            .live
            .iter()
            .filter(|(_, live)| live.record.user == user)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &stale {
            c.remove(id);
        }
        stale.len()
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

/// Runs a blocking store read without stalling the executor: on the
/// multi-threaded runtime the worker hands its other tasks to another
/// thread for the duration (`block_in_place`); elsewhere (a
/// current-thread runtime, no runtime) it just runs.
pub(crate) fn off_executor<T>(read: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(read)
        }
        _ => read(),
    }
}

/// The identity a session record stands for: `password`, or
/// `oauth:<name>` of a configured provider. Anything else (a provider
/// removed from the configuration, an unknown kind) is no identity, and
/// never taken for a password login. It carries the session's public
/// `handle`, never its id.
fn identity_of(
    record: &SessionRecord,
    oauth_providers: &BTreeSet<String>,
    handle: SessionHandle,
    groups: Vec<String>,
) -> Option<Identity> {
    let provider = match record.provider.strip_prefix("oauth:") {
        Some(name) if oauth_providers.contains(name) => Provider::OAuth(name.to_owned()),
        None if record.provider == "password" => Provider::Password,
        _ => return None,
    };
    Some(Identity {
        user: record.user.clone(),
        provider,
        world: None,
        session: Some(handle.to_ref()),
        groups,
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
    use sigma_core::{ws_push_queue, WsReceiver};
    use sigma_store::{RedbStore, UserRecord, UserStore};

    const IDLE: u64 = 10_000;
    const LIFE: u64 = 60_000;

    fn sessions(store: &Arc<dyn Store>) -> Sessions {
        Sessions::new(
            Arc::clone(store),
            Duration::from_millis(IDLE),
            Duration::from_millis(LIFE),
            false,
            BTreeSet::new(),
            [9; 32],
        )
    }

    fn store() -> Arc<dyn Store> {
        let s = RedbStore::in_memory().unwrap();
        for u in ["alice", "bob"] {
            let rec = UserRecord {
                phc: "x".into(),
                created: 0,
                groups: Vec::new(),
            };
            assert!(s.user_create(u, &rec).unwrap());
        }
        Arc::new(s)
    }

    fn socket(s: &Sessions, id: &SessionId, user: &str) -> (Registration, WsReceiver) {
        let (tx, rx) = ws_push_queue();
        (s.register_socket(id, user, tx.closer()), rx)
    }

    #[test]
    fn unknown_ids_are_negatively_cached_and_bounded() {
        let store = store();
        let s = sessions(&store);
        let id = SessionId::generate().unwrap();
        assert!(s.lookup(&id, 1).is_none());
        // The store learns the id behind A's back: A does not read the
        // store for it again (it is remembered as unknown).
        let record = SessionRecord {
            user: "alice".into(),
            provider: Provider::Password.to_string(),
            created: 1,
            last_seen: 1,
            expires: LIFE,
            groups: Vec::new(),
        };
        store.session_put(&id, &record, false).unwrap();
        assert!(s.lookup(&id, 2).is_none());
        // A session A creates itself is found at once.
        let made = s
            .create("alice", &Provider::Password, Vec::new(), 3)
            .unwrap();
        assert_eq!(s.lookup(&made, 4).unwrap().user, "alice");
        // A flood of random cookies keeps the negative cache bounded.
        for _ in 0..MAX_UNKNOWN + 10 {
            assert!(s.lookup(&SessionId::generate().unwrap(), 5).is_none());
        }
        let unknown = s.cache.read().unwrap().unknown.len();
        assert!(unknown <= MAX_UNKNOWN, "{unknown}");
        // Forgotten with the rest: the record is found now.
        assert_eq!(s.lookup(&id, 6).unwrap().user, "alice");
    }

    /// A store read on the multi-threaded runtime runs in place, off the
    /// executor's other tasks, and answers like any other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cache_miss_reads_the_store_on_the_multi_threaded_runtime() {
        let store = store();
        let s = sessions(&store);
        let id = s.create("bob", &Provider::Password, Vec::new(), 1).unwrap();
        let fresh = sessions(&store);
        assert_eq!(fresh.lookup(&id, 2).unwrap().user, "bob");
        assert!(fresh.lookup(&SessionId::generate().unwrap(), 2).is_none());
    }

    #[test]
    fn handles_are_keyed_and_do_not_show_the_id() {
        let store = store();
        let s = sessions(&store);
        let id = SessionId([3; 32]);
        let h = s.handle(&id);
        assert_eq!(h, s.handle(&id));
        assert_ne!(h, s.handle(&SessionId([4; 32])));
        assert!(!id.0.windows(4).any(|w| h.0.windows(4).any(|x| x == w)));
        let other_key = Sessions::new(
            store,
            Duration::from_secs(1),
            Duration::from_secs(1),
            false,
            BTreeSet::new(),
            [8; 32],
        );
        assert_ne!(h, other_key.handle(&id));
    }

    /// Logout, a deleted user (the in-process `revoke_user` hook) and
    /// expiry each end exactly their sessions: sockets marked, tokens
    /// refused; other sessions keep theirs.
    #[tokio::test]
    async fn ending_sessions_takes_their_sockets_and_tokens_only() {
        let store = store();
        let s = sessions(&store);
        let now = 1_000;
        let a = s
            .create("alice", &Provider::Password, Vec::new(), now)
            .unwrap();
        let b = s
            .create("alice", &Provider::Password, Vec::new(), now)
            .unwrap();
        let c = s
            .create("bob", &Provider::Password, Vec::new(), now)
            .unwrap();
        let (ha, hb, hc) = (s.handle(&a), s.handle(&b), s.handle(&c));
        let (_ra, sa) = socket(&s, &a, "alice");
        let (_ra2, sa2) = socket(&s, &a, "alice");
        let (_rb, sb) = socket(&s, &b, "alice");
        let (_rc, sc) = socket(&s, &c, "bob");
        assert!(s.lookup_token(&ha, "alice", now).is_some());
        assert!(s.lookup_token(&hc, "bob", now).is_some());
        // A token names its user: another's `sub` does not fit.
        assert!(s.lookup_token(&hc, "alice", now).is_none());
        assert_eq!(s.open_sockets(), 4);

        // Logout of `a`.
        assert!(s.revoke(&a).unwrap());
        assert!(sa.revoked() && sa2.revoked());
        assert!(!sb.revoked() && !sc.revoked());
        assert!(s.lookup_token(&ha, "alice", now).is_none());
        assert!(s.lookup(&a, now).is_none());
        assert!(s.lookup_token(&hb, "alice", now).is_some());

        // `sigma user del alice`: the store deletes the records, the hook
        // ends what is in memory.
        assert!(store.user_delete("alice").unwrap());
        assert_eq!(s.revoke_user("alice"), 1);
        assert!(sb.revoked() && !sc.revoked());
        assert!(s.lookup_token(&hb, "alice", now).is_none());
        assert!(s.lookup_token(&hc, "bob", now).is_some());

        // Expiry, found by the sweep with no request at all.
        assert_eq!(s.sweep(now + IDLE - 1), 0);
        assert!(!sc.revoked());
        assert_eq!(s.sweep(now + IDLE), 1);
        assert!(sc.revoked());
        assert!(s.lookup_token(&hc, "bob", now + IDLE).is_none());
        assert_eq!(s.open_sockets(), 0);
    }

    /// A session in use still ends at its lifetime, sockets included.
    #[test]
    fn the_sweep_ends_a_used_session_at_its_lifetime() {
        let store = store();
        let s = sessions(&store);
        let a = s
            .create("alice", &Provider::Password, Vec::new(), 0)
            .unwrap();
        let (_r, rx) = socket(&s, &a, "alice");
        let mut t = 0;
        while t + IDLE / 2 < LIFE {
            t += IDLE / 2;
            assert!(s.lookup(&a, t).is_some(), "used at {t}");
            assert_eq!(s.sweep(t), 0);
        }
        assert!(!rx.revoked());
        assert_eq!(s.sweep(LIFE), 1);
        assert!(rx.revoked());
        assert!(s.lookup(&a, LIFE).is_none());
    }

    #[test]
    fn tokens_survive_a_restart_but_not_the_session() {
        let store = store();
        let s = sessions(&store);
        let a = s
            .create("alice", &Provider::Password, Vec::new(), 1_000)
            .unwrap();
        let h = s.handle(&a);
        // A new process, same store and key: the handle is found among
        // the user's sessions, then cached.
        let s2 = sessions(&store);
        assert!(s2.lookup_token(&h, "alice", 2_000).is_some());
        assert!(s2.revoke(&a).unwrap());
        assert!(s2.lookup_token(&h, "alice", 2_000).is_none());
        // Never a session again, even after the first process's cache.
        let s3 = sessions(&store);
        assert!(s3.lookup_token(&h, "alice", 2_000).is_none());
        assert!(s3.cache.read().unwrap().dead.contains(&h));
    }

    #[test]
    fn a_socket_registered_as_its_session_ends_is_closed_at_once() {
        let store = store();
        let s = sessions(&store);
        let a = s
            .create("alice", &Provider::Password, Vec::new(), 1_000)
            .unwrap();
        assert!(s.lookup(&a, 1_000).is_some());
        s.revoke(&a).unwrap();
        // The upgrade resolved the session just before the logout.
        let (_r, rx) = socket(&s, &a, "alice");
        assert!(rx.revoked());
    }

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
            groups: Vec::new(),
        };
        let known: BTreeSet<String> = ["corp".to_string()].into_iter().collect();
        let provider = |p: &str| {
            identity_of(&rec(p), &known, SessionHandle([0; 16]), Vec::new()).map(|i| i.provider)
        };
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
