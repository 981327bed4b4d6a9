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

use std::sync::Arc;

use sigma_http::WsMessage;

use crate::identity::Tagged;

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

/// The sending half of a socket's push queue (cheap to clone).
#[derive(Debug, Clone)]
pub struct WsSender {
    tx: tokio::sync::mpsc::Sender<Queued>,
    slow: Arc<std::sync::atomic::AtomicBool>,
    /// Payload bytes queued and not yet taken by the connection.
    bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when the socket's session ended (see [`WsCloser`]).
    revoked: Arc<std::sync::atomic::AtomicBool>,
}

/// Payload length of a WebSocket message.
fn payload_len(m: &WsMessage) -> usize {
    match m {
        WsMessage::Text(t) => t.len(),
        WsMessage::Binary(b) => b.len(),
    }
}

/// Takes `n` bytes off a queue's byte count.
fn release(bytes: &std::sync::atomic::AtomicUsize, n: usize) {
    use std::sync::atomic::Ordering;
    let _ = bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
        Some(q.saturating_sub(n))
    });
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
        use std::sync::atomic::Ordering;
        use tokio::sync::mpsc::error::TrySendError;
        let n = payload_len(&msg.msg);
        let admitted = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                let total = queued.checked_add(n)?;
                (queued == 0 || total <= WS_PUSH_BYTES).then_some(total)
            });
        if admitted.is_err() {
            if self.tx.is_closed() {
                return Err(PushError::Closed);
            }
            self.slow.store(true, Ordering::Relaxed);
            return Err(PushError::SlowConsumer);
        }
        match self.tx.try_send(Queued::Message(msg)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                release(&self.bytes, n);
                self.slow.store(true, Ordering::Relaxed);
                Err(PushError::SlowConsumer)
            }
            Err(TrySendError::Closed(_)) => {
                release(&self.bytes, n);
                Err(PushError::Closed)
            }
        }
    }

    /// Asks the connection to close the socket with `code` and `reason`
    /// after what is already queued (e.g. 4408, DESIGN §5).
    pub fn close(&self, code: u16, reason: &str) -> Result<(), PushError> {
        use tokio::sync::mpsc::error::TrySendError;
        match self.tx.try_send(Queued::Close(code, reason.to_owned())) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.slow.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(PushError::SlowConsumer)
            }
            Err(TrySendError::Closed(_)) => Err(PushError::Closed),
        }
    }

    /// True once the socket is gone (its receiver dropped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// The handle that ends this socket when its session ends (held by
    /// `A`'s socket registry of sessions).
    pub fn closer(&self) -> WsCloser {
        WsCloser {
            tx: self.tx.clone(),
            revoked: Arc::clone(&self.revoked),
        }
    }
}

/// Ends one socket when its session ends: the connection takes
/// [`Pushed::Revoked`] before anything still queued, drops the endpoint
/// (its subscriptions, watches, worlds, upstream relay) and closes the
/// socket with [`WS_CLOSE_REVOKED`].
#[derive(Debug, Clone)]
pub struct WsCloser {
    tx: tokio::sync::mpsc::Sender<Queued>,
    revoked: Arc<std::sync::atomic::AtomicBool>,
}

/// The close code of a socket whose session ended (logout, expiry, user
/// deleted, password changed).
pub const WS_CLOSE_REVOKED: u16 = 4401;

impl WsCloser {
    /// Marks the socket revoked and wakes its connection. Never waits: a
    /// full queue is already waking the connection, which looks at the
    /// mark before the queue.
    pub fn revoke(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::Release);
        let _ = self.tx.try_send(Queued::Wake);
    }

    /// True once [`WsCloser::revoke`] was called.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// What travels in a push queue.
#[derive(Debug)]
enum Queued {
    Message(Tagged<WsMessage>),
    Close(u16, String),
    /// Look at the revocation mark (sent by [`WsCloser::revoke`]).
    Wake,
}

/// The receiving half, held by the connection.
#[derive(Debug)]
pub struct WsReceiver {
    rx: tokio::sync::mpsc::Receiver<Queued>,
    slow: Arc<std::sync::atomic::AtomicBool>,
    bytes: Arc<std::sync::atomic::AtomicUsize>,
    revoked: Arc<std::sync::atomic::AtomicBool>,
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

impl WsReceiver {
    /// The next pushed message, or why there is none.
    pub async fn recv(&mut self) -> Pushed {
        loop {
            if self.revoked() {
                return Pushed::Revoked;
            }
            if self.overflowed() {
                return Pushed::Overflow;
            }
            match self.rx.recv().await {
                Some(q) => match self.taken(q) {
                    Some(p) => return p,
                    // A wake-up: the mark is looked at above.
                    None => continue,
                },
                None if self.overflowed() => return Pushed::Overflow,
                None => return Pushed::Closed,
            }
        }
    }

    /// The next pushed message if one is already queued (never waits):
    /// lets the connection batch a backlog into one write.
    pub fn try_recv(&mut self) -> Option<Pushed> {
        use tokio::sync::mpsc::error::TryRecvError;
        loop {
            if self.revoked() {
                return Some(Pushed::Revoked);
            }
            if self.overflowed() {
                return Some(Pushed::Overflow);
            }
            match self.rx.try_recv() {
                Ok(q) => match self.taken(q) {
                    Some(p) => return Some(p),
                    None => continue,
                },
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) if self.overflowed() => {
                    return Some(Pushed::Overflow)
                }
                Err(TryRecvError::Disconnected) => return Some(Pushed::Closed),
            }
        }
    }

    /// A queued item leaves the queue: its bytes no longer count. `None`
    /// for a wake-up.
    fn taken(&self, q: Queued) -> Option<Pushed> {
        match q {
            Queued::Message(m) => {
                release(&self.bytes, payload_len(&m.msg));
                Some(Pushed::Message(m))
            }
            Queued::Close(code, reason) => Some(Pushed::Close { code, reason }),
            Queued::Wake => None,
        }
    }

    /// True once the socket's session ended ([`WsCloser::revoke`]).
    pub fn revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// True once a push found the queue full.
    pub fn overflowed(&self) -> bool {
        self.slow.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A socket's push queue of [`WS_PUSH_QUEUE`] messages and at most
/// [`WS_PUSH_BYTES`] payload bytes (plus one message).
pub fn ws_push_queue() -> (WsSender, WsReceiver) {
    let (tx, rx) = tokio::sync::mpsc::channel(WS_PUSH_QUEUE);
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    (
        WsSender {
            tx,
            slow: Arc::clone(&slow),
            bytes: Arc::clone(&bytes),
            revoked: Arc::clone(&revoked),
        },
        WsReceiver {
            rx,
            slow,
            bytes,
            revoked,
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
}
