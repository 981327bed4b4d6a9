//! The broker seam of `&broadcast` (DESIGN §7): who hands a channel's
//! publications, in one order, to every node that listens to it.
//!
//! ```text
//!  broadcast hub ──subscribe / publish──▶ [ Broker ] ──▶ MemoryBroker (one process, today)
//!        ▲                                [        ]     (Redis later, beside it)
//!        └── BrokerHandler::handle_publication ◀──┘  on every node, in offset order
//! ```
//!
//! Below the broadcast hub, which keeps the permissions, the local
//! subscribers and the wire format; the broker knows channels, offsets and
//! opaque payloads, nothing of identities or sockets. It never faces the
//! client: the hub checks channel names and sizes first. After
//! centrifuge's `Broker` (`broker.go`): one trait, one position type
//! ([`StreamPosition`]), the atomicity rule written on the trait, and the
//! same behaviour tests for every implementation (`broker_suite.rs`).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use bytes::Bytes;

/// Where a publication sits in its channel's stream.
///
/// `offset` counts the channel's publications from 1; `epoch` names the
/// stream. A stream that lost its history (the channel was dropped, the
/// process restarted, Redis lost the key) starts again under a new epoch,
/// so a client holding an old position can tell that it cannot recover
/// from the new stream, even if the offsets look alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The last offset given out in this epoch (0: none yet).
    pub offset: u64,
    /// The stream's identity.
    pub epoch: u64,
}

/// One publication: its place in the stream and its payload, as the
/// publisher's hub encoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Its position (the offset it was given, the stream's epoch).
    pub position: StreamPosition,
    /// The payload; the broker never looks inside.
    pub data: Bytes,
}

/// What [`Broker::history`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The publications asked for, oldest first.
    pub publications: Vec<Publication>,
    /// The stream's current position (its top), for the caller to compare
    /// epochs and to resume from.
    pub position: StreamPosition,
}

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker's backend cannot be reached (the caller answers 503 or
    /// closes with 1011, and retries later). The in-process broker never
    /// returns it.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
}

/// Receives what a [`Broker`] delivers to this node.
pub trait BrokerHandler: Send + Sync {
    /// A publication on `channel`, which this node subscribed to. Called
    /// once per publication, in offset order per channel, possibly while
    /// the broker holds that channel's lock: it must not block and must
    /// not call back into the broker.
    fn handle_publication(&self, channel: &str, publication: &Publication);
}

/// A channel broker: node-level subscriptions, ordered publishing,
/// bounded history. Shared by a node's hub (`Arc<dyn Broker>`); each
/// implementation's constructor takes the node's [`BrokerHandler`].
///
/// The rule every implementation keeps: for one channel, giving out the
/// next offset, appending to the history and handing the publication to
/// every subscribed node's handler are one atomic step, so every node
/// sees a channel's publications in the same order, without gaps or
/// repeats within an epoch. Across channels there is no order.
pub trait Broker: Send + Sync + 'static {
    /// Starts delivering `channel`'s publications to this node (the hub
    /// calls it when a channel gets its first local subscriber). Idempotent;
    /// returns the stream's current position.
    fn subscribe(&self, channel: &str) -> Result<StreamPosition, BrokerError>;
    /// Stops delivering `channel` to this node (its last local subscriber
    /// left). Idempotent. A publish racing it may still be delivered once.
    fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Publishes `data` on `channel`: its position, or `None` if no node
    /// listens to the channel (then nothing is kept: publishing to made-up
    /// channels grows nothing).
    fn publish(&self, channel: &str, data: Bytes) -> Result<Option<StreamPosition>, BrokerError>;
    /// Up to `limit` of the kept publications of `channel` with an offset
    /// above `after` (all kept ones if `None`), oldest first, and the
    /// stream's position. A channel nobody listens to has an empty history
    /// at offset 0.
    fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError>;
}

/// One channel's stream in the [`MemoryBroker`].
#[derive(Debug)]
struct Stream {
    position: StreamPosition,
    history: VecDeque<Publication>,
}

