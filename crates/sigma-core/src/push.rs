//! The push queue: messages a destination sends a WebSocket client
//! unasked (deliveries), and the handles that close or revoke the socket.
//!
//! ```text
//!  destination ──WsSender::push──▶ [ bounded queue ] ──WsReceiver──▶ conn ──▶ H
//!  A's registry ──WsCloser::revoke──┘   (1024 messages, 4 MiB)
//! ```
//!
//! A fan-out must never wait for a slow client: a push into a full queue
//! fails at once and the socket is closed with 1008. This module holds
//! the queue only; the connection driver that drains it lives in `sigma`.
//!
//! One allocation per socket holds the whole queue (a mutex over the
//! queued items, their byte count, the marks and the connection's waker):
//! a fan-out to 10 000 sockets touches each socket's state once, in a few
//! cache lines, and an idle socket's queue holds no buffer at all. (A
//! tokio `mpsc` channel spread one push over five cache lines and kept a
//! 2 KiB block per idle socket; `WsSender::push` was 12 % of a fan-out's
//! profile.) The oldest item sits inline (see [`Fifo`]): a socket that
//! keeps up, the usual case, never touches a second buffer, neither when
//! the hub pushes nor when the connection takes.
//!
//! Every message is tagged for the reply rule. A connection makes its
//! queue for its socket's identity ([`ws_push_queue_for`]); a delivery
//! pushed with [`WsSender::push_as`] under that very identity (the same
//! `Arc`) is stored without the tag, and [`WsReceiver::recv_for`] hands it
//! over as checked only when the identity the caller expects is the
//! queue's. Any other tag travels with its message and meets the reply
//! rule as before. A fan-out thereby does not count each subscriber's
//! identity up and down once per delivery. An emptied queue says "nothing
//! new" without its lock (`ready`), so a delivery takes the lock once on
//! each side.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use sigma_http::WsMessage;

use crate::identity::{Principal, Tagged};

/// Messages queued toward one WebSocket client by a destination, beyond
/// what `H` already buffers. When it is full the client is not keeping up:
/// the push fails, and the socket is closed with 1008 (slow consumer)
/// rather than slowing down the sender (a fan-out must never wait).
pub const WS_PUSH_QUEUE: usize = 1024;

/// The payload bytes a socket's push queue holds at most (4 MiB, as `H`'s
/// default `websocket.max_outbound`): a push beyond it is a slow consumer
/// too (1008), so a few large messages cannot pile up what 1024 would.
/// A message is always admitted into an empty queue, so the bound is this
/// plus one message.
pub const WS_PUSH_BYTES: usize = 4 << 20;

/// Queue slots an emptied queue keeps (more are freed when it empties).
const KEEP_SLOTS: usize = 16;

/// What one socket's queue shares between its senders and its receiver.
#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// Set when the socket's session ended (see [`WsCloser`]); read
    /// without the lock.
    revoked: AtomicBool,
    /// Whether the receiver has something to look at under the lock (an
    /// item, the overflow mark, the last sender gone). Written only under
    /// the lock, read without it: a receiver that took the last item, and
    /// one polled again before anything new came, answer "nothing" without
    /// taking the lock (the lock's two atomic operations were most of
    /// `take`'s time in a fan-out, and each delivery took it three times).
    ready: AtomicBool,
    /// The identity of the socket the queue was made for
    /// ([`ws_push_queue_for`]; `None`: made for no socket in particular).
    /// A delivery tagged with exactly it is queued without its tag (see
    /// [`WsSender::push_as`]).
    own: Option<Principal>,
}

/// A FIFO whose oldest item is kept inline, beside the lock, and the rest
/// in a `VecDeque`. A fan-out walks thousands of sockets whose state is
/// out of the cache; with one message queued (a client that keeps up)
/// the push and the take touch only `Shared`, not a separate buffer, which
/// was a cache miss on each side (a third of `take`'s time in a profile).
#[derive(Debug, Default)]
struct Fifo {
    /// The oldest item, when `rest` holds none older.
    head: Option<Queued>,
    /// The items behind `head` (or, once `head` was taken, the oldest).
    rest: VecDeque<Queued>,
}

impl Fifo {
    fn len(&self) -> usize {
        self.rest
            .len()
            .saturating_add(usize::from(self.head.is_some()))
    }

