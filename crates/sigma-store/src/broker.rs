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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

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

    /// `user` joined `channel` (its first socket anywhere subscribed), or
    /// left it (its last socket anywhere left), as a broker that
    /// announces across nodes tells it ([`Broker::announce_join_leave`]).
    /// `skip` is the socket of this node that caused it, if any: it is
    /// not told. Called on the task that receives the broker's messages:
    /// it must not block. Default: nothing.
    fn handle_join_leave(&self, channel: &str, user: &str, joined: bool, skip: Option<u64>) {
        let _ = (channel, user, joined, skip);
    }
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

/// Asks between the nodes of a cluster: one node hands a request to a
/// handler on another node, named by its id, and waits for the answer.
/// Redis in a cluster ([`crate::Cluster::relay`]); one node needs none.
/// `&world` uses it to carry an initiate to the node holding the session
/// socket that forked the world (docs/cluster.md).
pub trait Relay: Send + Sync {
    /// This node's id among the nodes.
    fn node(&self) -> u64;
    /// Sends `request` to the handler of `topic` on `node`: its answer,
    /// or why there is none (bounded in time and in asks waiting).
    fn ask(&self, node: u64, topic: &str, request: Bytes) -> AskFuture;
    /// Answers this node's asks for `topic` with `handler` (replacing an
    /// earlier one; a handler that is gone answers nothing).
    fn serve(&self, topic: &str, handler: std::sync::Weak<dyn Answerer>);
}

/// The answer of a [`Relay::ask`].
pub type AskFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, AskError>> + Send + 'static>>;

/// Answers the asks of other nodes for one topic ([`Relay::serve`]).
pub trait Answerer: Send + Sync {
    /// The answer to `request`. Called on the task that receives the
    /// node's messages: it must not block.
    fn answer(&self, request: &[u8]) -> Bytes;
}

/// Why an ask has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    /// The relay cannot be reached, too many asks wait, or the answer did
    /// not come in time.
    #[error("the relay is unavailable: {0}")]
    Unavailable(String),
    /// No node of that id listens (it is gone, or away from Redis).
    #[error("no such node")]
    NoNode,
    /// The node does not serve that topic.
    #[error("the node does not serve this")]
    NotServed,
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
    fn publish(
        &self,
        channel: &str,
        data: Bytes,
        keep: Keep,
    ) -> BrokerFuture<Option<StreamPosition>>;
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

    /// Socket `member` of `user` subscribed to `channel` on this node
    /// (presence across nodes). Default: nothing (one node's hub counts
    /// its own).
    fn presence_join(&self, channel: &str, member: u64, user: &str) {
        let _ = (channel, member, user);
    }

    /// Socket `member` left `channel` on this node.
    fn presence_leave(&self, channel: &str, member: u64) {
        let _ = (channel, member);
    }

    /// `user`'s first socket on this node (`member`) subscribed to
    /// `channel`, whose rule wants joins and leaves (`joined`), or its
    /// last one here left it (`!joined`). True when the broker announces
    /// it: then every node's handler hears it
    /// ([`BrokerHandler::handle_join_leave`]) once the user's first socket
    /// in the whole cluster joined, or its last one left. Default: false,
    /// the hub announces to its own subscribers (one node).
    fn announce_join_leave(&self, channel: &str, user: &str, member: u64, joined: bool) -> bool {
        let _ = (channel, user, member, joined);
        false
    }

    /// The users subscribed to `channel` on every node, each with its
    /// number of sockets, in name order; `None` when the broker keeps no
    /// presence (one node: the hub answers from its own subscribers).
    fn presence(&self, channel: &str) -> Option<BrokerFuture<Vec<(String, u32)>>> {
        let _ = channel;
        None
    }
}

/// How a channel keeps its publications (its rule's `history_size` and
/// `history_ttl`): the last `size` of them, each for `ttl`. Given with
/// every publish, since the rule that covers a channel is the hub's
/// business, not the broker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Publications kept, at most (0: none).
    pub size: usize,
    /// How long one is kept (zero: none).
    pub ttl: Duration,
}

impl Keep {
    /// Keeps nothing.
    pub const NONE: Self = Self {
        size: 0,
        ttl: Duration::ZERO,
    };

    fn keeps(&self) -> bool {
        self.size > 0 && !self.ttl.is_zero()
    }
}