/// The in-process broker: one node, so a channel's stream lives while this
/// node subscribes to it; an unsubscribed channel forgets its stream and
/// its next subscription starts a new epoch.
///
/// Publishing takes the channel map's read lock only to find the stream,
/// then the stream's own lock for the atomic step (offset, history,
/// delivery): publishers on different channels do not contend.
pub struct MemoryBroker {
    handler: Weak<dyn BrokerHandler>,
    history_size: usize,
    streams: RwLock<HashMap<String, Arc<Mutex<Stream>>>>,
    /// The next epoch: random at start, so a restarted process never
    /// reuses one, then counting.
    next_epoch: AtomicU64,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("history_size", &self.history_size)
            .field("channels", &read(&self.streams).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBroker {
    /// A broker delivering to `handler` (weak: the handler usually owns
    /// the broker), keeping the last `history_size` publications of each
    /// channel.
    pub fn new(handler: Weak<dyn BrokerHandler>, history_size: usize) -> Self {
        // `RandomState` is seeded from the operating system once per
        // process: a random start without a fallible call.
        let seed = RandomState::new().build_hasher().finish();
        Self {
            handler,
            history_size,
            streams: RwLock::new(HashMap::new()),
            next_epoch: AtomicU64::new(seed),
        }
    }

    /// How many channels are subscribed.
    pub fn channel_count(&self) -> usize {
        read(&self.streams).len()
    }

    fn stream(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        read(&self.streams).get(channel).cloned()
    }
}

impl Broker for MemoryBroker {
    fn subscribe(&self, channel: &str) -> Result<StreamPosition, BrokerError> {
        if let Some(stream) = self.stream(channel) {
            return Ok(lock(&stream).position);
        }
        let mut streams = write(&self.streams);
        let stream = streams.entry(channel.to_owned()).or_insert_with(|| {
            Arc::new(Mutex::new(Stream {
                position: StreamPosition {
                    offset: 0,
                    epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed),
                },
                history: VecDeque::new(),
            }))
        });
        let position = lock(stream).position;
        Ok(position)
    }

    fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        write(&self.streams).remove(channel);
        Ok(())
    }

    fn publish(&self, channel: &str, data: Bytes) -> Result<Option<StreamPosition>, BrokerError> {
        let Some(stream) = self.stream(channel) else {
            return Ok(None);
        };
        let mut st = lock(&stream);
        // Saturates instead of wrapping: 2^64 publications never happen,
        // and a repeated offset would be worse than a stuck one.
        st.position.offset = st.position.offset.saturating_add(1);
        let publication = Publication {
            position: st.position,
            data,
        };
        if self.history_size > 0 {
            if st.history.len() >= self.history_size {
                st.history.pop_front();
            }
            st.history.push_back(publication.clone());
        }
        // Delivered under the stream's lock: that is what keeps the
        // offsets in order for every handler (the rule on the trait).
        if let Some(handler) = self.handler.upgrade() {
            handler.handle_publication(channel, &publication);
        }
        Ok(Some(st.position))
    }

    fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let Some(stream) = self.stream(channel) else {
            return Ok(History {
                publications: Vec::new(),
                position: StreamPosition {
                    offset: 0,
                    epoch: 0,
                },
            });
        };
        let st = lock(&stream);
        let publications = st
            .history
            .iter()
            .filter(|p| after.is_none_or(|a| p.position.offset > a))
            .take(limit)
            .cloned()
            .collect();
        Ok(History {
            publications,
            position: st.position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(AtomicU64);

    impl BrokerHandler for Count {
        fn handle_publication(&self, _: &str, _: &Publication) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_resubscribed_channel_starts_a_new_epoch() {
        let count = Arc::new(Count(AtomicU64::new(0)));
        let weak: Weak<dyn BrokerHandler> = Arc::downgrade(&count) as _;
        let b = MemoryBroker::new(weak, 4);
        let first = b.subscribe("c").unwrap();
        assert_eq!(
            b.publish("c", Bytes::from_static(b"x"))
                .unwrap()
                .map(|p| p.offset),
            Some(1)
        );
        b.unsubscribe("c").unwrap();
        assert_eq!(b.channel_count(), 0);
        let second = b.subscribe("c").unwrap();
        assert_eq!(second.offset, 0);
        assert_ne!(second.epoch, first.epoch);
        assert!(b.history("c", None, 10).unwrap().publications.is_empty());
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn two_brokers_start_at_different_epochs() {
        let none: Weak<dyn BrokerHandler> = Weak::<Count>::new();
        let a = MemoryBroker::new(none.clone(), 0).subscribe("c").unwrap();
        let b = MemoryBroker::new(none, 0).subscribe("c").unwrap();
        assert_ne!(a.epoch, b.epoch);
    }

    #[test]
    fn publishing_without_a_handler_still_counts() {
        let b = MemoryBroker::new(Weak::<Count>::new(), 0);
        b.subscribe("c").unwrap();
        assert_eq!(
            b.publish("c", Bytes::new()).unwrap().map(|p| p.offset),
            Some(1)
        );
        assert_eq!(
            b.publish("c", Bytes::new()).unwrap().map(|p| p.offset),
            Some(2)
        );
        // history_size 0 keeps nothing.
        let h = b.history("c", None, 10).unwrap();
        assert!(h.publications.is_empty());
        assert_eq!(h.position.offset, 2);
        assert!(format!("{b:?}").contains("channels: 1"));
    }
}