    fn push_back(&mut self, q: Queued) {
        if self.head.is_none() && self.rest.is_empty() {
            self.head = Some(q);
        } else {
            self.rest.push_back(q);
        }
    }

    fn pop_front(&mut self) -> Option<Queued> {
        self.head.take().or_else(|| self.rest.pop_front())
    }

    /// Gives back a burst's room; a steady trickle keeps its few slots.
    fn shrink(&mut self) {
        if self.rest.capacity() > KEEP_SLOTS {
            self.rest = VecDeque::new();
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    queue: Fifo,
    /// Payload bytes queued and not yet taken by the connection.
    bytes: usize,
    /// A push found the queue full: the socket closes with 1008.
    slow: bool,
    /// Live [`WsSender`]s and [`WsCloser`]s; at 0 nothing more can come.
    senders: usize,
    /// The receiver is gone (the socket ended).
    closed: bool,
    /// The connection's waker. It stays registered (woken by reference)
    /// until the receiver goes, so that a delivery does not clone it anew.
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned queue is still a
        // consistent one.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `q` (of `n` payload bytes) unless the queue is full or gone.
    fn enqueue(&self, q: Queued, n: usize) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(PushError::Closed);
        }
        let total = inner.bytes.checked_add(n);
        let room = inner.queue.len() < WS_PUSH_QUEUE
            && (n == 0 || inner.bytes == 0 || total.is_some_and(|t| t <= WS_PUSH_BYTES));
        let result = match total {
            Some(total) if room => {
                inner.bytes = total;
                inner.queue.push_back(q);
                Ok(())
            }
            _ => {
                inner.slow = true;
                Err(PushError::SlowConsumer)
            }
        };
        // A full queue wakes the connection too: it closes.
        Self::notify(&inner, &self.ready);
        result
    }

    /// Marks the queue worth a look and wakes the connection, under the
    /// lock (`ready` changes only under it). Waking by reference keeps the
    /// waker registered; a tokio waker only schedules the task.
    fn notify(inner: &Inner, ready: &AtomicBool) {
        ready.store(true, Ordering::Release);
        if let Some(w) = &inner.waker {
            w.wake_by_ref();
        }
    }

    fn wake(&self) {
        let inner = self.lock();
        if let Some(w) = &inner.waker {
            w.wake_by_ref();
        }
    }

    fn add_sender(self: &Arc<Self>) -> Arc<Self> {
        let mut inner = self.lock();
        inner.senders = inner.senders.saturating_add(1);
        drop(inner);
        Arc::clone(self)
    }

    fn drop_sender(&self) {
        let mut inner = self.lock();
        inner.senders = inner.senders.saturating_sub(1);
        if inner.senders == 0 {
            Self::notify(&inner, &self.ready);
        }
    }
}

/// The sending half of a socket's push queue (cheap to clone).
#[derive(Debug)]
pub struct WsSender {
    shared: Arc<Shared>,
}

impl Clone for WsSender {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.add_sender(),
        }
    }
}

impl Drop for WsSender {
    fn drop(&mut self) {
        self.shared.drop_sender();
    }
}

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The client is too slow; its socket is being closed (1008).
    SlowConsumer,
    /// The socket is gone.
    Closed,
}

impl WsSender {
    /// Queues `msg` without waiting.
    pub fn push(&self, msg: Tagged<WsMessage>) -> Result<(), PushError> {
        let n = msg.msg.len();
        self.shared.enqueue(Queued::Message(msg), n)
    }

    /// Queues `msg` tagged with `identity`, like [`WsSender::push`]; when
    /// `identity` is the very one the queue was made for (the same `Arc`),
    /// the tag is not stored, so a fan-out does not count a reference to
    /// each subscriber's identity up and down once per delivery (two
    /// locked instructions on cold memory). The connection still checks
    /// each message against its own identity ([`WsReceiver::recv_for`]).
    pub fn push_as(&self, identity: &Principal, msg: WsMessage) -> Result<(), PushError> {
        let n = msg.len();
        let own = match (&self.shared.own, identity) {
            (Some(None), None) => true,
            (Some(Some(own)), Some(id)) => Arc::ptr_eq(own, id),
            _ => false,
        };
        let q = if own {
            Queued::Own(msg)
        } else {
            Queued::Message(Tagged::new(identity.clone(), msg))
        };
        self.shared.enqueue(q, n)
    }