/// What the in-process broker's kept publications may hold in all, by
/// default. A publication that would go beyond it pushes out its own
/// channel's oldest ones, and is not kept if that is not enough (a
/// recovering client then finds a gap and is told `recovered: false`)
/// until older ones expire: memory stays bounded whatever is published.
pub const DEFAULT_HISTORY_BYTES: usize = 64 << 20;

/// Streams that outlive their last subscriber at once, at most: beyond
/// it the oldest are forgotten early (their clients get `recovered:
/// false`), so that leaving many channels cannot hold memory.
pub const MAX_LINGERING: usize = 65_536;

/// What one kept publication costs beyond its payload (its place in the
/// queue, its position, its time), charged to the budget.
const ENTRY_OVERHEAD: usize = 64;

/// The in-process broker's clock (a fake one in tests).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// One channel's stream in the [`MemoryBroker`].
#[derive(Debug)]
struct Stream {
    position: StreamPosition,
    /// Kept publications with the time each was made, oldest first.
    history: VecDeque<(Instant, Publication)>,
    /// The longest `ttl` it was published with: how long a publication
    /// is kept.
    ttl: Duration,
    /// The budget bytes `history` holds.
    bytes: usize,
}

/// A stream and the flags read without its lock (a publisher holds the
/// lock while its handler may unsubscribe the same channel).
#[derive(Debug)]
struct Cell {
    /// Some node (this one) listens; false: it lingers for its history.
    subscribed: AtomicBool,
    /// Removed from the map (or about to be): publishing to it keeps
    /// nothing, subscribing makes a new stream.
    dead: AtomicBool,
    /// The longest `ttl` it was published with, in milliseconds: how
    /// long it outlives its last subscriber.
    ttl_ms: AtomicU64,
    stream: Mutex<Stream>,
}

/// The in-process broker: one node, so a channel's stream lives while this
/// node subscribes to it and, when its channel keeps history, for the
/// channel's `ttl` after its last subscriber left (a client that lost its
/// connection comes back and recovers what it missed); then it is
/// forgotten and its next subscription starts a new epoch. All kept
/// publications share one byte budget ([`DEFAULT_HISTORY_BYTES`]).
///
/// Publishing takes the channel map's read lock only to find the stream,
/// then the stream's own lock for the atomic step (offset, history,
/// delivery): publishers on different channels do not contend.
pub struct MemoryBroker {
    handler: Weak<dyn BrokerHandler>,
    streams: RwLock<HashMap<String, Arc<Cell>>>,
    /// Unsubscribed streams in the order they were left, with the time:
    /// swept from the front once their history has expired.
    lingering: Mutex<VecDeque<(Instant, String)>>,
    /// The next epoch: random at start, so a restarted process never
    /// reuses one, then counting.
    next_epoch: AtomicU64,
    budget: usize,
    used: AtomicUsize,
    clock: Clock,
    /// When the clock started, and when (ms after) [`Self::reclaim`] last
    /// ran (0: never).
    started: Instant,
    reclaimed: AtomicU64,
    /// When [`Self::sweep`] last looked (as `reclaimed`), and about how
    /// long the lingering queue is (exact after each sweep).
    swept: AtomicU64,
    lingering_len: AtomicUsize,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("channels", &read(&self.streams).len())
            .field("history_bytes", &self.used.load(Ordering::Relaxed))
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
    /// the broker), with the default history budget and the real clock.
    pub fn new(handler: Weak<dyn BrokerHandler>) -> Self {
        Self::with_budget(handler, DEFAULT_HISTORY_BYTES, Arc::new(Instant::now))
    }

    /// A broker whose kept publications hold at most `budget` bytes in
    /// all, on `clock`.
    pub fn with_budget(handler: Weak<dyn BrokerHandler>, budget: usize, clock: Clock) -> Self {
        // `RandomState` is seeded from the operating system once per
        // process: a random start without a fallible call.
        let seed = RandomState::new().build_hasher().finish();
        Self {
            handler,
            streams: RwLock::new(HashMap::new()),
            lingering: Mutex::new(VecDeque::new()),
            next_epoch: AtomicU64::new(seed),
            budget,
            used: AtomicUsize::new(0),
            started: clock(),
            reclaimed: AtomicU64::new(0),
            swept: AtomicU64::new(0),
            lingering_len: AtomicUsize::new(0),
            clock,
        }
    }

    /// How many channels have a stream (subscribed or lingering).
    pub fn channel_count(&self) -> usize {
        read(&self.streams).len()
    }

