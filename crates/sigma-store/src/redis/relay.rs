//! Asks between nodes over Redis pub/sub ([`crate::Relay`]).
//!
//! ```text
//!  node B ─PUBLISH {prefix}nd{A}  "q {B} {id} {topic} request"─▶ node A's handler
//!  node B ◀─PUBLISH {prefix}nd{B} "a {id} 1 answer"──────────────┘
//! ```
//!
//! Every node subscribes to its own channel `{prefix}nd{node}` (the node
//! id in hex) on the pub/sub connection it already keeps. An ask is one
//! `PUBLISH`: when nobody receives it the node is gone (or away from
//! Redis) and the ask fails at once; otherwise the answer comes back on
//! the asker's channel within [`ASK_TIMEOUT`]. Both sides are bounded:
//! [`MAX_ASKS`] asks wait per node, [`MAX_ANSWERING`] answers are sent at
//! once (beyond it a request is dropped, and its asker times out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore};

use super::{Inner, REDIS_TIMEOUT};
use crate::{Answerer, AskError, AskFuture, Relay};

/// Asks waiting for their answers on one node, at most; beyond it an ask
/// fails at once.
pub const MAX_ASKS: usize = 1024;
/// Answers being published at once, at most.
const MAX_ANSWERING: usize = 256;
/// How long an ask waits for its answer once it reached the node.
pub const ASK_TIMEOUT: Duration = REDIS_TIMEOUT;
/// The longest topic name.
const MAX_TOPIC: usize = 64;

/// One node's side of the relay, in its [`Inner`].
pub(super) struct Relays {
    handlers: RwLock<HashMap<String, Weak<dyn Answerer>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Option<Bytes>>>>,
    next: AtomicU64,
    answering: Arc<Semaphore>,
}

impl Default for Relays {
    fn default() -> Self {
        Self {
            handlers: RwLock::default(),
            pending: Mutex::default(),
            next: AtomicU64::new(1),
            answering: Arc::new(Semaphore::new(MAX_ANSWERING)),
        }
    }
}

impl Relays {
    /// Asks waiting for an answer.
    pub(super) fn waiting(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The pub/sub channel of `node`.
pub(super) fn channel(prefix: &str, node: u64) -> String {
    format!("{prefix}nd{node:016x}")
}

/// Forgets an ask that ended (answered, timed out or dropped).
struct Waiting<'a> {
    relays: &'a Relays,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.relays
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// The cluster's [`Relay`] ([`super::Cluster::relay`]).
pub(super) struct RedisRelay {
    pub(super) inner: Arc<Inner>,
}

impl Relay for RedisRelay {
    fn node(&self) -> u64 {
        self.inner.node
    }

    fn ask(&self, node: u64, topic: &str, request: Bytes) -> AskFuture {
        let inner = Arc::clone(&self.inner);
        let topic = topic.to_owned();
        Box::pin(async move {
            if topic.len() > MAX_TOPIC || topic.contains(' ') {
                return Err(AskError::NotServed);
            }
            // The answer comes back on the pub/sub connection.
            if !inner.pubsub_up.load(Ordering::Acquire) {
                return Err(AskError::Unavailable(format!(
                    "{}: pub/sub is down",
                    inner.target
                )));
            }
            let relays = &inner.relays;
            let id = relays.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            {
                let mut p = relays
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if p.len() >= MAX_ASKS {
                    return Err(AskError::Unavailable(format!(
                        "{MAX_ASKS} asks wait already"
                    )));
                }
                p.insert(id, tx);
            }
            let _waiting = Waiting { relays, id };
            let mut msg = format!("q {:016x} {id} {topic} ", inner.node).into_bytes();
            msg.extend_from_slice(&request);
            let mut pipe = redis::pipe();
            pipe.cmd("PUBLISH")
                .arg(channel(&inner.prefix, node))
                .arg(msg);
            let (received,): (u64,) = inner
                .query(&pipe)
                .await
                .map_err(|e| AskError::Unavailable(e.to_string()))?;
            if received == 0 {
                return Err(AskError::NoNode);
            }
            match tokio::time::timeout(ASK_TIMEOUT, rx).await {
                Ok(Ok(Some(answer))) => Ok(answer),
                Ok(Ok(None)) => Err(AskError::NotServed),
                Ok(Err(_)) | Err(_) => Err(AskError::Unavailable(format!(
                    "node {node:016x} did not answer within {ASK_TIMEOUT:?}"
                ))),
            }
        })
    }

    fn serve(&self, topic: &str, handler: Weak<dyn Answerer>) {
        self.inner
            .relays
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_owned(), handler);
    }
}

/// A message on this node's channel: a request to answer, or an answer
/// to one of its asks. Anything else is dropped.
pub(super) fn on_message(me: &Arc<Inner>, payload: &[u8]) {
    let mut parts = payload.splitn(2, |b| *b == b' ');
    match (parts.next(), parts.next()) {
        (Some(b"q"), Some(rest)) => on_request(me, rest),
        (Some(b"a"), Some(rest)) => on_answer(&me.relays, rest),
        _ => tracing::debug!("redis relay: a malformed message was dropped"),
    }
}

fn number(p: Option<&[u8]>, radix: u32) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(p?).ok()?, radix).ok()
}

