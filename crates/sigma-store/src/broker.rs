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
    /// not publish.
    fn handle_publication(&self, channel: &str, publication: &Publication);

    /// The broker lost its connection to the other nodes: publications
    /// made meanwhile may never reach this node. The hub closes its
    /// subscribers (1011), who come back and find out what they missed.
    /// The in-process broker never calls it.
    fn handle_lost(&self) {}
}

/// The answer of a broker operation that may cross the network.
pub type BrokerFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, BrokerError>> + Send + 'static>>;

/// Fixed-window event counters shared by every node (login throttles
/// across a cluster): Redis in a cluster; one node needs none (its
/// throttles are in memory).
pub trait SharedCounters: Send + Sync {
    /// Counts one event under `key` in the current `window`: the count so
    /// far, this one included.
    fn hit(&self, key: &str, window: std::time::Duration) -> BrokerFuture<u64>;
    /// The count of `key` in the current `window`.
    fn count(&self, key: &str, window: std::time::Duration) -> BrokerFuture<u64>;
}

/// A channel broker: node-level subscriptions, ordered publishing,
/// bounded history. Shared by a node's hub (`Arc<dyn Broker>`); each
/// implementation's constructor takes the node's [`BrokerHandler`].
///
/// The rule every implementation keeps: for one channel, giving out the
/// next offset, appending to the history and handing the publication to
/// every subscribed node's handler are one atomic step, so every node
/// sees a channel's publications in the same order, without gaps or
/// repeats within an epoch. Across channels there is no order. Two
/// [`publish`](Broker::publish) calls made one after the other (by one
/// socket, say) take their offsets in that order, even before either
/// future is polled.
pub trait Broker: Send + Sync + 'static {
    /// Starts delivering `channel`'s publications to this node (the hub
    /// calls it when a channel gets its first local subscriber).
    /// Idempotent. Fails while the broker cannot deliver.
    fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Stops delivering `channel` to this node (its last local subscriber
    /// left). Idempotent. A publish racing it may still be delivered once.
    fn unsubscribe(&self, channel: &str);
    /// Publishes `data` on `channel`: its position, or `None` when the
    /// broker knows that no node listens to the channel (the in-process
    /// one: then nothing is kept, and publishing to made-up channels grows
    /// nothing; Redis keeps such a stream for its time to live only).
    fn publish(&self, channel: &str, data: Bytes) -> BrokerFuture<Option<StreamPosition>>;
    /// Up to `limit` of the kept publications of `channel` with an offset
    /// above `after` (all kept ones if `None`), oldest first, and the
    /// stream's position. A channel without a stream has an empty history
    /// at offset 0.
    fn history(&self, channel: &str, after: Option<u64>, limit: usize) -> BrokerFuture<History>;
    /// False while the broker cannot reach the other nodes (publishing
    /// fails; subscribers were told by [`BrokerHandler::handle_lost`]).
    fn available(&self) -> bool {
        true
    }
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

fn ready<T: Send + 'static>(v: T) -> BrokerFuture<T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl MemoryBroker {
    /// The publish step, done at once (the future of
    /// [`Broker::publish`] is ready).
    fn publish_now(&self, channel: &str, data: Bytes) -> Option<StreamPosition> {
        let stream = self.stream(channel)?;
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
        Some(st.position)
    }

    fn history_now(&self, channel: &str, after: Option<u64>, limit: usize) -> History {
        let Some(stream) = self.stream(channel) else {
            return History {
                publications: Vec::new(),
                position: StreamPosition {
                    offset: 0,
                    epoch: 0,
                },
            };
        };
        let st = lock(&stream);
        let publications = st
            .history
            .iter()
            .filter(|p| after.is_none_or(|a| p.position.offset > a))
            .take(limit)
            .cloned()
            .collect();
        History {
            publications,
            position: st.position,
        }
    }
}

impl Broker for MemoryBroker {
    fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if self.stream(channel).is_some() {
            return Ok(());
        }
        // Never takes a stream's lock while holding the map's: a publisher
        // holds a stream's lock while its handler may end up here.
        write(&self.streams)
            .entry(channel.to_owned())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Stream {
                    position: StreamPosition {
                        offset: 0,
                        epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed),
                    },
                    history: VecDeque::new(),
                }))
            });
        Ok(())
    }

    fn unsubscribe(&self, channel: &str) {
        write(&self.streams).remove(channel);
    }

    fn publish(&self, channel: &str, data: Bytes) -> BrokerFuture<Option<StreamPosition>> {
        ready(self.publish_now(channel, data))
    }

    fn history(&self, channel: &str, after: Option<u64>, limit: usize) -> BrokerFuture<History> {
        ready(self.history_now(channel, after, limit))
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

    fn offset(p: Option<StreamPosition>) -> Option<u64> {
        p.map(|p| p.offset)
    }

    #[test]
    fn a_resubscribed_channel_starts_a_new_epoch() {
        let count = Arc::new(Count(AtomicU64::new(0)));
        let weak: Weak<dyn BrokerHandler> = Arc::downgrade(&count) as _;
        let b = MemoryBroker::new(weak, 4);
        b.subscribe("c").unwrap();
        let first = b.history_now("c", None, 0).position;
        assert_eq!(
            offset(b.publish_now("c", Bytes::from_static(b"x"))),
            Some(1)
        );
        b.unsubscribe("c");
        assert_eq!(b.channel_count(), 0);
        b.subscribe("c").unwrap();
        let second = b.history_now("c", None, 10);
        assert_eq!(second.position.offset, 0);
        assert_ne!(second.position.epoch, first.epoch);
        assert!(second.publications.is_empty());
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn two_brokers_start_at_different_epochs() {
        let none: Weak<dyn BrokerHandler> = Weak::<Count>::new();
        let (a, b) = (
            MemoryBroker::new(none.clone(), 0),
            MemoryBroker::new(none, 0),
        );
        a.subscribe("c").unwrap();
        b.subscribe("c").unwrap();
        assert_ne!(
            a.history_now("c", None, 0).position.epoch,
            b.history_now("c", None, 0).position.epoch
        );
    }

    #[test]
    fn publishing_without_a_handler_still_counts() {
        let b = MemoryBroker::new(Weak::<Count>::new(), 0);
        b.subscribe("c").unwrap();
        assert_eq!(offset(b.publish_now("c", Bytes::new())), Some(1));
        assert_eq!(offset(b.publish_now("c", Bytes::new())), Some(2));
        // history_size 0 keeps nothing.
        let h = b.history_now("c", None, 10);
        assert!(h.publications.is_empty());
        assert_eq!(h.position.offset, 2);
        assert!(format!("{b:?}").contains("channels: 1"));
        assert!(b.available());
    }
}