    /// Asks the connection to close the socket with `code` and `reason`
    /// after what is already queued (e.g. 4408, DESIGN §5).
    pub fn close(&self, code: u16, reason: &str) -> Result<(), PushError> {
        self.shared
            .enqueue(Queued::Close(code, reason.to_owned()), 0)
    }

    /// True once the socket is gone (its receiver dropped).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// The handle that ends this socket when its session ends (held by
    /// `A`'s socket registry of sessions).
    pub fn closer(&self) -> WsCloser {
        WsCloser {
            shared: self.shared.add_sender(),
        }
    }
}

/// Ends one socket when its session ends: the connection takes
/// [`Pushed::Revoked`] before anything still queued, drops the endpoint
/// (its subscriptions, watches, worlds, upstream relay) and closes the
/// socket with [`WS_CLOSE_REVOKED`].
#[derive(Debug)]
pub struct WsCloser {
    shared: Arc<Shared>,
}

impl Clone for WsCloser {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.add_sender(),
        }
    }
}

impl Drop for WsCloser {
    fn drop(&mut self) {
        self.shared.drop_sender();
    }
}

/// The close code of a socket whose session ended (logout, expiry, user
/// deleted, password changed).
pub const WS_CLOSE_REVOKED: u16 = 4401;

impl WsCloser {
    /// Marks the socket revoked and wakes its connection. Never waits and
    /// never fails: the connection looks at the mark before the queue.
    pub fn revoke(&self) {
        self.shared.revoked.store(true, Ordering::Release);
        self.shared.wake();
    }

    /// True once [`WsCloser::revoke`] was called.
    pub fn is_revoked(&self) -> bool {
        self.shared.revoked.load(Ordering::Acquire)
    }
}

/// What travels in a push queue.
#[derive(Debug)]
enum Queued {
    Message(Tagged<WsMessage>),
    /// A message tagged with the queue's own identity (`Shared::own`).
    Own(WsMessage),
    Close(u16, String),
}

/// An item as taken off the queue, before the caller's view of it.
enum Taken {
    Own(WsMessage),
    Pushed(Pushed),
}

/// The receiving half, held by the connection.
#[derive(Debug)]
pub struct WsReceiver {
    shared: Arc<Shared>,
    /// A copy of the waker registered in the shared state, compared
    /// without the lock.
    registered: Option<Waker>,
}

impl Drop for WsReceiver {
    fn drop(&mut self) {
        // What is still queued goes now, not with the last sender.
        let queue = {
            let mut inner = self.shared.lock();
            inner.closed = true;
            inner.bytes = 0;
            inner.waker = None;
            std::mem::take(&mut inner.queue)
        };
        drop(queue);
    }
}

/// What the push queue yields.
#[derive(Debug)]
pub enum Pushed {
    /// A message for the client.
    Message(Tagged<WsMessage>),
    /// The queue overflowed: close the socket with 1008.
    Overflow,
    /// Every sender is gone: nothing more will be pushed.
    Closed,
    /// The destination asks to close the socket with this code and reason.
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The socket's session ended: drop the endpoint, close with
    /// [`WS_CLOSE_REVOKED`]. Comes before anything still queued.
    Revoked,
}

/// What [`WsReceiver::recv_for`] yields.
#[derive(Debug)]
pub enum Delivered {
    /// A message whose tag is the identity the caller expects: it passed
    /// the reply rule ([`crate::check_reply`]).
    Checked(WsMessage),
    /// Anything else, as [`WsReceiver::recv`] gives it (a tagged message
    /// still goes through the reply rule).
    Other(Pushed),
}

impl WsReceiver {
    /// The next pushed message, or why there is none. Cancel-safe: a
    /// dropped `recv` takes nothing off the queue.
    pub async fn recv(&mut self) -> Pushed {
        poll_fn(|cx| match self.take(Some(cx.waker())) {
            Some(p) => Poll::Ready(self.tagged(p)),
            None => Poll::Pending,
        })
        .await
    }

    /// [`WsReceiver::recv`] without waiting: `None` when nothing is queued.
    pub fn try_recv(&mut self) -> Option<Pushed> {
        self.take(None).map(|p| self.tagged(p))
    }

