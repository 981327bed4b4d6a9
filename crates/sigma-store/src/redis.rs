//! `[cluster] redis`: the shared ephemeral state of several nodes (DESIGN
//! §7) — the `&broadcast` broker and the shared counters of A's login
//! throttles.
//!
//! ```text
//!  hub ─publish─▶ RedisBroker ─job─▶ [publisher task] ─EVAL pipeline─▶ Redis
//!                                                      (seq, XADD, PUBLISH: one script)
//!  hub ◀─handle_publication─ RedisBroker ◀─ [pubsub task] ◀─PSUBSCRIBE {prefix}bc*─┘
//! ```
//!
//! One [`Cluster`] per process: one connection for commands, one for
//! pub/sub, both made in the background and made again with backoff when
//! they break, so that a node starts and keeps serving while Redis is
//! away. Each `&broadcast` hub gets a [`RedisBroker`] named by its route
//! (its namespace); the pub/sub task receives every namespace's
//! publications through one pattern and hands each to its hub.
//!
//! **Order.** Publishing is one Lua script: the next `seq` of the channel
//! (a hash with its `epoch`), the append to a capped stream (history),
//! then `PUBLISH` — Redis runs scripts one at a time and delivers a
//! connection's pub/sub messages in publish order, so every node sees one
//! order per channel. One task sends every publish of the process, in
//! the order [`Broker::publish`] was called, pipelined in batches: a
//! socket's publishes keep their order.
//!
//! **Loss.** When the pub/sub connection breaks, publications may be
//! missed: every hub is told ([`BrokerHandler::handle_lost`]) and closes
//! its subscribers (1011) until the connection is back; publishes fail
//! fast with [`BrokerError::Unavailable`] (503 / an error message). A
//! channel's hash and stream expire the TTL given to [`Cluster::start`] after its last
//! publish, unless some node has subscribers on it (each node extends
//! the life of its subscribed channels every third of the TTL); when they
//! are gone (expired, flushed, Redis restarted without persistence) the
//! next publish starts a new epoch at seq 1.
//!
//! **Names.** Everything sigma keeps in Redis starts with `[cluster]
//! prefix` (default `sigma:`), so that several deployments (and test
//! runs) share one Redis without seeing each other: `{prefix}bc{route}/
//! {channel}` is a channel's hash and its pub/sub channel, `{prefix}bh
//! {route}/{channel}` its history stream, `{prefix}n/…` the counters,
//! `{prefix}nd{node}` the pub/sub channel of one node's relay ([`relay`]),
//! `{prefix}bj{route}/{channel}` a channel's joins and leaves and
//! `{prefix}bu…` the nodes where a user is in a channel ([`joins`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

mod joins;
mod relay;

pub use relay::{ASK_TIMEOUT, MAX_ASKS};

use crate::{
    Broker, BrokerError, BrokerFuture, BrokerHandler, History, Keep, Publication, SharedCounters,
    StreamPosition,
};

/// How long one Redis round trip may take before it counts as a failure.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Publishes waiting for the publisher task, at most: beyond it a publish
/// fails at once (Redis is too slow or away), memory stays bounded.
pub const PUBLISH_QUEUE: usize = 8192;
/// The bytes of the publishes waiting for the publisher task, at most
/// (each may be up to `[broadcast] max_message`): beyond it a publish fails
/// at once, so a slow Redis cannot make a node hold 8 192 large messages.
pub const PUBLISH_QUEUE_BYTES: usize = 64 << 20;
/// Publishes sent in one pipeline, at most.
const BATCH: usize = 256;
/// Reconnection backoff: from the first to the last, doubling, with jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_LAST: Duration = Duration::from_secs(5);
/// The pub/sub connection is pinged this often, so that a silent break
/// (no FIN) is noticed too.
const PING_EVERY: Duration = Duration::from_secs(5);
/// The default time to live of a channel's hash and history.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The publish step (see the module's doc). KEYS: the channel's hash,
/// its stream. ARGV: the pub/sub channel, the payload, an epoch for a new
/// stream, the history size, the hash's time to live and the history's,
/// in seconds (a history ttl of 0 keeps nothing).
const PUBLISH_SCRIPT: &str = r"
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
local size = tonumber(ARGV[4])
local kept = tonumber(ARGV[6])
if size > 0 and kept > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, seq .. '-1', 'd', ARGV[2])
  redis.call('EXPIRE', KEYS[2], kept)
end
redis.call('PUBLISH', ARGV[1], seq .. ' ' .. epoch .. ' ' .. ARGV[2])
return {seq, epoch}
";

/// The history step: the channel's position (its epoch made now if it
/// has none, so that a subscriber's first position stays valid once the
/// first publish comes) and up to `count` kept publications from an id
/// on. KEYS: the channel's hash, its stream. ARGV: an epoch for a new
/// stream, the hash's time to live, the first stream id, the count.
const HISTORY_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
local n = tonumber(ARGV[4])
local entries = {}
if n > 0 then
  entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+', 'COUNT', n)
end
return {seq, epoch, entries}
";