    /// The bytes the kept publications hold now.
    pub fn history_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn cell(&self, channel: &str) -> Option<Arc<Cell>> {
        read(&self.streams).get(channel).cloned()
    }

    fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Drops the publications of `st` older than its `ttl`.
    fn expire(&self, st: &mut Stream, now: Instant) {
        while let Some((at, p)) = st.history.front() {
            if now.saturating_duration_since(*at) < st.ttl {
                break;
            }
            let n = p.data.len().saturating_add(ENTRY_OVERHEAD);
            st.history.pop_front();
            st.bytes = st.bytes.saturating_sub(n);
            self.release(n);
        }
    }

    /// Forgets the streams that have lingered past their history's life.
    /// Called where no stream lock is held. Lock order: the lingering
    /// queue, then the map (read); a stream's lock never under the queue's
    /// (an unsubscribe may come from under a stream's lock).
    fn sweep(&self) {
        // On the publish path: nothing to do is one atomic load, and the
        // queue is looked at ten times a second at most (at once when it
        // is over its bound).
        let queued = self.lingering_len.load(Ordering::Acquire);
        let now = (self.clock)();
        if queued == 0 || (queued <= MAX_LINGERING && !self.due(&self.swept, 100, now)) {
            return;
        }
        self.sweep_now(now);
        let len = lock(&self.lingering).len();
        self.lingering_len.store(len, Ordering::Release);
    }

    fn sweep_now(&self, now: Instant) {
        // Too many left behind (subscribe / publish / leave in a loop):
        // the oldest are forgotten before their time.
        loop {
            let name = {
                let mut q = lock(&self.lingering);
                if q.len() <= MAX_LINGERING {
                    break;
                }
                match q.pop_front() {
                    Some((_, n)) => n,
                    None => break,
                }
            };
            if let Some(cell) = self.cell(&name) {
                if !cell.subscribed.load(Ordering::Acquire) {
                    self.forget(&name, &cell);
                }
            }
        }
        loop {
            let (name, cell) = {
                let mut q = lock(&self.lingering);
                let Some((left, name)) = q.front() else {
                    return;
                };
                let cell = self
                    .cell(name)
                    .filter(|c| !c.subscribed.load(Ordering::Acquire));
                if let Some(c) = &cell {
                    let ttl = Duration::from_millis(c.ttl_ms.load(Ordering::Acquire));
                    if now.saturating_duration_since(*left) < ttl {
                        // Entries are in the order they were left: the
                        // ones behind are not older (a longer ttl in front
                        // holds them back, within the budget).
                        return;
                    }
                }
                match (q.pop_front(), cell) {
                    (Some((_, n)), Some(c)) => (n, c),
                    // Gone or subscribed again: nothing to forget.
                    _ => continue,
                }
            };
            let alive = {
                let mut st = lock(&cell.stream);
                self.expire(&mut st, now);
                match st.history.back() {
                    Some((at, _)) => Some(*at),
                    None => {
                        cell.dead.store(true, Ordering::Release);
                        None
                    }
                }
            };
            match alive {
                // Published to while lingering: it lives until its newest
                // publication expires.
                Some(at) => {
                    lock(&self.lingering).push_back((at, name));
                    self.lingering_len.fetch_add(1, Ordering::AcqRel);
                }
                None => {
                    let mut map = write(&self.streams);
                    if map.get(&name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                        map.remove(&name);
                    }
                }
            }
        }
    }

    /// The budget is (nearly) full: drops the expired publications of
    /// every stream, quiet ones included (each stream expires its own
    /// when it is touched). At most once a second; no lock held.
    fn reclaim(&self) {
        let now = (self.clock)();
        if !self.due(&self.reclaimed, 1000, now) {
            return;
        }
        let cells: Vec<Arc<Cell>> = read(&self.streams).values().cloned().collect();
        for cell in cells {
            self.expire(&mut lock(&cell.stream), now);
        }
    }