    /// [`WsReceiver::recv`] for a connection whose identity is
    /// `expected`: a message queued with the queue's own identity, when
    /// that is `expected`, comes as [`Delivered::Checked`] without its tag
    /// (no reference count); everything else as [`Delivered::Other`].
    pub async fn recv_for(&mut self, expected: &Principal) -> Delivered {
        poll_fn(|cx| match self.take(Some(cx.waker())) {
            Some(p) => Poll::Ready(self.check(p, expected)),
            None => Poll::Pending,
        })
        .await
    }

    /// [`WsReceiver::recv_for`] without waiting.
    pub fn try_recv_for(&mut self, expected: &Principal) -> Option<Delivered> {
        self.take(None).map(|p| self.check(p, expected))
    }

    fn check(&self, p: Taken, expected: &Principal) -> Delivered {
        let own = self.shared.own.as_ref();
        match p {
            Taken::Own(msg) if own.is_some_and(|o| crate::reply::same_principal(o, expected)) => {
                Delivered::Checked(msg)
            }
            p => Delivered::Other(self.tagged(p)),
        }
    }

    /// A taken item as [`Pushed`]: an untagged one gets the queue's tag.
    fn tagged(&self, p: Taken) -> Pushed {
        match p {
            Taken::Own(msg) => Pushed::Message(Tagged::new(self.shared.own.clone().flatten(), msg)),
            Taken::Pushed(p) => p,
        }
    }

    /// The next item, or `None` (registering `waker`, if given).
    fn take(&mut self, waker: Option<&Waker>) -> Option<Taken> {
        if self.revoked() {
            return Some(Taken::Pushed(Pushed::Revoked));
        }
        // Nothing new since the queue was last seen empty, and `waker` is
        // the one registered then: nothing to do, without the lock. A push
        // after this load sets `ready` and wakes that waker.
        if !self.shared.ready.load(Ordering::Acquire)
            && waker.is_none_or(|w| self.registered.as_ref().is_some_and(|r| r.will_wake(w)))
        {
            return None;
        }
        let mut inner = self.shared.lock();
        if inner.slow {
            return Some(Taken::Pushed(Pushed::Overflow));
        }
        let item = match inner.queue.pop_front() {
            Some(Queued::Message(m)) => {
                inner.bytes = inner.bytes.saturating_sub(m.msg.len());
                Some(Taken::Pushed(Pushed::Message(m)))
            }
            Some(Queued::Own(m)) => {
                inner.bytes = inner.bytes.saturating_sub(m.len());
                Some(Taken::Own(m))
            }
            Some(Queued::Close(code, reason)) => {
                Some(Taken::Pushed(Pushed::Close { code, reason }))
            }
            None if inner.senders == 0 => return Some(Taken::Pushed(Pushed::Closed)),
            None => {
                if let Some(w) = waker {
                    if !self.registered.as_ref().is_some_and(|r| r.will_wake(w)) {
                        inner.waker = Some(w.clone());
                        self.registered = Some(w.clone());
                    }
                }
                // A burst's room is given back; a steady trickle keeps
                // its few slots (no allocation per delivery).
                inner.queue.shrink();
                None
            }
        };
        // Emptied (and not closing): the next look needs no lock until a
        // sender marks it again.
        if inner.queue.len() == 0 && inner.senders > 0 {
            self.shared.ready.store(false, Ordering::Release);
        }
        item
    }

    /// True once the socket's session ended ([`WsCloser::revoke`]).
    pub fn revoked(&self) -> bool {
        self.shared.revoked.load(Ordering::Acquire)
    }

    /// True once a push found the queue full.
    pub fn overflowed(&self) -> bool {
        self.shared.lock().slow
    }
}

/// A new push queue: the destination's sender, the connection's receiver.
pub fn ws_push_queue() -> (WsSender, WsReceiver) {
    queue(None)
}

/// A new push queue for a socket whose identity is `identity` (fixed at
/// its upgrade): deliveries pushed with [`WsSender::push_as`] under that
/// same identity travel without their tag.
pub fn ws_push_queue_for(identity: Principal) -> (WsSender, WsReceiver) {
    queue(Some(identity))
}