/// What `/healthz` and `/metrics` say about Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The pub/sub connection is up (publications reach this node).
    pub pubsub: bool,
    /// The last command reached Redis.
    pub commands: bool,
    /// Operations that failed because Redis could not be reached.
    pub failures: u64,
    /// Times the pub/sub connection was lost.
    pub lost: u64,
}

/// One publish waiting for the publisher task.
struct Job {
    meta: String,
    stream: String,
    channel: String,
    data: Bytes,
    keep: Keep,
    reply: oneshot::Sender<Result<Option<StreamPosition>, BrokerError>>,
}

/// The process's connection to Redis (see the module's doc).
pub struct Cluster {
    inner: Arc<Inner>,
    jobs: mpsc::Sender<Job>,
}

struct Inner {
    client: redis::Client,
    /// Where the URL points, without a password, for messages.
    target: String,
    prefix: String,
    ttl: Duration,
    conn: tokio::sync::Mutex<Conn>,
    brokers: RwLock<HashMap<String, Weak<BrokerShared>>>,
    pubsub_up: AtomicBool,
    commands_up: AtomicBool,
    failures: AtomicU64,
    lost: AtomicU64,
    next_epoch: AtomicU64,
    /// How often both connections are pinged ([`PING_EVERY`]).
    ping_every: Duration,
    /// The bytes of the publishes queued or in flight
    /// ([`PUBLISH_QUEUE_BYTES`]).
    queued_bytes: AtomicUsize,
    /// This process among the nodes (random), in presence entries.
    node: u64,
    /// Presence changes, applied in order by one task.
    presence: mpsc::Sender<PresenceOp>,
    /// Asks between nodes ([`Cluster::relay`]).
    relays: relay::Relays,
}

/// How long a presence entry lives unless its node refreshes it: a node
/// that dies leaves its subscribers listed this long at most.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// Presence changes queued for Redis, at most; beyond it a change is
/// dropped (an entry that should go expires within [`PRESENCE_TTL`]).
const PRESENCE_QUEUE: usize = 8192;

/// One presence change: a member's entry in a channel's sorted set
/// (score: when it expires, in Unix milliseconds).
enum PresenceOp {
    Add {
        key: String,
        entry: String,
    },
    Remove {
        key: String,
        entry: String,
    },
    /// A user's first local join or last local leave ([`joins`]).
    JoinLeave(joins::Change),
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn presence_expiry() -> u64 {
    unix_ms().saturating_add(u64::try_from(PRESENCE_TTL.as_millis()).unwrap_or(u64::MAX))
}

/// Applies presence changes in the order they were made, pipelined.
async fn presence_writer(inner: Weak<Inner>, mut rx: mpsc::Receiver<PresenceOp>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let Some(me) = inner.upgrade() else { return };
        let mut pipe = redis::pipe();
        let expiry = presence_expiry();
        let mut changes = Vec::new();
        for op in batch.drain(..) {
            match op {
                PresenceOp::Add { key, entry } => {
                    pipe.cmd("ZADD").arg(&key).arg(expiry).arg(entry).ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(&key)
                        .arg(PRESENCE_TTL.as_millis() as u64)
                        .ignore();
                }
                PresenceOp::Remove { key, entry } => {
                    pipe.cmd("ZREM").arg(key).arg(entry).ignore();
                }
                PresenceOp::JoinLeave(change) => {
                    if joins::queue(&me, &mut pipe, &change) {
                        changes.push(change);
                    }
                }
            }
        }
        // A failure loses these changes: stale entries expire, joins are
        // refreshed, leaves kept.
        if !pipe.is_empty() && me.query::<()>(&pipe).await.is_err() {
            joins::failed(changes);
        }
    }
}

/// The command connection, when connecting last failed, and how long to
/// wait from then before trying again (doubling up to [`BACKOFF_LAST`]:
/// while Redis does not answer at all, at most one caller in that long
/// waits for a connect to time out; the others fail at once).
#[derive(Default)]
struct Conn {
    conn: Option<redis::aio::MultiplexedConnection>,
    failed_at: Option<Instant>,
    backoff: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("target", &self.inner.target)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Why `[cluster] redis` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterError(String);

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// `redis://host:port/db`, its password (if any) hidden.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            format!(
                "{}://…@{}",
                url.get(..s).unwrap_or(""),
                url.get(at + 1..).unwrap_or("")
            )
        }
        _ => url.to_owned(),
    }
}

impl Cluster {
    /// Starts the connection to the Redis of `url` (its tasks need a tokio
    /// runtime), with every key under `prefix` and channels expiring `ttl`
    /// after their last publish. Fails only on a URL that is not a Redis
    /// URL; an unreachable server is retried in the background.
    pub fn start(url: &str, prefix: &str, ttl: Duration) -> Result<Self, ClusterError> {
        Self::start_pinging(url, None, prefix, ttl, PING_EVERY)
    }

    /// [`Cluster::start`] with the PEM roots `ca` that a `rediss://`
    /// server's certificate must chain to (`None`: the system's roots).
    pub fn start_tls(
        url: &str,
        ca: Option<Vec<u8>>,
        prefix: &str,
        ttl: Duration,
    ) -> Result<Self, ClusterError> {
        Self::start_pinging(url, ca, prefix, ttl, PING_EVERY)
    }

