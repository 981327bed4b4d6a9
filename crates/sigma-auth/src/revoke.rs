//! `A`: the open WebSockets of each login session, so that a session that
//! ends takes its sockets with it (DESIGN §4, "Revocation is immediate").
//!
//! ```text
//!  dispatch, at the upgrade ──register(handle, user, closer)──▶ [ A: Sockets ]
//!  logout · expiry · user deleted · password changed ──revoke──▶ [ Sockets ]
//!        ──WsCloser::revoke──▶ each socket of the session: endpoint dropped, close 4401
//! ```
//!
//! A socket authenticated by the session cookie, or by one of sigma's own
//! bearer tokens (whose `sid` names the session), is registered under the
//! session's [`SessionHandle`] for as long as it is open: the
//! [`Registration`] its connection holds removes it when dropped, so the
//! registry is bounded by the open sockets. Sockets authenticated by an
//! external issuer's token are bound to no sigma session and never
//! registered. This module only keeps the handles; [`super::session`]
//! decides when a session ends and calls [`Sockets::revoke`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use sigma_core::{SessionRef, WsCloser};
use sigma_store::SessionId;

/// A session's public name: a keyed hash of its id (the id is the cookie,
/// a secret; the handle is not, and does not reveal the id). It is the
/// `sid` claim of sigma's bearer tokens and the registry's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHandle(pub [u8; 16]);

/// Length of [`SessionHandle::encode`]: 16 bytes in unpadded base64url.
pub const SESSION_HANDLE_LEN: usize = 22;

impl SessionHandle {
    /// The handle as the identity carries it ([`Identity::session`]).
    ///
    /// [`Identity::session`]: sigma_core::Identity::session
    pub fn to_ref(self) -> SessionRef {
        SessionRef::from_handle(self.0)
    }

    /// The unpadded base64url form (the `sid` claim).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses [`SessionHandle::encode`]'s form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != SESSION_HANDLE_LEN {
            return None;
        }
        let mut out = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut out) {
            Ok(16) => Some(Self(out)),
            _ => None,
        }
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, ..] = self.0;
        write!(f, "SessionHandle({a:02x}{b:02x}…)")
    }
}

/// The open sockets of one session.
struct Entry {
    id: SessionId,
    user: String,
    sockets: Vec<(u64, WsCloser)>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    sessions: HashMap<SessionHandle, Entry>,
    /// Sockets registered, over all sessions.
    count: usize,
}

/// The registry of open session-authenticated sockets.
#[derive(Default)]
pub struct Sockets {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Sockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sockets")
            .field("sockets", &self.len())
            .finish_non_exhaustive()
    }
}

/// One socket's place in the registry; dropping it (the connection ends)
/// removes the socket.
pub struct Registration {
    inner: Weak<Mutex<Inner>>,
    handle: SessionHandle,
    key: u64,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut g = lock(&inner);
        let Some(e) = g.sessions.get_mut(&self.handle) else {
            // Revoked meanwhile: the entry went with it.
            return;
        };
        let before = e.sockets.len();
        e.sockets.retain(|(k, _)| *k != self.key);
        let removed = before.saturating_sub(e.sockets.len());
        if e.sockets.is_empty() {
            g.sessions.remove(&self.handle);
        }
        g.count = g.count.saturating_sub(removed);
    }
}