fn queue(own: Option<Principal>) -> (WsSender, WsReceiver) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            senders: 1,
            ..Inner::default()
        }),
        revoked: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        own,
    });
    (
        WsSender {
            shared: Arc::clone(&shared),
        },
        WsReceiver {
            shared,
            registered: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn binary(n: usize) -> Tagged<WsMessage> {
        Tagged::new(None, WsMessage::Binary(Bytes::from(vec![0u8; n])))
    }

    /// The push queue is bounded in bytes as well as in messages.
    #[tokio::test]
    async fn push_queue_is_bounded_in_bytes() {
        let (tx, mut rx) = ws_push_queue();
        let half = WS_PUSH_BYTES / 2;
        assert_eq!(tx.push(binary(half)), Ok(()));
        assert_eq!(tx.push(binary(half)), Ok(()));
        // Taking one frees its bytes.
        assert!(matches!(rx.recv().await, Pushed::Message(_)));
        assert_eq!(tx.push(binary(half)), Ok(()));
        // Full: the next byte is a slow consumer, and the socket closes.
        assert_eq!(tx.push(binary(1)), Err(PushError::SlowConsumer));
        assert!(matches!(rx.recv().await, Pushed::Overflow));

        // One message larger than the bound still fits an empty queue.
        let (tx, mut rx) = ws_push_queue();
        assert_eq!(tx.push(binary(WS_PUSH_BYTES + 1)), Ok(()));
        assert_eq!(tx.push(binary(1)), Err(PushError::SlowConsumer));
        assert!(matches!(rx.try_recv(), Some(Pushed::Overflow)));

        // Small messages: the count bound still holds.
        let (tx, _rx) = ws_push_queue();
        for _ in 0..WS_PUSH_QUEUE {
            assert_eq!(tx.push(binary(1)), Ok(()));
        }
        assert_eq!(tx.push(binary(1)), Err(PushError::SlowConsumer));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_push_a_revoke_and_the_last_sender() {
        let (tx, mut rx) = ws_push_queue();
        let waiting = tokio::spawn(async move { (rx.recv().await, rx) });
        tx.push(binary(3)).unwrap();
        let (got, mut rx) = waiting.await.unwrap();
        assert!(matches!(got, Pushed::Message(m) if m.msg.len() == 3));

        // A closer keeps the queue open after the last sender.
        let closer = tx.closer();
        let again = tx.clone();
        drop(tx);
        drop(again);
        assert!(rx.try_recv().is_none());
        let waiting = tokio::spawn(async move { (rx.recv().await, rx) });
        closer.revoke();
        let (got, rx) = waiting.await.unwrap();
        assert!(matches!(got, Pushed::Revoked));
        drop(rx);

        let (tx, mut rx) = ws_push_queue();
        tx.push(binary(1)).unwrap();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx.recv().await)
        });
        drop(tx);
        let (first, then) = waiting.await.unwrap();
        assert!(matches!(first, Pushed::Message(_)));
        assert!(matches!(then, Pushed::Closed), "queued first, then closed");
    }

    /// Counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One poll of `recv` with waker `w`.
    fn look(rx: &mut WsReceiver, w: &Waker) -> Option<Pushed> {
        rx.take(Some(w)).map(|p| rx.tagged(p))
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(c))
    }

    /// The lock-free "nothing new" answer never hides an item or a close:
    /// whatever comes after the queue was seen empty wakes the waker that
    /// saw it, and the next look finds it; a new waker replaces the old.
    #[test]
    fn an_emptied_queue_wakes_its_current_waker_for_whatever_comes_next() {
        let (tx, mut rx) = ws_push_queue();
        let (first, w1) = counting();
        assert!(look(&mut rx, &w1).is_none());
        for round in 1..=3 {
            tx.push(binary(round)).unwrap();
            assert_eq!(
                first.0.load(Ordering::SeqCst),
                round,
                "woken for push {round}"
            );
            assert!(matches!(look(&mut rx, &w1), Some(Pushed::Message(m)) if m.msg.len() == round));
            assert!(look(&mut rx, &w1).is_none());
            assert!(rx.try_recv().is_none());
        }
        // Two pushes before a look: both there, in order.
        tx.push(binary(7)).unwrap();
        tx.push(binary(8)).unwrap();
        assert!(matches!(rx.try_recv(), Some(Pushed::Message(m)) if m.msg.len() == 7));
        assert!(matches!(look(&mut rx, &w1), Some(Pushed::Message(m)) if m.msg.len() == 8));
        assert!(look(&mut rx, &w1).is_none());

        // Another waker (the connection moved to another task) takes over.
        let (second, w2) = counting();
        assert!(look(&mut rx, &w2).is_none());
        let before = first.0.load(Ordering::SeqCst);
        tx.close(4000, "bye").unwrap();
        assert_eq!(
            first.0.load(Ordering::SeqCst),
            before,
            "the old waker is not woken"
        );
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            look(&mut rx, &w2),
            Some(Pushed::Close { code: 4000, .. })
        ));
        assert!(look(&mut rx, &w2).is_none());

        // The last sender going, an overflow and a revoke are seen too.
        let closer = tx.closer();
        drop(tx);
        assert!(look(&mut rx, &w2).is_none(), "a closer keeps it open");
        drop(closer);
        assert_eq!(second.0.load(Ordering::SeqCst), 2);
        assert!(matches!(look(&mut rx, &w2), Some(Pushed::Closed)));
        assert!(
            matches!(rx.try_recv(), Some(Pushed::Closed)),
            "closed stays closed"
        );

        let (tx, mut rx) = ws_push_queue();
        let (third, w3) = counting();
        assert!(look(&mut rx, &w3).is_none());
        for _ in 0..WS_PUSH_QUEUE {
            tx.push(binary(1)).unwrap();
        }
        assert_eq!(tx.push(binary(1)), Err(PushError::SlowConsumer));
        assert_eq!(third.0.load(Ordering::SeqCst), WS_PUSH_QUEUE + 1);
        assert!(matches!(look(&mut rx, &w3), Some(Pushed::Overflow)));
        assert!(matches!(rx.try_recv(), Some(Pushed::Overflow)));

        let (tx, mut rx) = ws_push_queue();
        let (fourth, w4) = counting();
        assert!(look(&mut rx, &w4).is_none());
        tx.closer().revoke();
        assert_eq!(fourth.0.load(Ordering::SeqCst), 1);
        assert!(matches!(look(&mut rx, &w4), Some(Pushed::Revoked)));
    }

    fn user(name: &str) -> Principal {
        Some(Arc::new(crate::identity::Identity {
            user: name.into(),
            provider: crate::identity::Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }))
    }

    fn text(s: &'static str) -> WsMessage {
        WsMessage::Text(s.into())
    }

    /// Whether `tag` is the very `Arc` of `id`.
    fn same_arc(tag: &Principal, id: &Principal) -> bool {
        matches!((tag, id), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
    }

    fn tag_of(d: Option<Delivered>) -> Result<&'static str, Principal> {
        match d {
            Some(Delivered::Checked(_)) => Ok("checked"),
            Some(Delivered::Other(Pushed::Message(m))) => Err(m.identity),
            other => panic!("{other:?}"),
        }
    }

    /// `push_as` drops the tag only for the queue's own identity (the same
    /// `Arc`), and `recv_for` hands an untagged message over as checked
    /// only to a caller expecting that identity; everything else keeps its
    /// tag for the reply rule, so a delivery for another user still fails
    /// it.
    #[test]
    fn only_the_sockets_own_identity_travels_untagged() {
        let alice = user("alice");
        let (tx, mut rx) = ws_push_queue_for(alice.clone());
        tx.push_as(&alice, text("a")).unwrap();
        assert_eq!(tag_of(rx.try_recv_for(&alice)), Ok("checked"));

        // Another identity, or an equal one in another `Arc`: tagged.
        let bob = user("bob");
        tx.push_as(&bob, text("b")).unwrap();
        let got = tag_of(rx.try_recv_for(&alice)).unwrap_err();
        assert!(crate::check_reply(&alice, &Tagged::new(got, ())).is_err());
        let alice_again = user("alice");
        tx.push_as(&alice_again, text("c")).unwrap();
        assert!(same_arc(
            &tag_of(rx.try_recv_for(&alice)).unwrap_err(),
            &alice_again
        ));
        tx.push_as(&None, text("d")).unwrap();
        assert_eq!(tag_of(rx.try_recv_for(&alice)), Err(None));

        // An untagged message asked for by another identity comes with
        // the queue's tag, which that caller's reply rule refuses.
        tx.push_as(&alice, text("e")).unwrap();
        let got = tag_of(rx.try_recv_for(&bob)).unwrap_err();
        assert!(same_arc(&got, &alice));
        assert!(crate::check_reply(&bob, &Tagged::new(got, ())).is_err());
        // `recv`/`try_recv` give it back its tag.
        tx.push_as(&alice, text("f")).unwrap();
        assert!(matches!(rx.try_recv(), Some(Pushed::Message(m)) if same_arc(&m.identity, &alice)));

        // Anonymous sockets: `null` for `null` only.
        let (tx, mut rx) = ws_push_queue_for(None);
        tx.push_as(&None, text("g")).unwrap();
        assert_eq!(tag_of(rx.try_recv_for(&None)), Ok("checked"));
        tx.push_as(&None, text("h")).unwrap();
        assert_eq!(tag_of(rx.try_recv_for(&alice)), Err(None));
        tx.push_as(&alice, text("i")).unwrap();
        assert!(tag_of(rx.try_recv_for(&None)).is_err_and(|g| g.is_some()));

        // A queue made for no socket in particular keeps every tag.
        let (tx, mut rx) = ws_push_queue();
        tx.push_as(&alice, text("j")).unwrap();
        assert!(tag_of(rx.try_recv_for(&alice)).is_err());
        tx.push_as(&None, text("k")).unwrap();
        assert_eq!(tag_of(rx.try_recv_for(&None)), Err(None));
    }

    /// Untagged messages count against the queue's bounds like tagged ones.
    #[test]
    fn untagged_messages_are_bounded_too() {
        let alice = user("alice");
        let (tx, mut rx) = ws_push_queue_for(alice.clone());
        let half = WsMessage::Binary(Bytes::from(vec![0u8; WS_PUSH_BYTES / 2]));
        let push = |m: WsMessage| tx.push_as(&alice, m);
        assert_eq!(push(half.clone()), Ok(()));
        assert_eq!(push(half.clone()), Ok(()));
        // Taking one gives its bytes back: another half fits, one byte
        // more does not, and the socket closes.
        assert!(matches!(
            rx.try_recv_for(&alice),
            Some(Delivered::Checked(_))
        ));
        assert_eq!(push(half), Ok(()));
        assert_eq!(
            push(WsMessage::Binary(Bytes::from_static(b"x"))),
            Err(PushError::SlowConsumer)
        );
        assert!(matches!(
            rx.try_recv_for(&alice),
            Some(Delivered::Other(Pushed::Overflow))
        ));
    }

    proptest::proptest! {
        /// The inline head never reorders: any mix of pushes and takes
        /// yields what a plain `VecDeque` yields, and the same length.
        #[test]
        fn the_inline_head_keeps_fifo_order(ops in proptest::collection::vec(0u8..4, 0..200)) {
            let mut fifo = Fifo::default();
            let mut model = VecDeque::new();
            let mut next = 0u16;
            for op in ops {
                if op == 0 {
                    let got = fifo.pop_front().map(|q| match q {
                        Queued::Close(code, _) => code,
                        Queued::Message(_) | Queued::Own(_) => u16::MAX,
                    });
                    proptest::prop_assert_eq!(got, model.pop_front());
                    if fifo.len() == 0 {
                        fifo.shrink();
                    }
                } else {
                    fifo.push_back(Queued::Close(next, String::new()));
                    model.push_back(next);
                    next = next.wrapping_add(1);
                }
                proptest::prop_assert_eq!(fifo.len(), model.len());
            }
        }
    }

    #[test]
    fn a_gone_socket_refuses_pushes_and_drops_what_was_queued() {
        let (tx, rx) = ws_push_queue();
        let msg = Bytes::from(vec![7u8; 10]);
        tx.push(Tagged::new(None, WsMessage::Binary(msg.clone())))
            .unwrap();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.push(binary(1)), Err(PushError::Closed));
        assert_eq!(tx.close(1000, "bye"), Err(PushError::Closed));
        // The queued copy is gone with the receiver, not with the sender.
        assert!(msg.is_unique());
    }
}