    /// [`Cluster::start`] pinging every `ping_every` (tests).
    fn start_pinging(
        url: &str,
        ca: Option<Vec<u8>>,
        prefix: &str,
        ttl: Duration,
        ping_every: Duration,
    ) -> Result<Self, ClusterError> {
        let client = match ca {
            None => redis::Client::open(url),
            Some(_) if !url.starts_with("rediss://") => {
                return Err(ClusterError(
                    "a CA applies to a rediss:// (TLS) URL only".to_owned(),
                ))
            }
            Some(root) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            ),
        }
        .map_err(|e| {
            ClusterError(format!(
                "not a Redis URL (redis://host:port/db, rediss:// for TLS) or its CA: {e}"
            ))
        })?;
        let seed = std::collections::hash_map::RandomState::new();
        let (presence_tx, presence_rx) = mpsc::channel(PRESENCE_QUEUE);
        let inner = Arc::new(Inner {
            client,
            target: redacted(url),
            prefix: prefix.to_owned(),
            ttl: ttl.max(Duration::from_secs(1)),
            conn: tokio::sync::Mutex::new(Conn::default()),
            brokers: RwLock::new(HashMap::new()),
            pubsub_up: AtomicBool::new(false),
            commands_up: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            next_epoch: AtomicU64::new(std::hash::BuildHasher::hash_one(&seed, 0u8) >> 11),
            ping_every,
            queued_bytes: AtomicUsize::new(0),
            node: std::hash::BuildHasher::hash_one(&seed, 1u8),
            presence: presence_tx,
            relays: relay::Relays::default(),
        });
        let (jobs, rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publisher(Arc::clone(&inner), rx));
        tokio::spawn(presence_writer(Arc::downgrade(&inner), presence_rx));
        tokio::spawn(pubsub(Arc::downgrade(&inner)));
        tokio::spawn(keep_alive(Arc::downgrade(&inner)));
        Ok(Self { inner, jobs })
    }

    /// Where it connects (the URL without its password).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// The state of both connections.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            pubsub: self.inner.pubsub_up.load(Ordering::Acquire),
            commands: self.inner.commands_up.load(Ordering::Acquire),
            failures: self.inner.failures.load(Ordering::Relaxed),
            lost: self.inner.lost.load(Ordering::Relaxed),
        }
    }

    /// Waits until both connections are up, at most `limit`: true if
    /// they are.
    pub async fn wait_up(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.inner.connection().await.is_ok() && self.status().pubsub {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks between the nodes, on this Redis ([`crate::Relay`]).
    pub fn relay(&self) -> Arc<dyn crate::Relay> {
        Arc::new(relay::RedisRelay {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Asks of this node waiting for their answers.
    pub fn asks_waiting(&self) -> usize {
        self.inner.relays.waiting()
    }

    /// The broker of one `&broadcast` hub: its channels live under
    /// `namespace` (the route's path).
    pub fn broker(&self, namespace: &str, handler: Weak<dyn BrokerHandler>) -> Arc<RedisBroker> {
        let shared = Arc::new(BrokerShared {
            handler,
            namespace: namespace.to_owned(),
            joins: joins::Joins::default(),
            subscribed: RwLock::new(HashSet::new()),
            present: std::sync::Mutex::new(HashMap::new()),
        });
        self.inner
            .brokers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(namespace.to_owned(), Arc::downgrade(&shared));
        Arc::new(RedisBroker {
            inner: Arc::clone(&self.inner),
            jobs: self.jobs.clone(),
            namespace: namespace.to_owned(),
            shared,
        })
    }

    fn counter_key(&self, key: &str, window: Duration) -> String {
        let w = window.as_secs().max(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{}n/{key}/{}", self.inner.prefix, now / w)
    }
}

impl SharedCounters for Cluster {
    /// A fixed window shared by every node: `INCR` and `EXPIRE` (twice
    /// the window) on `{prefix}n/{key}/{window number}`.
    fn hit(&self, key: &str, window: Duration) -> BrokerFuture<u64> {
        let key = self.counter_key(key, window);
        let secs = window.as_secs().max(1).saturating_mul(2);
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("INCR")
                .arg(&key)
                .cmd("EXPIRE")
                .arg(&key)
                .arg(secs)
                .ignore();
            let (n,): (u64,) = inner.query(&pipe).await?;
            Ok(n)
        })
    }

    fn count(&self, key: &str, window: Duration) -> BrokerFuture<u64> {
        let key = self.counter_key(key, window);
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&key);
            let (n,): (Option<u64>,) = inner.query(&pipe).await?;
            Ok(n.unwrap_or(0))
        })
    }
}

