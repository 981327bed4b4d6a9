//! The WebSockets open on one route, so that a reload that removes the
//! route (or changes its destination) can close them with 1001 (DESIGN §8).
//!
//! ```text
//!  dispatch (upgrade) ──register(push)──▶ [ RouteSockets ] ◀──retire── reload
//!                                              │ close(1001) through each push queue
//!                                              ▼
//!                                    conn ──▶ H: close frame 1001
//! ```
//!
//! A route that a reload keeps hands its `RouteSockets` to the new table
//! with its destination, so its sockets go on untouched. The list holds
//! each socket's push sender; closed sockets are pruned as it grows, so it
//! is bounded by the sockets open on the route (itself bounded by
//! `server.max_connections`). It knows nothing of the route table.

use std::sync::Mutex;

use sigma_core::push::WsSender;

/// The close code of a socket whose route a reload removed (RFC 6455
/// "going away").
pub const WS_CLOSE_ROUTE_GONE: u16 = 1001;

/// The close reason sent with [`WS_CLOSE_ROUTE_GONE`].
pub const ROUTE_GONE_REASON: &str = "route removed by a reload";

/// The list is pruned of closed sockets when it reaches this length, then
/// again at twice what is left (amortised O(1) per registration).
const FIRST_PRUNE: usize = 64;

/// The WebSockets open on one route.
#[derive(Debug, Default)]
pub struct RouteSockets {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// A reload removed the route: a socket registered now is closed at once
    /// (its upgrade raced the reload on the old table).
    retired: bool,
    open: Vec<WsSender>,
    prune_at: usize,
}

impl RouteSockets {
    /// Remembers the socket whose push queue `push` feeds.
    pub fn register(&self, push: WsSender) {
        let mut g = self.lock();
        if g.retired {
            drop(g);
            let _ = push.close(WS_CLOSE_ROUTE_GONE, ROUTE_GONE_REASON);
            return;
        }
        if g.open.len() >= g.prune_at.max(FIRST_PRUNE) {
            g.open.retain(|s| !s.is_closed());
            g.prune_at = g.open.len().saturating_mul(2);
        }
        g.open.push(push);
    }

    /// The route is gone: asks every socket still open on it to close with
    /// [`WS_CLOSE_ROUTE_GONE`] (after what is already queued for it), and
    /// closes those that come later. Returns how many were asked.
    pub fn retire(&self) -> usize {
        let open = {
            let mut g = self.lock();
            g.retired = true;
            std::mem::take(&mut g.open)
        };
        open.iter()
            .filter(|s| s.close(WS_CLOSE_ROUTE_GONE, ROUTE_GONE_REASON).is_ok())
            .count()
    }

    /// Sockets registered and not yet seen closed (an upper bound).
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// True if no socket is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigma_core::push::{ws_push_queue, Pushed};

    #[tokio::test]
    async fn retire_closes_open_sockets_with_1001_and_later_ones_at_once() {
        let s = RouteSockets::default();
        let (a, mut ra) = ws_push_queue();
        s.register(a);
        assert_eq!(s.retire(), 1);
        match ra.recv().await {
            Pushed::Close { code, reason } => {
                assert_eq!(code, 1001);
                assert_eq!(reason, ROUTE_GONE_REASON);
            }
            other => panic!("{other:?}"),
        }
        // An upgrade that raced the reload.
        let (b, mut rb) = ws_push_queue();
        s.register(b);
        assert!(matches!(rb.recv().await, Pushed::Close { code: 1001, .. }));
        assert!(s.is_empty());
    }

    #[test]
    fn closed_sockets_are_pruned() {
        let s = RouteSockets::default();
        let mut keep = Vec::new();
        for i in 0..1000 {
            let (tx, rx) = ws_push_queue();
            s.register(tx);
            if i % 100 == 0 {
                keep.push(rx);
            }
        }
        // 10 stay open; the list never holds more than about twice that
        // beyond the first prune threshold.
        assert!(s.len() <= FIRST_PRUNE * 2, "{}", s.len());
    }
}
