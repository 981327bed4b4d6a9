//! The watch registry: which sockets watch which prefixes of which
//! namespace, told of every durable write (in commit order: the caller
//! holds the write lock).
//!
//! A change is pushed at most once per socket, tagged with that socket's
//! own identity (the reply rule checks it again on the way out). A socket
//! whose push queue is gone or full is forgotten; so is every socket of a
//! connection that ends ([`Registry::forget`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde_json::json;
use sigma_core::{Principal, Tagged, WsSender};
use sigma_http::{Utf8Bytes, WsMessage};

use super::{etag, Change, Fail, MAX_WATCHES_PER_SOCKET};

/// One watching socket.
struct Watcher {
    identity: Principal,
    push: WsSender,
    prefixes: Vec<String>,
}

/// Namespace → socket id → its watches.
#[derive(Default)]
pub(super) struct Registry {
    users: Mutex<HashMap<String, HashMap<u64, Watcher>>>,
    next_socket: AtomicU64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, Watcher>>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh socket id.
    pub(super) fn socket_id(&self) -> u64 {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    /// Socket `socket` of `ns` (authenticated as `identity`, pushing
    /// through `push`) watches `prefix` from now on.
    pub(super) fn watch(
        &self,
        ns: &str,
        socket: u64,
        identity: &Principal,
        push: &WsSender,
        prefix: &str,
    ) -> Result<(), Fail> {
        let mut users = self.lock();
        let sockets = users.entry(ns.to_owned()).or_default();
        let w = sockets.entry(socket).or_insert_with(|| Watcher {
            identity: identity.clone(),
            push: push.clone(),
            prefixes: Vec::new(),
        });
        if w.prefixes.iter().any(|p| p == prefix) {
            return Ok(());
        }
        if w.prefixes.len() >= MAX_WATCHES_PER_SOCKET {
            return Err(Fail::TooManyWatches);
        }
        w.prefixes.push(prefix.to_owned());
        Ok(())
    }

    /// Socket `socket` of `ns` stops watching `prefix`.
    pub(super) fn unwatch(&self, ns: &str, socket: u64, prefix: &str) {
        let mut users = self.lock();
        if let Some(sockets) = users.get_mut(ns) {
            if let Some(w) = sockets.get_mut(&socket) {
                w.prefixes.retain(|p| p != prefix);
                if w.prefixes.is_empty() {
                    sockets.remove(&socket);
                }
            }
            if sockets.is_empty() {
                users.remove(ns);
            }
        }
    }

    /// Forgets every watch of socket `socket` of `ns`.
    pub(super) fn forget(&self, ns: &str, socket: u64) {
        let mut users = self.lock();
        if let Some(sockets) = users.get_mut(ns) {
            sockets.remove(&socket);
            if sockets.is_empty() {
                users.remove(ns);
            }
        }
    }

    /// Tells the watchers of `ns` whose prefix `key` has about `change`.
    pub(super) fn notify(&self, ns: &str, key: &str, change: Change) {
        let mut users = self.lock();
        let Some(sockets) = users.get_mut(ns) else {
            return;
        };
        let mut msg: Option<Utf8Bytes> = None;
        sockets.retain(|_, w| {
            if !w.prefixes.iter().any(|p| key.starts_with(p.as_str())) {
                return true;
            }
            let text = msg
                .get_or_insert_with(|| change_message(key, change))
                .clone();
            // Gone, or too slow and being closed: either way, forget it.
            w.push
                .push(Tagged::new(w.identity.clone(), WsMessage::Text(text)))
                .is_ok()
        });
        if sockets.is_empty() {
            users.remove(ns);
        }
    }

    /// How many sockets watch something in `ns`.
    #[cfg(test)]
    pub(super) fn sockets(&self, ns: &str) -> usize {
        self.lock().get(ns).map_or(0, HashMap::len)
    }
}

/// `{"type":"change","key":K,"etag":E}` (`etag` `null`: deleted).
fn change_message(key: &str, change: Change) -> Utf8Bytes {
    let v = match change {
        Change::Put(version) => {
            json!({"type": "change", "key": key, "etag": etag(version)})
        }
        Change::Delete => json!({"type": "change", "key": key, "etag": null}),
    };
    Utf8Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_core::Identity;
    use sigma_core::{ws_push_queue, Pushed};
    use std::sync::Arc;

    fn id(user: &str) -> Principal {
        Some(Arc::new(Identity {
            user: user.into(),
            provider: sigma_core::Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }))
    }

    fn next(rx: &mut sigma_core::WsReceiver) -> Option<(Principal, serde_json::Value)> {
        let rt = tokio::runtime::Builder::new_current_thread().build().ok()?;
        rt.block_on(async {
            tokio::select! {
                p = rx.recv() => match p {
                    Pushed::Message(Tagged { identity, msg: WsMessage::Text(t) }) => {
                        Some((identity, serde_json::from_str(t.as_str()).ok()?))
                    }
                    _ => None,
                },
                _ = tokio::task::yield_now() => None,
            }
        })
    }

    #[test]
    fn notifies_matching_watchers_once_with_their_identity() {
        let r = Registry::default();
        let (a_tx, mut a_rx) = ws_push_queue();
        let (b_tx, mut b_rx) = ws_push_queue();
        let alice = id("alice");
        let (s1, s2) = (r.socket_id(), r.socket_id());
        r.watch("alice", s1, &alice, &a_tx, "a/").unwrap();
        r.watch("alice", s1, &alice, &a_tx, "a/b").unwrap();
        r.watch("bob", s2, &id("bob"), &b_tx, "").unwrap();
        r.notify("alice", "a/b/c", Change::Put(3));
        let (who, v) = next(&mut a_rx).unwrap();
        assert_eq!(who, alice);
        assert_eq!(
            v,
            json!({"type": "change", "key": "a/b/c", "etag": "\"v3\""})
        );
        // Once per socket, even with two matching prefixes.
        assert!(next(&mut a_rx).is_none());
        // Not bob's namespace.
        assert!(next(&mut b_rx).is_none());
        r.notify("alice", "b", Change::Delete);
        assert!(next(&mut a_rx).is_none());
        r.notify("bob", "x", Change::Delete);
        let (_, v) = next(&mut b_rx).unwrap();
        assert_eq!(v, json!({"type": "change", "key": "x", "etag": null}));
    }

    #[test]
    fn forgets_closed_sockets_and_limits_prefixes() {
        let r = Registry::default();
        let (tx, rx) = ws_push_queue();
        let s = r.socket_id();
        for i in 0..MAX_WATCHES_PER_SOCKET {
            r.watch("u", s, &None, &tx, &format!("p{i}")).unwrap();
        }
        // The same prefix again is fine; one more is not.
        r.watch("u", s, &None, &tx, "p0").unwrap();
        assert_eq!(
            r.watch("u", s, &None, &tx, "other"),
            Err(Fail::TooManyWatches)
        );
        assert_eq!(r.sockets("u"), 1);
        drop(rx);
        r.notify("u", "p1", Change::Delete);
        assert_eq!(r.sockets("u"), 0);

        let (tx, _rx) = ws_push_queue();
        r.watch("u", s, &None, &tx, "a").unwrap();
        r.unwatch("u", s, "a");
        assert_eq!(r.sockets("u"), 0);
        r.watch("u", s, &None, &tx, "a").unwrap();
        r.forget("u", s);
        assert_eq!(r.sockets("u"), 0);
    }
}