impl Inner {
    /// The command connection, made if needed (while Redis is away, not
    /// more often than [`Conn::backoff`] allows).
    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, BrokerError> {
        let mut c = self.conn.lock().await;
        if let Some(conn) = &c.conn {
            return Ok(conn.clone());
        }
        if c.failed_at.is_some_and(|t| t.elapsed() < c.backoff) {
            return Err(unavailable(format!("{} is unreachable", self.target)));
        }
        match tokio::time::timeout(
            REDIS_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(conn)) => {
                if !self.commands_up.swap(true, Ordering::AcqRel) {
                    tracing::info!(redis = %self.target, "redis: connected");
                }
                c.failed_at = None;
                c.backoff = Duration::ZERO;
                c.conn = Some(conn.clone());
                Ok(conn)
            }
            Ok(Err(e)) => Err(self.connect_failed(&mut c, e.to_string())),
            Err(_) => Err(self.connect_failed(&mut c, "timed out".to_owned())),
        }
    }

    fn connect_failed(&self, c: &mut Conn, why: String) -> BrokerError {
        c.failed_at = Some(Instant::now());
        c.backoff = c
            .backoff
            .saturating_mul(2)
            .clamp(BACKOFF_FIRST, BACKOFF_LAST);
        if self.commands_up.swap(false, Ordering::AcqRel) {
            tracing::error!(redis = %self.target, "redis: cannot connect: {why}");
        }
        unavailable(format!("{}: {why}", self.target))
    }

    /// Runs `pipe`; a failure drops the connection (the next call makes a
    /// new one) and counts.
    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        let mut conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let r = tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<T>(&mut conn)).await;
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) => {
                // Redis answered with an error: the connection is fine.
                Err(BrokerError::Unavailable(format!("redis refused: {e}")))
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut c = self.conn.lock().await;
                c.conn = None;
                if self.commands_up.swap(false, Ordering::AcqRel) {
                    tracing::error!(redis = %self.target, "redis: connection lost: {why}");
                }
                Err(unavailable(format!("{}: {why}", self.target)))
            }
        }
    }

    /// A `PING` on the command connection (reconnecting it if needed), so
    /// that its state in `/healthz` is never older than [`PING_EVERY`].
    async fn ping(&self) {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        let _ = self.query::<(String,)>(&pipe).await;
    }

    fn brokers(&self) -> Vec<Arc<BrokerShared>> {
        self.brokers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// A message of the pattern subscription: `{prefix}bc{ns}/{channel}`
    /// carrying `seq epoch payload`.
    fn deliver(&self, name: &str, payload: &[u8]) {
        let Some(rest) = name.strip_prefix(&self.prefix) else {
            return;
        };
        if let Some(rest) = rest.strip_prefix("bj") {
            return joins::on_event(self, rest, payload);
        }
        let Some(rest) = rest.strip_prefix("bc") else {
            return;
        };
        let Some((ns, channel)) = rest.rsplit_once('/') else {
            return;
        };
        let Some(publication) = parse_publication(payload) else {
            tracing::warn!(channel = name, "redis: a malformed publication was dropped");
            return;
        };
        if let Some(h) = self.broker_of(ns).and_then(|b| b.listener(channel)) {
            h.handle_publication(channel, &publication);
        }
    }

    /// The broker of the hub of route `ns`, if it is alive.
    fn broker_of(&self, ns: &str) -> Option<Arc<BrokerShared>> {
        self.brokers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
            .and_then(Weak::upgrade)
    }
}

/// `seq epoch payload` as the script publishes it.
fn parse_publication(payload: &[u8]) -> Option<Publication> {
    let mut parts = payload.splitn(3, |b| *b == b' ');
    let num = |p: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(p?).ok()?.parse().ok() };
    let offset = num(parts.next())?;
    let epoch = num(parts.next())?;
    let data = Bytes::copy_from_slice(parts.next()?);
    Some(Publication {
        position: StreamPosition { offset, epoch },
        data,
    })
}

/// Sends every publish of the process, in the order they were made,
/// pipelined in batches of up to [`BATCH`].
async fn publisher(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for job in &batch {
            let epoch = inner.next_epoch.fetch_add(1, Ordering::Relaxed);
            // EVAL, not EVALSHA: Redis caches the compiled script by its
            // hash anyway, and a flushed or new server needs no reload.
            pipe.cmd("EVAL")
                .arg(PUBLISH_SCRIPT)
                .arg(2)
                .arg(&job.meta)
                .arg(&job.stream)
                .arg(&job.channel)
                .arg(job.data.as_ref())
                .arg(epoch)
                .arg(job.keep.size)
                .arg(inner.ttl.max(job.keep.ttl).as_secs().max(1))
                .arg(job.keep.ttl.as_secs_f64().ceil() as u64);
        }
        let bytes: usize = batch.iter().map(|j| j.data.len()).sum();
        let result = inner.query::<Vec<(u64, u64)>>(&pipe).await;
        drop(pipe);
        inner.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        match result {
            Ok(positions) => {
                let mut positions = positions.into_iter();
                for job in batch.drain(..) {
                    let r = positions
                        .next()
                        .map(|(offset, epoch)| Some(StreamPosition { offset, epoch }))
                        .ok_or_else(|| unavailable("redis: a short pipeline answer"));
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(BrokerError::Unavailable(msg.clone())));
                }
            }
        }
    }
}