    /// True (for one caller) when `every_ms` have passed since `last`
    /// (milliseconds after `started`; 0: never) was set, which it now is.
    fn due(&self, last: &AtomicU64, every_ms: u64, now: Instant) -> bool {
        let t = u64::try_from(now.saturating_duration_since(self.started).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let l = last.load(Ordering::Acquire);
        (l == 0 || t.saturating_sub(l) >= every_ms)
            && last
                .compare_exchange(l, t, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Drops a lingering stream now, its history with it. No lock held.
    fn forget(&self, name: &str, cell: &Arc<Cell>) {
        {
            let mut st = lock(&cell.stream);
            cell.dead.store(true, Ordering::Release);
            let n = st.bytes;
            st.history.clear();
            st.bytes = 0;
            self.release(n);
        }
        let mut map = write(&self.streams);
        if map.get(name).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            map.remove(name);
        }
    }

    fn new_cell(&self) -> Arc<Cell> {
        Arc::new(Cell {
            subscribed: AtomicBool::new(true),
            dead: AtomicBool::new(false),
            ttl_ms: AtomicU64::new(0),
            stream: Mutex::new(Stream {
                position: StreamPosition {
                    offset: 0,
                    epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed),
                },
                history: VecDeque::new(),
                ttl: Duration::ZERO,
                bytes: 0,
            }),
        })
    }
}

fn ready<T: Send + 'static>(v: T) -> BrokerFuture<T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl MemoryBroker {
    /// The publish step, done at once (the future of
    /// [`Broker::publish`] is ready).
    fn publish_now(&self, channel: &str, data: Bytes, keep: Keep) -> Option<StreamPosition> {
        self.sweep();
        if self.used.load(Ordering::Acquire).saturating_add(data.len()) > self.budget {
            self.reclaim();
        }
        let cell = self.cell(channel)?;
        let mut st = lock(&cell.stream);
        if cell.dead.load(Ordering::Acquire) {
            return None;
        }
        // Saturates instead of wrapping: 2^64 publications never happen,
        // and a repeated offset would be worse than a stuck one.
        st.position.offset = st.position.offset.saturating_add(1);
        let publication = Publication {
            position: st.position,
            data,
        };
        let now = (self.clock)();
        self.expire(&mut st, now);
        if keep.keeps() {
            st.ttl = st.ttl.max(keep.ttl);
            let ms = u64::try_from(st.ttl.as_millis()).unwrap_or(u64::MAX);
            cell.ttl_ms.fetch_max(ms.max(1), Ordering::AcqRel);
            let n = publication.data.len().saturating_add(ENTRY_OVERHEAD);
            st.history.push_back((now, publication.clone()));
            st.bytes = st.bytes.saturating_add(n);
            self.used.fetch_add(n, Ordering::AcqRel);
            // The oldest go first: beyond the channel's size, then beyond
            // the broker's budget (possibly this very publication).
            while st.history.len() > keep.size || self.used.load(Ordering::Acquire) > self.budget {
                let Some((_, p)) = st.history.pop_front() else {
                    break;
                };
                let n = p.data.len().saturating_add(ENTRY_OVERHEAD);
                st.bytes = st.bytes.saturating_sub(n);
                self.release(n);
            }
        }
        // Delivered under the stream's lock: that is what keeps the
        // offsets in order for every handler (the rule on the trait).
        if cell.subscribed.load(Ordering::Acquire) {
            if let Some(handler) = self.handler.upgrade() {
                handler.handle_publication(channel, &publication);
            }
        }
        Some(st.position)
    }

    fn history_now(&self, channel: &str, after: Option<u64>, limit: usize) -> History {
        let Some(cell) = self
            .cell(channel)
            .filter(|c| !c.dead.load(Ordering::Acquire))
        else {
            return History {
                publications: Vec::new(),
                position: StreamPosition {
                    offset: 0,
                    epoch: 0,
                },
            };
        };
        let mut st = lock(&cell.stream);
        self.expire(&mut st, (self.clock)());
        let publications = st
            .history
            .iter()
            .map(|(_, p)| p)
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
        // A lingering stream comes back with its epoch and history; one
        // that never kept anything is not worth reviving.
        let revive = |c: &Cell| {
            !c.dead.load(Ordering::Acquire)
                && (c.subscribed.load(Ordering::Acquire) || c.ttl_ms.load(Ordering::Acquire) > 0)
        };
        if let Some(cell) = self.cell(channel).filter(|c| revive(c)) {
            cell.subscribed.store(true, Ordering::Release);
            return Ok(());
        }
        // Never takes a stream's lock while holding the map's: a publisher
        // holds a stream's lock while its handler may end up here.
        let mut map = write(&self.streams);
        match map.get(channel) {
            Some(c) if revive(c) => c.subscribed.store(true, Ordering::Release),
            old => {
                if let Some(c) = old {
                    c.dead.store(true, Ordering::Release);
                }
                map.insert(channel.to_owned(), self.new_cell());
            }
        }
        Ok(())
    }

