//! The route table: from a request path to a destination (DESIGN §6).
//!
//! ```text
//!  A ──Tagged{identity, request}──▶ [ route ] ──▶ destination (&echo, …)
//! ```
//!
//! Routes are path prefixes matched at a segment boundary, longest first:
//! `/echo` matches `/echo`, `/echo/x` and `/echo?q`, never `/echoes`.
//! A destination takes tagged messages and returns tagged replies; it never
//! sees the socket, and `A` checks every reply it returns.

pub mod path;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use sigma_http::{RequestHead, Response, WsMessage};

use crate::auth::{Principal, Tagged};
use crate::config::{AuthLevel, RouteConfig};

/// A complete request as a destination sees it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The head (identity headers already stripped by `A`).
    pub head: RequestHead,
    /// The complete body.
    pub body: Bytes,
}

/// A destination's answer: now, or later (a future that resolves to it).
pub enum Handled {
    /// The response is ready.
    Ready(Tagged<Response>),
    /// The response is being computed.
    Later(Pin<Box<dyn Future<Output = Tagged<Response>> + Send + 'static>>),
}

impl std::fmt::Debug for Handled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ready(r) => f.debug_tuple("Ready").field(&r.msg.status).finish(),
            Self::Later(_) => f.write_str("Later"),
        }
    }
}

/// Where requests end (the seed's "internal τ server connection").
pub trait Destination: Send + Sync {
    /// The destination's name as written in the config (`&echo`).
    fn name(&self) -> &str;
    /// Answers one HTTP request, with the identity it was tagged with.
    /// Destinations that stream ([`Destination::streams_http`]) are never
    /// given whole requests and keep the default, a `500`.
    fn http(&self, req: Tagged<HttpRequest>) -> Handled {
        let resp = Response::new(500, Vec::new(), Bytes::from_static(b"internal error\n"));
        Handled::Ready(Tagged::new(req.identity, resp))
    }
    /// Opens a WebSocket endpoint for a client authenticated as `identity`
    /// (fixed for the socket's life), or `None` when WebSocket is not
    /// offered here. `push` is the socket's bounded outbound queue, for
    /// messages that do not answer one of the client's (deliveries).
    fn websocket(&self, identity: &Principal, push: WsSender) -> Option<Box<dyn WsEndpoint>>;
    /// Like [`Destination::websocket`], with the upgrade request's head
    /// (identity headers stripped) and what `A` knows about the client (its
    /// address, whether it authenticated with its `Authorization` header):
    /// for destinations that bind the socket to how it was authenticated
    /// (`&world`, DESIGN §5) or pass the upgrade on (the proxy). The
    /// default ignores both.
    fn websocket_upgrade(
        &self,
        head: &RequestHead,
        identity: &Principal,
        push: WsSender,
        client: crate::streaming::ClientInfo,
    ) -> Option<Box<dyn WsEndpoint>> {
        let _ = (head, client);
        self.websocket(identity, push)
    }
    /// True when this destination serves authenticated clients only, even
    /// on a route with `auth = "optional"` or `"none"`: an anonymous
    /// WebSocket upgrade gets 401 and no upgrade (`&world`, DESIGN §5
    /// step 1). Default: false.
    fn requires_identity(&self) -> bool {
        false
    }
    /// True when this destination takes requests as they arrive, body
    /// streamed ([`Destination::http_stream`]) rather than whole (the
    /// upstream proxy; issue #6). Default: whole requests only.
    fn streams_http(&self) -> bool {
        false
    }
    /// Answers a request whose body is still arriving through `body`
    /// (bounded; closed at the end), possibly with a streamed response.
    /// Called only when [`Destination::streams_http`] is true.
    fn http_stream(
        &self,
        head: Tagged<RequestHead>,
        body: crate::streaming::BodyRx,
        client: crate::streaming::ClientInfo,
    ) -> crate::streaming::LaterStreamed {
        let _ = (body, client);
        let resp = Response::new(501, Vec::new(), Bytes::from_static(b"not implemented\n"));
        Box::pin(std::future::ready(Tagged::new(
            head.identity,
            crate::streaming::Streamed::Whole(resp),
        )))
    }
}

/// One WebSocket connection's view of its destination.
pub trait WsEndpoint: Send {
    /// Handles one client message; may answer it at once.
    fn on_message(&mut self, msg: Tagged<WsMessage>) -> Option<Tagged<WsMessage>>;
    /// Called once before the upgrade is accepted: a future that decides
    /// to accept (`Ok`) or refuse with an HTTP status (the proxy waits for
    /// its upstream: 502). Default `None`: accept at once.
    fn accept_when(&mut self) -> Option<crate::streaming::Admission> {
        None
    }
    /// The client started or answered the close handshake, with this code
    /// (if it sent one) and reason. Default: nothing (the endpoint is
    /// dropped when the socket ends).
    fn on_close(&mut self, code: Option<u16>, reason: &str) {
        let _ = (code, reason);
    }
}

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
    /// `A`'s socket registry, [`crate::auth::revoke`]).
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