/// Every third of the time to live, extends the life of the hash of each
/// channel this node has subscribers on (`EXPIRE`, pipelined), so that a
/// quiet channel somebody listens to keeps its `seq` and epoch instead of
/// restarting at 1 under its subscribers' feet.
async fn keep_alive(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(me) => (me.ttl.min(PRESENCE_TTL) / 3).max(Duration::from_millis(300)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(me) = inner.upgrade() else { return };
        joins::refresh(&me);
        let keys: Vec<String> = {
            let map = me.brokers.read().unwrap_or_else(PoisonError::into_inner);
            map.iter()
                .filter_map(|(ns, b)| Some((ns, b.upgrade()?)))
                .flat_map(|(ns, b)| {
                    let subscribed = b.subscribed.read().unwrap_or_else(PoisonError::into_inner);
                    subscribed
                        .iter()
                        .map(|c| format!("{}bc{ns}/{c}", me.prefix))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for chunk in keys.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("EXPIRE").arg(k).arg(me.ttl.as_secs()).ignore();
            }
            if me.query::<()>(&pipe).await.is_err() {
                break;
            }
        }
        // This node's presence entries live on; expired ones (of nodes
        // that died) go.
        let present: Vec<(String, Vec<String>)> = {
            let map = me.brokers.read().unwrap_or_else(PoisonError::into_inner);
            map.iter()
                .filter_map(|(ns, b)| Some((ns, b.upgrade()?)))
                .flat_map(|(ns, b)| {
                    let present = b.present.lock().unwrap_or_else(PoisonError::into_inner);
                    present
                        .iter()
                        .map(|(c, members)| {
                            let entries = members
                                .iter()
                                .map(|(id, user)| me.presence_entry(*id, user))
                                .collect();
                            (me.presence_key(ns, c), entries)
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let expiry = presence_expiry();
        for chunk in present.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for (key, entries) in chunk {
                for e in entries {
                    pipe.cmd("ZADD").arg(key).arg(expiry).arg(e).ignore();
                }
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(unix_ms())
                    .ignore();
                pipe.cmd("PEXPIRE")
                    .arg(key)
                    .arg(PRESENCE_TTL.as_millis() as u64)
                    .ignore();
            }
            if me.query::<()>(&pipe).await.is_err() {
                break;
            }
        }
    }
}

impl Inner {
    fn presence_key(&self, namespace: &str, channel: &str) -> String {
        format!("{}pr{namespace}/{channel}", self.prefix)
    }

    /// `node|member|user`: unique per socket, the user last (it may
    /// hold any character but a line break).
    fn presence_entry(&self, member: u64, user: &str) -> String {
        format!("{:x}|{member}|{user}", self.node)
    }
}

fn me_ping_every(inner: &Weak<Inner>) -> Duration {
    inner.upgrade().map_or(PING_EVERY, |me| me.ping_every)
}

/// Keeps the pattern subscription up: connects, subscribes, hands every
/// message over, and after a break tells every hub and connects again.
async fn pubsub(inner: Weak<Inner>) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let pattern = format!("{}bc*", me.prefix);
        let events = joins::pattern(&me.prefix);
        let mine = relay::channel(&me.prefix, me.node);
        let client = me.client.clone();
        let target = me.target.clone();
        drop(me);
        let connected = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(&pattern).await?;
            ps.psubscribe(&events).await?;
            ps.subscribe(&mine).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = match tokio::time::timeout(REDIS_TIMEOUT, connected).await {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => {
                tracing::debug!(redis = %target, "redis pub/sub: cannot connect: {e}");
                sleep_backoff(&mut backoff).await;
                continue;
            }
            Err(_) => {
                sleep_backoff(&mut backoff).await;
                continue;
            }
        };
        backoff = BACKOFF_FIRST;
        let (mut sink, mut stream) = ps.split();
        match inner.upgrade() {
            Some(me) => {
                me.pubsub_up.store(true, Ordering::Release);
                tracing::info!(redis = %target, "redis pub/sub: subscribed");
                // Redis is back: so is the command connection, at once
                // (its backoff is over), without waiting for a command.
                me.conn.lock().await.failed_at = None;
                me.ping().await;
            }
            None => return,
        }
        let mut ping = tokio::time::interval(me_ping_every(&inner));
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let Some(me) = inner.upgrade() else { return };
                        let name = msg.get_channel_name();
                        if name == mine {
                            relay::on_message(&me, msg.get_payload_bytes());
                        } else {
                            me.deliver(name, msg.get_payload_bytes());
                        }
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    // Subscribed, Redis answers a PING with an array
                    // (`pong`, ""), not `+PONG`: any answer will do.
                    let pong = tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                    let Some(me) = inner.upgrade() else { return };
                    me.ping().await;
                }
            }
        }
        let Some(me) = inner.upgrade() else { return };
        me.pubsub_up.store(false, Ordering::Release);
        me.lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!(redis = %target, "redis pub/sub: connection lost; closing broadcast subscribers (1011) until it is back");
        for b in me.brokers() {
            b.lost();
        }
        drop(me);
        sleep_backoff(&mut backoff).await;
    }
}