/// `{from} {id} {topic} request`: answered by the topic's handler, the
/// answer published to the asker's channel.
fn on_request(me: &Arc<Inner>, rest: &[u8]) {
    let mut parts = rest.splitn(4, |b| *b == b' ');
    let from = number(parts.next(), 16);
    let id = number(parts.next(), 10);
    let topic = parts.next().and_then(|t| std::str::from_utf8(t).ok());
    let (Some(from), Some(id), Some(topic), Some(request)) = (from, id, topic, parts.next()) else {
        tracing::debug!("redis relay: a malformed request was dropped");
        return;
    };
    let Ok(permit) = Arc::clone(&me.relays.answering).try_acquire_owned() else {
        tracing::warn!("redis relay: {MAX_ANSWERING} answers in flight; a request was dropped");
        return;
    };
    let handler = me
        .relays
        .handlers
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(topic)
        .and_then(Weak::upgrade);
    let mut msg = format!("a {id} ").into_bytes();
    match handler {
        Some(h) => {
            msg.push(b'1');
            msg.push(b' ');
            msg.extend_from_slice(&h.answer(request));
        }
        None => msg.push(b'0'),
    }
    let me = Arc::clone(me);
    tokio::spawn(async move {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(channel(&me.prefix, from))
            .arg(msg)
            .ignore();
        // A lost answer times its ask out: nothing else to do here.
        let _ = me.query::<()>(&pipe).await;
        drop(permit);
    });
}

/// `{id} 1 answer` or `{id} 0` (not served): wakes the ask.
fn on_answer(relays: &Relays, rest: &[u8]) {
    let mut parts = rest.splitn(3, |b| *b == b' ');
    let Some(id) = number(parts.next(), 10) else {
        return;
    };
    let answer = match (parts.next(), parts.next()) {
        (Some(b"1"), Some(a)) => Some(Bytes::copy_from_slice(a)),
        (Some(b"1"), None) => Some(Bytes::new()),
        _ => None,
    };
    let waiting = relays
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    if let Some(tx) = waiting {
        let _ = tx.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::tests::{test_cluster, test_cluster_on};
    use crate::redis::{Cluster, DEFAULT_TTL, PING_EVERY};

    struct Reverse;

    impl Answerer for Reverse {
        fn answer(&self, request: &[u8]) -> Bytes {
            request.iter().rev().copied().collect()
        }
    }

    /// Two processes on one prefix.
    async fn pair() -> Option<(Cluster, Cluster)> {
        let a = test_cluster().await?;
        let b = test_cluster_on(&a.inner.prefix, DEFAULT_TTL, PING_EVERY)
            .await
            .expect("the same Redis");
        Some((a, b))
    }

    #[tokio::test]
    async fn an_ask_reaches_its_node_and_comes_back_answered() {
        let Some((a, b)) = pair().await else { return };
        let handler: Arc<dyn Answerer> = Arc::new(Reverse);
        let (ra, rb) = (a.relay(), b.relay());
        assert_ne!(ra.node(), rb.node());
        rb.serve("rev", Arc::downgrade(&handler));
        let binary = Bytes::from_static(b"a b\0\xff c");
        let got = ra.ask(rb.node(), "rev", binary.clone()).await.unwrap();
        assert_eq!(&got[..], &b"c \xff\0b a"[..]);
        // An empty request, and many at once, each to its own answer.
        assert_eq!(ra.ask(rb.node(), "rev", Bytes::new()).await.unwrap(), "");
        let asks: Vec<_> = (0..50)
            .map(|i| ra.ask(rb.node(), "rev", Bytes::from(format!("{i}-x"))))
            .collect();
        for (i, ask) in asks.into_iter().enumerate() {
            let want: String = format!("{i}-x").chars().rev().collect();
            assert_eq!(ask.await.unwrap(), want);
        }
        // A topic nobody serves there, a node that does not exist.
        assert_eq!(
            ra.ask(rb.node(), "other", Bytes::new()).await,
            Err(AskError::NotServed)
        );
        assert_eq!(
            ra.ask(rb.node() ^ 1, "rev", Bytes::new()).await,
            Err(AskError::NoNode)
        );
        // A handler that is gone answers nothing.
        drop(handler);
        assert_eq!(
            ra.ask(rb.node(), "rev", Bytes::new()).await,
            Err(AskError::NotServed)
        );
        assert_eq!(a.asks_waiting(), 0);
    }

    #[tokio::test]
    async fn a_silent_node_times_asks_out_and_bounds_them() {
        let Some(a) = test_cluster().await else {
            return;
        };
        // A "node" that listens on its channel and never answers.
        let (url, _) = crate::redis::tests::test_url();
        let silent = 0x5151_5151_u64;
        let mut ps = redis::Client::open(url.as_str())
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        ps.subscribe(channel(&a.inner.prefix, silent))
            .await
            .unwrap();
        let ra = a.relay();
        let asks: Vec<_> = (0..MAX_ASKS)
            .map(|_| tokio::spawn(ra.ask(silent, "t", Bytes::new())))
            .collect();
        // Wait until every ask is published and waiting.
        while a.asks_waiting() < MAX_ASKS {
            tokio::task::yield_now().await;
        }
        // One more does not wait.
        match ra.ask(silent, "t", Bytes::new()).await {
            Err(AskError::Unavailable(why)) => assert!(why.contains("asks wait"), "{why}"),
            other => panic!("{other:?}"),
        }
        for ask in asks {
            assert!(matches!(ask.await.unwrap(), Err(AskError::Unavailable(_))));
        }
        assert_eq!(a.asks_waiting(), 0);
    }
}