/// One resolved route.
pub struct Route {
    /// The path prefix.
    pub path: String,
    /// Who may use it (enforced by `A` once it authenticates).
    pub auth: AuthLevel,
    /// Allow-list of users, if any.
    pub users: Option<Vec<String>>,
    /// Per-route body limit, if lower than the connection's.
    pub max_body: Option<u64>,
    /// The destination.
    pub dest: Arc<dyn Destination>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("path", &self.path)
            .field("dest", &self.dest.name())
            .finish()
    }
}

/// The route table of a listener, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// A route's destination cannot be set up: the destination, then why
/// (`&world: world.x.code: /dev/zero is not a regular file (…)`).
#[derive(Debug)]
pub struct UnavailableDestination(pub String);

impl std::fmt::Display for UnavailableDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "destination {}", self.0)
    }
}

impl std::error::Error for UnavailableDestination {}

impl RouteTable {
    /// Builds the table from validated config (`config.routes`); `&db`
    /// routes share one [`crate::db::DbService`] over `store`, limited by
    /// `[db]`; each `&broadcast` route gets its own hub with the rules of
    /// `[broadcast]`.
    pub fn build(
        config: &crate::config::Config,
        store: &Arc<dyn crate::store::Store>,
    ) -> Result<Self, UnavailableDestination> {
        let routes: &[RouteConfig] = &config.routes;
        let mut out = Vec::with_capacity(routes.len());
        let db = crate::db::DbService::new(Arc::clone(store), &config.db);
        // One `&world` service for every route to it (DESIGN §5).
        let mut world: Option<Arc<crate::world::WorldService>> = None;
        for r in routes {
            let dest: Arc<dyn Destination> = match &r.to {
                crate::config::Destination::Echo => Arc::new(crate::echo::Echo),
                crate::config::Destination::Db => crate::db::Db::destination(
                    &db,
                    &r.path,
                    crate::db::Scope::of(r.shared.as_ref()),
                ),
                crate::config::Destination::Broadcast => {
                    crate::broadcast::destination(&r.path, &config.broadcast)
                }
                crate::config::Destination::Upstream(url) => {
                    crate::upstream::Upstream::destination(
                        &r.path,
                        url,
                        r.proxy.unwrap_or_default(),
                        crate::upstream::Settings::of(config),
                    )
                    .map_err(|e| UnavailableDestination(format!("{url}: {e}")))?
                }
                crate::config::Destination::Static(dir) => {
                    Arc::new(crate::staticfiles::StaticFiles::new(&r.path, dir))
                }
                crate::config::Destination::Web => Arc::new(crate::web::Web::new(&r.path)),
                #[cfg(feature = "test-destinations")]
                crate::config::Destination::Crossed => {
                    Arc::new(crate::testdest::Crossed::default())
                }
                #[cfg(feature = "test-destinations")]
                crate::config::Destination::Inspect => Arc::new(crate::testdest::Inspect),
                crate::config::Destination::World => match &world {
                    Some(w) => Arc::clone(w) as Arc<dyn Destination>,
                    None => {
                        let w = Arc::new(crate::world::WorldService::new(config)?);
                        world = Some(Arc::clone(&w));
                        w
                    }
                },
            };
            // A publish is never larger than this: buffer no more.
            let max_body = match &r.to {
                crate::config::Destination::Broadcast => {
                    let cap = crate::broadcast::publish_body_limit(config.broadcast.max_message);
                    Some(r.max_body.map_or(cap, |m| m.min(cap)))
                }
                _ => r.max_body,
            };
            out.push(Route {
                path: r.path.clone(),
                auth: r.auth,
                users: r.users.clone(),
                max_body,
                dest,
            });
        }
        if let Some(w) = &world {
            w.bind(config, &out, &db)?;
        }
        // `config.routes` is already in match order (longest path first,
        // sorted once by the config): `out` keeps it.
        Ok(Self { routes: out })
    }

    /// The route for `path` (the target's path, without the query).
    pub fn lookup(&self, path: &[u8]) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| prefix_matches(r.path.as_bytes(), path))
    }

    /// All routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// `prefix` matches `path` at a segment boundary.
fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return path.first() == Some(&b'/');
    }
    let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.first() == Some(&b'/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
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

    /// The table keeps `config.routes`' order, so the config must give
    /// match order: the defaults (not sorted by the loader) too.
    #[test]
    fn default_routes_are_in_match_order() {
        let routes = crate::config::default_routes();
        assert!(routes
            .windows(2)
            .all(|w| w[0].path.len() >= w[1].path.len()));
    }

    #[test]
    fn segment_boundary() {
        assert!(prefix_matches(b"/echo", b"/echo"));
        assert!(prefix_matches(b"/echo", b"/echo/x"));
        assert!(!prefix_matches(b"/echo", b"/echoes"));
        assert!(prefix_matches(b"/echo/", b"/echo"));
        assert!(prefix_matches(b"/", b"/anything"));
        assert!(!prefix_matches(b"/a", b"/"));
    }
}