/// Sleeps `backoff` with ±25 % jitter and doubles it (up to
/// [`BACKOFF_LAST`]).
async fn sleep_backoff(backoff: &mut Duration) {
    let seed = std::collections::hash_map::RandomState::new();
    let r = std::hash::BuildHasher::hash_one(&seed, 0u8) % 500;
    let jittered = backoff.mul_f64(0.75 + (r as f64) / 1000.0);
    tokio::time::sleep(jittered).await;
    *backoff = backoff.saturating_mul(2).min(BACKOFF_LAST);
}

/// What the pub/sub task shares with one [`RedisBroker`].
struct BrokerShared {
    handler: Weak<dyn BrokerHandler>,
    /// Its hub's route.
    namespace: String,
    /// The users it holds in `join_leave` channels ([`joins`]).
    joins: joins::Joins,
    /// The channels this node's hub listens to.
    subscribed: RwLock<HashSet<String>>,
    /// This node's members in each channel, with their users: presence,
    /// refreshed by `keep_alive`.
    present: std::sync::Mutex<HashMap<String, HashMap<u64, String>>>,
}

impl BrokerShared {
    /// The hub, if this node listens to `channel`.
    fn listener(&self, channel: &str) -> Option<Arc<dyn BrokerHandler>> {
        let listening = self
            .subscribed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(channel);
        if listening {
            self.handler.upgrade()
        } else {
            None
        }
    }

    fn lost(&self) {
        self.subscribed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        if let Some(h) = self.handler.upgrade() {
            h.handle_lost();
        }
    }
}

/// The broker of one `&broadcast` hub on Redis (see the module's doc).
pub struct RedisBroker {
    inner: Arc<Inner>,
    jobs: mpsc::Sender<Job>,
    namespace: String,
    shared: Arc<BrokerShared>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        let mut map = self
            .inner
            .brokers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mine = map
            .get(&self.namespace)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.shared)));
        if mine {
            map.remove(&self.namespace);
        }
    }
}

impl RedisBroker {
    fn keys(&self, channel: &str) -> (String, String, String) {
        let p = &self.inner.prefix;
        let ns = &self.namespace;
        let name = format!("{p}bc{ns}/{channel}");
        (name.clone(), format!("{p}bh{ns}/{channel}"), name)
    }
}

impl Broker for RedisBroker {
    fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if !self.inner.pubsub_up.load(Ordering::Acquire) {
            return Err(unavailable(format!(
                "{}: no pub/sub connection",
                self.inner.target
            )));
        }
        self.shared
            .subscribed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(channel.to_owned());
        Ok(())
    }

    fn unsubscribe(&self, channel: &str) {
        self.shared
            .subscribed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(channel);
    }

    fn publish(
        &self,
        channel: &str,
        data: Bytes,
        keep: Keep,
    ) -> BrokerFuture<Option<StreamPosition>> {
        let len = data.len();
        let before = self.inner.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > PUBLISH_QUEUE_BYTES {
            self.inner.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.inner.failures.fetch_add(1, Ordering::Relaxed);
            let why = "the publish queue is full (bytes): Redis is too slow";
            return Box::pin(std::future::ready(Err(unavailable(why))));
        }
        let (meta, stream, name) = self.keys(channel);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            meta,
            stream,
            channel: name,
            data,
            keep,
            reply,
        };
        // Queued now, in call order; the future only waits for the answer.
        if let Err(e) = self.jobs.try_send(job) {
            self.inner.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.inner.failures.fetch_add(1, Ordering::Relaxed);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the publish queue is full",
                mpsc::error::TrySendError::Closed(_) => "the publisher stopped",
            };
            return Box::pin(std::future::ready(Err(unavailable(why))));
        }
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(unavailable("the publisher stopped")))
        })
    }

    fn history(&self, channel: &str, after: Option<u64>, limit: usize) -> BrokerFuture<History> {
        let (meta, stream, _) = self.keys(channel);
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let start = match after {
                Some(a) => format!("{}-0", a.saturating_add(1)),
                None => "-".to_owned(),
            };
            let epoch = inner.next_epoch.fetch_add(1, Ordering::Relaxed);
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg(HISTORY_SCRIPT)
                .arg(2)
                .arg(&meta)
                .arg(&stream)
                .arg(epoch)
                .arg(inner.ttl.as_secs().max(1))
                .arg(start)
                .arg(limit);
            type Entry = (String, HashMap<String, Vec<u8>>);
            let ((seq, epoch, entries),): ((u64, u64, Vec<Entry>),) = inner.query(&pipe).await?;
            let position = StreamPosition { offset: seq, epoch };
            let publications = if limit == 0 {
                Vec::new()
            } else {
                entries
                    .into_iter()
                    .filter_map(|(id, mut fields)| {
                        let offset = id.split_once('-')?.0.parse().ok()?;
                        Some(Publication {
                            position: StreamPosition {
                                offset,
                                epoch: position.epoch,
                            },
                            data: Bytes::from(fields.remove("d")?),
                        })
                    })
                    .collect()
            };
            Ok(History {
                publications,
                position,
            })
        })
    }

    fn available(&self) -> bool {
        self.inner.pubsub_up.load(Ordering::Acquire)
    }

    fn presence_join(&self, channel: &str, member: u64, user: &str) {
        self.shared
            .present
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(channel.to_owned())
            .or_default()
            .insert(member, user.to_owned());
        let op = PresenceOp::Add {
            key: self.inner.presence_key(&self.namespace, channel),
            entry: self.inner.presence_entry(member, user),
        };
        let _ = self.inner.presence.try_send(op);
    }

    fn presence_leave(&self, channel: &str, member: u64) {
        let user = {
            let mut present = self
                .shared
                .present
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(members) = present.get_mut(channel) else {
                return;
            };
            let user = members.remove(&member);
            if members.is_empty() {
                present.remove(channel);
            }
            user
        };
        if let Some(user) = user {
            let op = PresenceOp::Remove {
                key: self.inner.presence_key(&self.namespace, channel),
                entry: self.inner.presence_entry(member, &user),
            };
            let _ = self.inner.presence.try_send(op);
        }
    }

    fn announce_join_leave(&self, channel: &str, user: &str, member: u64, joined: bool) -> bool {
        self.join_leave(channel, user, member, joined);
        true
    }

    fn presence(&self, channel: &str) -> Option<BrokerFuture<Vec<(String, u32)>>> {
        let key = self.inner.presence_key(&self.namespace, channel);
        let inner = Arc::clone(&self.inner);
        Some(Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(unix_ms())
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(MAX_PRESENCE);
            let (entries,): (Vec<String>,) = inner.query(&pipe).await?;
            let mut users: HashMap<String, u32> = HashMap::new();
            for e in entries {
                let mut parts = e.splitn(3, '|');
                if let (Some(_), Some(_), Some(user)) = (parts.next(), parts.next(), parts.next()) {
                    let n = users.entry(user.to_owned()).or_insert(0);
                    *n = n.saturating_add(1);
                }
            }
            let mut users: Vec<(String, u32)> = users.into_iter().collect();
            users.sort();
            Ok(users)
        }))
    }
}