    fn unsubscribe(&self, channel: &str) {
        // Called from a handler too, under this channel's stream lock:
        // flags, the map and the lingering queue only (none of them is
        // held by anyone who then takes a stream's lock); `sweep` forgets
        // a stream that lingers.
        let Some(cell) = self.cell(channel) else {
            return;
        };
        if !cell.subscribed.swap(false, Ordering::AcqRel) {
            return;
        }
        if cell.ttl_ms.load(Ordering::Acquire) == 0 {
            // It never kept anything: nothing to come back for.
            cell.dead.store(true, Ordering::Release);
            let mut map = write(&self.streams);
            if map.get(channel).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(channel);
            }
            return;
        }
        lock(&self.lingering).push_back(((self.clock)(), channel.to_owned()));
        self.lingering_len.fetch_add(1, Ordering::AcqRel);
    }

    fn publish(
        &self,
        channel: &str,
        data: Bytes,
        keep: Keep,
    ) -> BrokerFuture<Option<StreamPosition>> {
        ready(self.publish_now(channel, data, keep))
    }

    fn history(&self, channel: &str, after: Option<u64>, limit: usize) -> BrokerFuture<History> {
        self.sweep();
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

    const KEEP: Keep = Keep {
        size: 4,
        ttl: Duration::from_secs(60),
    };

    /// A clock the test moves.
    fn fake_clock() -> (Clock, Arc<AtomicU64>) {
        let start = Instant::now();
        let ms = Arc::new(AtomicU64::new(0));
        let m = Arc::clone(&ms);
        let clock: Clock =
            Arc::new(move || start + Duration::from_millis(m.load(Ordering::Relaxed)));
        (clock, ms)
    }

    fn x() -> Bytes {
        Bytes::from_static(b"x")
    }

    #[test]
    fn a_channel_without_history_is_forgotten_and_starts_a_new_epoch() {
        let count = Arc::new(Count(AtomicU64::new(0)));
        let weak: Weak<dyn BrokerHandler> = Arc::downgrade(&count) as _;
        let b = MemoryBroker::new(weak);
        b.subscribe("c").unwrap();
        let first = b.history_now("c", None, 0).position;
        assert_eq!(offset(b.publish_now("c", x(), Keep::NONE)), Some(1));
        b.unsubscribe("c");
        b.sweep();
        assert_eq!(b.channel_count(), 0);
        b.subscribe("c").unwrap();
        let second = b.history_now("c", None, 10);
        assert_eq!(second.position.offset, 0);
        assert_ne!(second.position.epoch, first.epoch);
        assert!(second.publications.is_empty());
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_left_channel_with_history_lingers_for_its_ttl_then_goes() {
        let count = Arc::new(Count(AtomicU64::new(0)));
        let weak: Weak<dyn BrokerHandler> = Arc::downgrade(&count) as _;
        let (clock, ms) = fake_clock();
        let b = MemoryBroker::with_budget(weak, DEFAULT_HISTORY_BYTES, clock);
        b.subscribe("c").unwrap();
        let epoch = b.publish_now("c", x(), KEEP).unwrap().epoch;
        b.unsubscribe("c");
        // Published to while nobody listens: kept, not delivered.
        ms.store(30_000, Ordering::Relaxed);
        assert_eq!(offset(b.publish_now("c", x(), KEEP)), Some(2));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // Back within the ttl: same epoch, both kept.
        ms.store(59_000, Ordering::Relaxed);
        b.sweep();
        let h = b.history_now("c", Some(0), 10);
        assert_eq!(h.position.epoch, epoch);
        assert_eq!(h.publications.len(), 2);
        // The first expired at 60 s; the second lives until 90 s.
        ms.store(61_000, Ordering::Relaxed);
        b.sweep();
        assert_eq!(b.history_now("c", None, 10).publications.len(), 1);
        assert_eq!(b.channel_count(), 1);
        ms.store(91_000, Ordering::Relaxed);
        b.sweep();
        assert_eq!(b.channel_count(), 0, "forgotten once nothing is kept");
        assert_eq!(b.history_bytes(), 0);
        assert_eq!(offset(b.publish_now("c", x(), KEEP)), None);
        b.subscribe("c").unwrap();
        assert_ne!(b.history_now("c", None, 0).position.epoch, epoch);
    }

    #[test]
    fn leaving_many_channels_cannot_hold_memory() {
        let (clock, _) = fake_clock();
        let b = MemoryBroker::with_budget(Weak::<Count>::new(), DEFAULT_HISTORY_BYTES, clock);
        // Without history: forgotten at once, no sweep needed.
        b.subscribe("plain").unwrap();
        b.publish_now("plain", x(), Keep::NONE);
        b.unsubscribe("plain");
        assert_eq!(b.channel_count(), 0);
        assert_eq!(b.publish_now("plain", x(), Keep::NONE), None);
        // With history: they linger, but not more than MAX_LINGERING.
        for i in 0..MAX_LINGERING + 100 {
            let c = format!("c{i}");
            b.subscribe(&c).unwrap();
            b.publish_now(&c, x(), KEEP);
            b.unsubscribe(&c);
        }
        b.sweep();
        assert!(b.channel_count() <= MAX_LINGERING, "{}", b.channel_count());
        // The oldest went first, their budget bytes with them.
        assert_eq!(b.history_now("c0", None, 10).position.offset, 0);
        assert_eq!(
            b.history_now(&format!("c{}", MAX_LINGERING + 99), None, 10)
                .publications
                .len(),
            1
        );
        assert_eq!(b.history_bytes(), b.channel_count() * (1 + ENTRY_OVERHEAD));
    }

    #[test]
    fn resubscribing_a_lingering_channel_keeps_it() {
        let (clock, ms) = fake_clock();
        let b = MemoryBroker::with_budget(Weak::<Count>::new(), DEFAULT_HISTORY_BYTES, clock);
        b.subscribe("c").unwrap();
        b.publish_now("c", x(), KEEP);
        b.unsubscribe("c");
        b.subscribe("c").unwrap();
        ms.store(120_000, Ordering::Relaxed);
        b.sweep();
        assert_eq!(b.channel_count(), 1, "subscribed again: never swept");
        assert_eq!(b.history_now("c", None, 0).position.offset, 1);
    }

    #[test]
    fn the_history_budget_bounds_every_channel_together() {
        let (clock, ms) = fake_clock();
        let budget = 10 * (100 + ENTRY_OVERHEAD);
        let b = MemoryBroker::with_budget(Weak::<Count>::new(), budget, clock);
        let big = Bytes::from(vec![b'a'; 100]);
        let keep = Keep {
            size: 100,
            ttl: Duration::from_secs(60),
        };
        for c in ["a", "b", "c"] {
            b.subscribe(c).unwrap();
            for _ in 0..8 {
                b.publish_now(c, big.clone(), keep);
                assert!(b.history_bytes() <= budget);
            }
        }
        // The budget is full: "c" keeps nothing (a recovering client is
        // told `recovered: false`) while its offsets keep counting; "a"
        // keeps all it had.
        let h = b.history_now("c", None, 100);
        assert_eq!(h.position.offset, 8);
        assert!(h.publications.is_empty());
        assert_eq!(b.history_now("a", None, 100).publications.len(), 8);
        // Once older ones expire, there is room again.
        ms.store(61_000, Ordering::Relaxed);
        b.publish_now("c", big.clone(), keep);
        assert_eq!(b.history_now("c", None, 100).publications.len(), 1);
        assert!(b.history_now("a", None, 100).publications.is_empty());
        // One larger than the whole budget is not kept at all.
        b.publish_now("c", Bytes::from(vec![b'a'; budget]), keep);
        assert!(b.history_bytes() <= budget);
    }

    #[test]
    fn two_brokers_start_at_different_epochs() {
        let none: Weak<dyn BrokerHandler> = Weak::<Count>::new();
        let (a, b) = (MemoryBroker::new(none.clone()), MemoryBroker::new(none));
        a.subscribe("c").unwrap();
        b.subscribe("c").unwrap();
        assert_ne!(
            a.history_now("c", None, 0).position.epoch,
            b.history_now("c", None, 0).position.epoch
        );
    }

    #[test]
    fn publishing_without_a_handler_still_counts() {
        let b = MemoryBroker::new(Weak::<Count>::new());
        b.subscribe("c").unwrap();
        assert_eq!(
            offset(b.publish_now("c", Bytes::new(), Keep::NONE)),
            Some(1)
        );
        assert_eq!(
            offset(b.publish_now("c", Bytes::new(), Keep::NONE)),
            Some(2)
        );
        // Keep::NONE keeps nothing.
        let h = b.history_now("c", None, 10);
        assert!(h.publications.is_empty());
        assert_eq!(h.position.offset, 2);
        assert!(format!("{b:?}").contains("channels: 1"));
        assert!(b.available());
    }
}