/// The registry's lock; a poisoned lock is still used (its state is
/// consistent after every statement that can panic, and none does).
fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sockets {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a socket of session `handle` (id `id`, user `user`).
    pub fn register(
        &self,
        handle: SessionHandle,
        id: &SessionId,
        user: &str,
        closer: WsCloser,
    ) -> Registration {
        let mut g = lock(&self.inner);
        let key = g.next;
        g.next = g.next.wrapping_add(1);
        g.sessions
            .entry(handle)
            .or_insert_with(|| Entry {
                id: id.clone(),
                user: user.to_owned(),
                sockets: Vec::new(),
            })
            .sockets
            .push((key, closer));
        g.count = g.count.saturating_add(1);
        Registration {
            inner: Arc::downgrade(&self.inner),
            handle,
            key,
        }
    }

    /// Closes every socket of session `handle` (4401); how many.
    pub fn revoke(&self, handle: &SessionHandle) -> usize {
        let entry = {
            let mut g = lock(&self.inner);
            let e = g.sessions.remove(handle);
            if let Some(e) = &e {
                g.count = g.count.saturating_sub(e.sockets.len());
            }
            e
        };
        entry.map_or(0, |e| revoke_all(&e.sockets))
    }

    /// Closes every socket of every session of `user` (4401); how many.
    pub fn revoke_user(&self, user: &str) -> usize {
        let entries: Vec<Entry> = {
            let mut g = lock(&self.inner);
            let handles: Vec<SessionHandle> = g
                .sessions
                .iter()
                .filter(|(_, e)| e.user == user)
                .map(|(h, _)| *h)
                .collect();
            let taken: Vec<Entry> = handles
                .iter()
                .filter_map(|h| g.sessions.remove(h))
                .collect();
            let n: usize = taken.iter().map(|e| e.sockets.len()).sum();
            g.count = g.count.saturating_sub(n);
            taken
        };
        entries.iter().map(|e| revoke_all(&e.sockets)).sum()
    }

    /// The sessions that have open sockets (for the expiry sweep).
    pub fn sessions(&self) -> Vec<(SessionHandle, SessionId)> {
        lock(&self.inner)
            .sessions
            .iter()
            .map(|(h, e)| (*h, e.id.clone()))
            .collect()
    }

    /// The number of registered sockets.
    pub fn len(&self) -> usize {
        lock(&self.inner).count
    }

    /// True when no socket is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn revoke_all(sockets: &[(u64, WsCloser)]) -> usize {
    for (_, c) in sockets {
        c.revoke();
    }
    sockets.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sigma_core::{ws_push_queue, Pushed, WsReceiver};

    fn socket() -> (WsCloser, WsReceiver) {
        let (tx, rx) = ws_push_queue();
        (tx.closer(), rx)
    }

    fn id(n: u8) -> SessionId {
        SessionId([n; 32])
    }

    fn handle(n: u8) -> SessionHandle {
        SessionHandle([n; 16])
    }

    #[test]
    fn handle_round_trip() {
        let h = SessionHandle([0xa5; 16]);
        let s = h.encode();
        assert_eq!(s.len(), SESSION_HANDLE_LEN);
        assert_eq!(SessionHandle::parse(&s), Some(h));
        assert_eq!(SessionHandle::parse(""), None);
        assert_eq!(SessionHandle::parse(&format!("{s}A")), None);
        assert_eq!(SessionHandle::parse(&"!".repeat(SESSION_HANDLE_LEN)), None);
        // Non-canonical trailing bits: one spelling per handle.
        let mut odd = s.clone();
        odd.pop();
        odd.push('B');
        assert_eq!(SessionHandle::parse(&odd), None);
    }

    #[tokio::test]
    async fn revoke_closes_the_sessions_sockets_first() {
        let reg = Sockets::new();
        let (tx, mut rx) = ws_push_queue();
        let _r = reg.register(handle(1), &id(1), "alice", tx.closer());
        // Something already queued does not get out before the close.
        tx.push(crate::Tagged::new(
            None,
            sigma_http::WsMessage::Text("queued".into()),
        ))
        .unwrap();
        assert_eq!(reg.revoke(&handle(1)), 1);
        assert!(matches!(rx.recv().await, Pushed::Revoked));
        assert!(reg.is_empty());
        // A second revocation finds nothing.
        assert_eq!(reg.revoke(&handle(1)), 0);
    }

    #[tokio::test]
    async fn revoke_wakes_a_waiting_connection() {
        let reg = Sockets::new();
        let (tx, mut rx) = ws_push_queue();
        let _r = reg.register(handle(1), &id(1), "alice", tx.closer());
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        reg.revoke(&handle(1));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert!(matches!(got, Pushed::Revoked));
    }

    #[test]
    fn revoke_user_takes_every_session_of_that_user_only() {
        let reg = Sockets::new();
        let (a1, ra1) = socket();
        let (a2, ra2) = socket();
        let (b, rb) = socket();
        let _g = [
            reg.register(handle(1), &id(1), "alice", a1),
            reg.register(handle(2), &id(2), "alice", a2),
            reg.register(handle(3), &id(3), "bob", b),
        ];
        assert_eq!(reg.revoke_user("alice"), 2);
        assert!(ra1.revoked() && ra2.revoked());
        assert!(!rb.revoked());
        assert_eq!(reg.len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register(u8),
        Drop(usize),
        Revoke(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Register),
            (0usize..16).prop_map(Op::Drop),
            (0u8..4).prop_map(Op::Revoke),
        ]
    }

    proptest! {
        /// Whatever the order of registrations, closes and revocations:
        /// a revocation marks exactly the open sockets of that session,
        /// never another's, and the registry holds exactly the sockets
        /// that are open and not revoked (it empties when they close).
        #[test]
        fn registry_model(ops in proptest::collection::vec(op(), 0..64)) {
            let reg = Sockets::new();
            // (session, registration, receiver, revoked by the model)
            let mut open: Vec<(u8, Option<Registration>, WsReceiver, bool)> = Vec::new();
            for op in ops {
                match op {
                    Op::Register(s) => {
                        let (c, rx) = socket();
                        let r = reg.register(handle(s), &id(s), "u", c);
                        open.push((s, Some(r), rx, false));
                    }
                    Op::Drop(i) => {
                        if !open.is_empty() {
                            let i = i % open.len();
                            open.remove(i);
                        }
                    }
                    Op::Revoke(s) => {
                        let expect = open.iter().filter(|o| o.0 == s && !o.3).count();
                        prop_assert_eq!(reg.revoke(&handle(s)), expect);
                        for o in open.iter_mut().filter(|o| o.0 == s) {
                            o.3 = true;
                            // The registration no longer counts, and its
                            // drop later changes nothing.
                            drop(o.1.take());
                        }
                    }
                }
                for o in &open {
                    prop_assert_eq!(o.2.revoked(), o.3);
                }
                let live = open.iter().filter(|o| !o.3).count();
                prop_assert_eq!(reg.len(), live);
                let mut sessions: Vec<u8> = open.iter().filter(|o| !o.3).map(|o| o.0).collect();
                sessions.sort_unstable();
                sessions.dedup();
                prop_assert_eq!(reg.sessions().len(), sessions.len());
            }
            open.clear();
            prop_assert!(reg.is_empty());
            prop_assert!(reg.sessions().is_empty());
        }
    }
}