/// The most connections one presence answer counts (a channel with more
/// subscribers is answered for the first this many).
pub const MAX_PRESENCE: usize = 10_000;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The Redis of `SIGMA_TEST_REDIS` (required when set), else the
    /// local one if it answers: a [`Cluster`] under a fresh prefix.
    /// The Redis of `SIGMA_TEST_REDIS` (required) or of the default
    /// address (skipped, saying so, when nothing answers there).
    pub(crate) fn test_url() -> (String, bool) {
        match std::env::var("SIGMA_TEST_REDIS") {
            Ok(u) => (u, true),
            Err(_) => ("redis://127.0.0.1:6379/".to_owned(), false),
        }
    }

    pub(crate) async fn test_cluster() -> Option<Cluster> {
        test_cluster_with(DEFAULT_TTL, PING_EVERY).await
    }

    /// A cluster with a key prefix of its own, `ttl` and `ping_every`.
    async fn test_cluster_with(ttl: Duration, ping_every: Duration) -> Option<Cluster> {
        let mut r = [0u8; 6];
        getrandom::fill(&mut r).expect("random");
        let prefix: String = r.iter().map(|b| format!("{b:02x}")).collect();
        test_cluster_on(&format!("sigma_test_{prefix}:"), ttl, ping_every).await
    }

    pub(crate) async fn test_cluster_on(
        prefix: &str,
        ttl: Duration,
        ping_every: Duration,
    ) -> Option<Cluster> {
        let (url, required) = test_url();
        let c = Cluster::start_pinging(&url, None, prefix, ttl, ping_every).unwrap();
        if c.wait_up(Duration::from_secs(5)).await {
            return Some(c);
        }
        assert!(!required, "SIGMA_TEST_REDIS={url} does not answer");
        eprintln!("no Redis at {url}: the Redis broker tests pass without running");
        None
    }

    pub(crate) fn suite_broker(handler: Weak<dyn BrokerHandler>) -> crate::broker_suite::NewBroker {
        Box::pin(async move {
            let c = test_cluster().await?;
            let b = c.broker("/bc", handler);
            Some(b as Arc<dyn Broker>)
        })
    }

    #[test]
    fn publications_parse_and_urls_hide_passwords() {
        let p = parse_publication(b"12 34 a b c").unwrap();
        assert_eq!(
            p.position,
            StreamPosition {
                offset: 12,
                epoch: 34
            }
        );
        assert_eq!(p.data, Bytes::from_static(b"a b c"));
        assert!(parse_publication(b"x 1 d").is_none());
        assert!(parse_publication(b"1 2").is_none());
        assert_eq!(parse_publication(b"1 2 ").unwrap().data, Bytes::new());
        assert_eq!(redacted("redis://:pw@h:1/0"), "redis://…@h:1/0");
        assert_eq!(redacted("redis://h:1/0"), "redis://h:1/0");
    }

    proptest::proptest! {
        /// Whatever arrives on the pattern subscription: no panic, and
        /// what the script publishes reads back exactly.
        #[test]
        fn any_payload_parses_or_is_refused(junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                                            offset in proptest::prelude::any::<u64>(),
                                            epoch in proptest::prelude::any::<u64>(),
                                            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = parse_publication(&junk);
            let mut wire = format!("{offset} {epoch} ").into_bytes();
            wire.extend_from_slice(&data);
            let p = parse_publication(&wire).unwrap();
            proptest::prop_assert_eq!(p.position, StreamPosition { offset, epoch });
            proptest::prop_assert_eq!(p.data.as_ref(), &data[..]);
        }
    }

    /// A regression: Redis answers a subscribed connection's PING with an
    /// array, which once read as a failure, so every node dropped its
    /// pub/sub connection (and closed its subscribers) at every ping.
    #[tokio::test]
    async fn pings_keep_the_subscription_up() {
        let Some(c) = test_cluster_with(DEFAULT_TTL, Duration::from_millis(50)).await else {
            return;
        };
        // Ten pings' worth of time passing is what is tested.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = c.status();
        assert!(s.pubsub && s.commands, "{s:?}");
        assert_eq!(s.lost, 0, "{s:?}");
    }

    /// Real time passing is what is tested: Redis expires keys by its own
    /// clock, which no fake clock can move.
    #[tokio::test]
    async fn a_quiet_channel_with_subscribers_keeps_its_seq_past_the_ttl() {
        let Some(c) = test_cluster_with(Duration::from_secs(1), PING_EVERY).await else {
            return;
        };
        let b = c.broker("/k", Weak::<Noop>::new());
        b.subscribe("kept").unwrap();
        let first = b
            .publish("kept", Bytes::from_static(b"1"), Keep::NONE)
            .await
            .unwrap()
            .unwrap();
        let other = b
            .publish("quiet", Bytes::from_static(b"1"), Keep::NONE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.offset, other.offset), (1, 1));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let next = b
            .publish("kept", Bytes::from_static(b"2"), Keep::NONE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            next,
            StreamPosition {
                offset: 2,
                epoch: first.epoch
            }
        );
        // Nobody listens to `quiet` here: it expired, a new epoch begins.
        let again = b
            .publish("quiet", Bytes::from_static(b"2"), Keep::NONE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, other.epoch);
    }

    #[tokio::test]
    async fn shared_counters_count_across_clusters() {
        let Some(a) = test_cluster().await else {
            return;
        };
        let w = Duration::from_secs(60);
        assert_eq!(a.count("k", w).await.unwrap(), 0);
        assert_eq!(a.hit("k", w).await.unwrap(), 1);
        assert_eq!(a.hit("k", w).await.unwrap(), 2);
        // Another process on the same prefix counts into the same window.
        let b = test_cluster_on(&a.inner.prefix, DEFAULT_TTL, PING_EVERY)
            .await
            .expect("the same Redis");
        assert_eq!(b.hit("k", w).await.unwrap(), 3);
        assert_eq!(a.count("k", w).await.unwrap(), 3);
        assert_eq!(a.count("other", w).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast_and_counts() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Cluster::start(&format!("redis://127.0.0.1:{port}/"), "x:", DEFAULT_TTL).unwrap();
        assert!(!c.wait_up(Duration::from_millis(200)).await);
        let b = c.broker("/r", Weak::<Noop>::new());
        assert!(b.subscribe("c").is_err());
        assert!(!b.available());
        let e = b.publish("c", Bytes::new(), Keep::NONE).await.unwrap_err();
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
        assert!(c.hit("k", Duration::from_secs(60)).await.is_err());
        assert!(c.status().failures >= 2);
        assert!(!c.status().pubsub && !c.status().commands);
        assert!(Cluster::start("http://x", "x:", DEFAULT_TTL).is_err());
    }

    /// A Redis that accepts and never answers: publishes queue up to
    /// [`PUBLISH_QUEUE_BYTES`], the next fails at once, and the budget is
    /// whole again once they have failed.
    #[tokio::test]
    async fn a_silent_redis_bounds_the_bytes_queued() {
        use futures_util::FutureExt;
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let c = Cluster::start(&format!("redis://127.0.0.1:{port}/"), "x:", DEFAULT_TTL).unwrap();
        let b = c.broker("/r", Weak::<Noop>::new());
        let mib = Bytes::from(vec![b'x'; 1 << 20]);
        let mut queued: Vec<_> = (0..PUBLISH_QUEUE_BYTES >> 20)
            .map(|_| b.publish("c", mib.clone(), Keep::NONE))
            .collect();
        assert!(
            (&mut queued[0]).now_or_never().is_none(),
            "waiting for Redis"
        );
        let e = b
            .publish("c", mib.clone(), Keep::NONE)
            .now_or_never()
            .expect("at once")
            .unwrap_err();
        assert!(e.to_string().contains("bytes"), "{e}");
        // A small one does not fit either: the budget is in bytes.
        let small = b
            .publish("c", Bytes::from_static(b"1"), Keep::NONE)
            .now_or_never();
        assert!(small.expect("at once").is_err());
        for f in queued {
            assert!(f.await.is_err());
        }
        assert_eq!(c.inner.queued_bytes.load(Ordering::Acquire), 0);
        drop(silent);
    }

    struct Noop;
    impl BrokerHandler for Noop {
        fn handle_publication(&self, _: &str, _: &Publication) {}
    }
}
