//! `&db`: the durable per-user key-value store (DESIGN §6, §7, §9).
//!
//! ```text
//!  A ──Tagged{identity, PUT /db/k}──▶ [ Db ] ──spawn_blocking──▶ Store::kv_put ──▶ redb (fsync)
//!    ◀─Tagged{identity, 201 ETag}───  [    ] ◀──────────────────  committed
//!                                       │ after each durable write
//!                                       └──▶ watch registry ──WsSender::push──▶ watching sockets
//! ```
//!
//! Every identity has one namespace, named by its user name: a request
//! reads and writes only its caller's namespace, and an anonymous request
//! gets 401 (routes to `&db` default to `auth = "required"` as well).
//! A route with `namespace = "NAME"` serves the *shared* namespace NAME
//! instead ([`Scope::Shared`]): everyone the route admits (`auth`,
//! `users`) reads it, and the route's `writers` (default: everyone it
//! admits, but never an anonymous caller) may write; others get
//! `forbidden` (403). Shared namespaces are stored apart from every user's
//! (their store name starts with a control character, which no user name
//! of any provider contains), so `namespace = "alice"` is not alice's. A key
//! is an opaque string (`/` means nothing to the store) of 1 to
//! `db.max_key` bytes of UTF-8, without control characters and without a
//! `.` or `..` segment between slashes (browsers and URL libraries rewrite
//! those, so such a key could not be addressed reliably). A value is at
//! most `db.max_value` bytes. Every write of a namespace gets a new
//! version, greater than any the namespace had before (so a version is
//! never reused, not even after a delete); the `ETag` is `"v<version>"`
//! (strong).
//!
//! A write is answered only after its commit is durable (redb,
//! `Durability::Immediate`): an acknowledged write survives `kill -9`.
//! Store calls run on the blocking pool (`spawn_blocking`): reads at most
//! [`MAX_CONCURRENT_OPS`] at once, writes one at a time (redb has one
//! writer anyway; waiting writers hold no thread), each together with the
//! notification of its watchers, so watchers see changes in commit order.
//!
//! # HTTP (at the route, `/db` by default)
//!
//! - `PUT <route>/<key>`: stores the body with its `Content-Type` (default
//!   `application/octet-stream`); `201` (created) or `200` (replaced), empty
//!   body, with `ETag`. A body over `db.max_value` gets `413`.
//! - `GET`/`HEAD <route>/<key>`: `200` with the value as stored, its
//!   `Content-Type` and `ETag` (and `Content-Security-Policy: sandbox`,
//!   `X-Content-Type-Options: nosniff`: a value is never active content on
//!   sigma's origin); `404` if there is no such key; `304` when
//!   `If-None-Match` matches.
//! - `DELETE <route>/<key>`: `204`, or `404`.
//! - `If-Match` (`*` or a list of ETags, strong comparison) and
//!   `If-None-Match` (`*` or a list, weak comparison; `If-None-Match: *` on
//!   `PUT` means create-only): `412` when they fail (`304` for a failed
//!   `If-None-Match` on `GET`/`HEAD`). A malformed list is `400`.
//! - `GET <route>/?prefix=P`: `200`, a JSON array of
//!   `{"key":K,"etag":E,"size":BYTES}` in key (byte) order, at most `limit`
//!   (query parameter, 1 to [`MAX_LIST`], default [`MAX_LIST`]). When more
//!   follow, a `Link: <…&after=LAST…>; rel="next"` header names the next
//!   page (`after=K`: keys after `K`). The query is form-encoded (`+` is a
//!   space, as `URLSearchParams` writes it).
//! - The key is the path after `<route>/`, percent-decoded (`+` is a plus);
//!   an invalid key is `400`. Other methods get `405` with `Allow`. Errors
//!   are JSON `{"error": CODE, "message": TEXT}` (see below).
//!
//! # WebSocket (the same route; JSON text frames)
//!
//! The protocol style of every socket of sigma (DESIGN §6): requests name
//! their `type`, may carry an `id` (a number, or a string of at most
//! 256 bytes) that the answer echoes, and fields a type does
//! not take are refused:
//!
//! ```text
//! {"type":"get","key":K,"id"?:ID}
//! {"type":"put","key":K,"value":STRING,"if_match":ETAG?,"if_none_match":"*"?,"content_type":CT?,"id"?:ID}
//!     ("value_base64":B64 instead of "value" for bytes; the content type
//!      defaults to text/plain; charset=utf-8, resp. application/octet-stream)
//! {"type":"delete","key":K,"if_match":ETAG?,"id"?:ID}
//! {"type":"list","prefix":P,"after":K?,"limit":N?,"id"?:ID}
//! {"type":"watch","prefix":P,"id"?:ID}
//! {"type":"unwatch","prefix":P,"id"?:ID}
//! ```
//!
//! Answers: `{"type":"result","id"?:ID,...}` — `get`: `key`, `etag`,
//! `content_type` and `value` (or `value_base64` when the value is not
//! UTF-8); `put`: `etag`, `created`; `list`: `items` (as over HTTP) and
//! `more`; `delete`, `watch`, `unwatch`: nothing more — or
//! `{"type":"error","code":CODE,"message":TEXT,"id"?:ID}`. The `id` is
//! there when the request had a valid one. `ETAG` is the `ETag` as sent
//! over HTTP (`"\"v3\""`; a bare `v3` and `*` are accepted too).
//!
//! After `watch`, every change in the caller's namespace under the prefix,
//! from any connection (HTTP or WebSocket), is pushed once per socket:
//! `{"type":"change","key":K,"etag":E|null}` (`etag` is `null` for a
//! delete). A socket watches at most [`MAX_WATCHES_PER_SOCKET`] prefixes.
//!
//! Ordering: one socket's requests are performed one after the other, in
//! order, by a task of its own, and every answer comes back through the
//! socket's push queue in request order. Only when more than
//! [`SOCKET_QUEUE`] requests are waiting is a request refused at once with
//! `busy`, possibly ahead of earlier answers; answers can always be
//! matched by `id`.
//!
//! Error codes: `bad_request` (HTTP; over WebSocket a malformed message is
//! `bad_message`), `invalid_key`, `invalid_content_type`, `not_found`,
//! `precondition_failed`, `too_large`, `unauthenticated`, `forbidden`,
//! `too_many_watches`, `busy`, `unavailable` (503 with `Retry-After`: the
//! store cannot be reached, e.g. PostgreSQL is down), `internal`. Every
//! message, field and code for client authors: `docs/db.md`.

pub mod config;
mod http;
mod keys;
mod watch;
mod ws;

use std::sync::Arc;

use sigma_core::{Answer, Capabilities, Destination, Principal, Request};
use sigma_http::WsMessage;

use crate::db::config::DbConfig;
use sigma_store::{KvError, KvPut, Precondition, Store};

pub use keys::etag;

/// Reads of `&db` running at once (the rest wait their turn without
/// holding a blocking thread).
pub const MAX_CONCURRENT_OPS: usize = 64;
/// Most entries in one listing.
pub const MAX_LIST: usize = 1000;
/// Most prefixes one socket watches.
pub const MAX_WATCHES_PER_SOCKET: usize = 64;
/// Requests of one socket waiting to be performed.
pub const SOCKET_QUEUE: usize = 64;

/// What every `&db` route shares: the store, the limits, the watchers.
pub struct DbService {
    store: Arc<dyn Store>,
    config: DbConfig,
    watches: watch::Registry,
    /// Held across a write and the notification of its watchers.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    ops: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for DbService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a `&db` operation did not succeed; the same codes over HTTP and
/// WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    BadRequest,
    InvalidKey,
    InvalidContentType,
    NotFound,
    PreconditionFailed,
    TooLarge,
    Unauthenticated,
    Forbidden,
    TooManyWatches,
    Busy,
    Unavailable,
    Internal,
}

impl Fail {
    fn code(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidKey => "invalid_key",
            Self::InvalidContentType => "invalid_content_type",
            Self::NotFound => "not_found",
            Self::PreconditionFailed => "precondition_failed",
            Self::TooLarge => "too_large",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::TooManyWatches => "too_many_watches",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The human `message` that goes with the code (for people, not for
    /// programs: it may change).
    fn message(self) -> &'static str {
        match self {
            Self::BadRequest => "the request is malformed",
            Self::InvalidKey => "the key or prefix is not valid (1 to max_key bytes of UTF-8, no control characters, no \".\" or \"..\" segment)",
            Self::InvalidContentType => "the content type is not valid",
            Self::NotFound => "no such key",
            Self::PreconditionFailed => "the key's current version does not match the precondition",
            Self::TooLarge => "the value is larger than max_value",
            Self::Unauthenticated => "log in first",
            Self::Forbidden => "you may not write here",
            Self::TooManyWatches => "this socket watches too many prefixes",
            Self::Busy => "too many requests are waiting on this socket",
            Self::Unavailable => "the store cannot be reached; retry later",
            Self::Internal => "internal error",
        }
    }

    fn status(self) -> u16 {
        match self {
            Self::BadRequest | Self::InvalidKey | Self::InvalidContentType => 400,
            Self::NotFound => 404,
            Self::PreconditionFailed => 412,
            Self::TooLarge => 413,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::TooManyWatches | Self::Busy => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl From<KvError> for Fail {
    fn from(e: KvError) -> Self {
        match e {
            KvError::PreconditionFailed => Self::PreconditionFailed,
            KvError::Invalid => Self::BadRequest,
            e if e.is_unavailable() => store_fail(&e),
            e => internal(&e),
        }
    }
}

/// `Retry-After` of a 503 while the store is unreachable, in seconds.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Maps a store failure: `unavailable` (503, `Retry-After`) while the
/// store cannot be reached (PostgreSQL down), else `internal`.
fn store_fail(e: &(dyn std::error::Error + 'static)) -> Fail {
    let unavailable = e
        .downcast_ref::<sigma_store::StoreError>()
        .map(sigma_store::StoreError::is_unavailable)
        .or_else(|| e.downcast_ref::<KvError>().map(KvError::is_unavailable))
        .unwrap_or(false);
    if unavailable {
        tracing::warn!(error = %e, "&db: the store is unreachable");
        Fail::Unavailable
    } else {
        internal(&e)
    }
}

/// Logs a store failure (never a key or a value) and maps it to `internal`.
fn internal(e: &dyn std::fmt::Display) -> Fail {
    tracing::error!(error = %e, "&db: store operation failed");
    Fail::Internal
}

/// A change in a namespace, for its watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Put(u64),
    Delete,
}

impl DbService {
    /// The shared state of `&db` over `store`.
    ///
    /// On a store with other writers (PostgreSQL: other nodes) the
    /// watchers are also told of their changes, as the store delivers them
    /// (`LISTEN/NOTIFY`, after each commit).
    pub fn new(store: Arc<dyn Store>, config: &DbConfig) -> Arc<Self> {
        let svc = Arc::new(Self {
            store,
            config: config.clone(),
            watches: watch::Registry::default(),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            ops: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_OPS)),
        });
        let weak = Arc::downgrade(&svc);
        svc.store.kv_listen_remote(Box::new(move |c| {
            let Some(svc) = weak.upgrade() else {
                return false;
            };
            let change = match c.version {
                Some(v) => Change::Put(v),
                None => Change::Delete,
            };
            svc.watches.notify(&c.ns, &c.key, change);
            true
        }));
        svc
    }

    /// Runs `f` on the blocking pool once one of the
    /// [`MAX_CONCURRENT_OPS`] slots is free.
    async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, Fail>
    where
        T: Send + 'static,
        F: FnOnce(&DbService) -> Result<T, Fail> + Send + 'static,
    {
        let permit = Arc::clone(&self.ops)
            .acquire_owned()
            .await
            .map_err(|e| internal(&e))?;
        let svc = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&svc)
        })
        .await
        .map_err(|e| internal(&e))?
    }

    /// Runs the write `f` on the blocking pool once no other write runs
    /// (the lock is held until `f` returns, even if the caller goes away).
    async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, Fail>
    where
        T: Send + 'static,
        F: FnOnce(&DbService) -> Result<T, Fail> + Send + 'static,
    {
        let serial = Arc::clone(&self.write_lock).lock_owned().await;
        let svc = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _serial = serial;
            f(&svc)
        })
        .await
        .map_err(|e| internal(&e))?
    }

    /// A durable conditional write, then its watchers are told; only
    /// inside [`DbService::write`].
    fn put_now(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        content_type: &str,
        expect: &Precondition,
    ) -> Result<KvPut, Fail> {
        let put = self.store.kv_put(ns, key, value, content_type, expect)?;
        self.watches.notify(ns, key, Change::Put(put.version));
        Ok(put)
    }

    /// A durable conditional delete, then its watchers are told; `false`
    /// if there was no such key. Only inside [`DbService::write`].
    fn delete_now(&self, ns: &str, key: &str, expect: &Precondition) -> Result<bool, Fail> {
        match self.store.kv_delete(ns, key, expect)? {
            Some(_) => {
                self.watches.notify(ns, key, Change::Delete);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Whose namespace a route serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Each caller's own (named by the user name).
    Own,
    /// One shared namespace (route key `namespace`).
    Shared {
        /// The store's name for it: `"\u{1}shared:" + NAME`.
        ns: String,
        /// Who may write; `None`: every authenticated caller the route admits.
        writers: Option<Vec<String>>,
    },
}

impl Scope {
    /// The scope a route's config asks for.
    pub fn of(shared: Option<&crate::db::config::SharedNamespace>) -> Self {
        match shared {
            None => Self::Own,
            Some(s) => Self::Shared {
                ns: format!("\u{1}shared:{}", s.name),
                writers: s.writers.clone(),
            },
        }
    }

    /// The namespace `identity` reads here (`None`: it may not, 401).
    fn namespace(&self, identity: &Principal) -> Option<String> {
        match self {
            Self::Own => namespace(identity).map(str::to_owned),
            Self::Shared { ns, .. } => Some(ns.clone()),
        }
    }

    /// Whether `identity` may write here (given it may read).
    fn may_write(&self, identity: &Principal) -> bool {
        match (self, identity.as_deref()) {
            (Self::Own, _) => true,
            (Self::Shared { .. }, None) => false,
            (Self::Shared { writers: None, .. }, Some(_)) => true,
            (
                Self::Shared {
                    writers: Some(w), ..
                },
                Some(id),
            ) => w.contains(&id.user),
        }
    }
}

/// One `&db` route: the shared service, the route's path prefix and whose
/// namespace it serves.
#[derive(Debug)]
pub struct Db {
    svc: Arc<DbService>,
    /// The route path without a trailing `/` (`""` for the route `/`).
    prefix: String,
    scope: Arc<Scope>,
    /// Requests by kind, for `/metrics`: [`OPS`].
    ops: [std::sync::atomic::AtomicU64; OPS.len()],
}

/// The `op` labels of `sigma_db_requests_total`: HTTP reads (`GET`/`HEAD`
/// of a key or a listing), writes, deletes, other methods, and WebSocket
/// sessions opened (watch and the WS protocol).
const OPS: [&str; 5] = ["read", "put", "delete", "other", "socket"];

impl Db {
    fn count(&self, op: usize) {
        if let Some(c) = self.ops.get(op) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Db {
    /// The `&db` destination of the route at `route_path`.
    pub fn new(svc: Arc<DbService>, route_path: &str, scope: Scope) -> Self {
        Self {
            svc,
            prefix: route_path.trim_end_matches('/').to_owned(),
            scope: Arc::new(scope),
            ops: Default::default(),
        }
    }

    /// [`Db::new`] as a route's destination.
    pub fn destination(
        svc: &Arc<DbService>,
        route_path: &str,
        scope: Scope,
    ) -> Arc<dyn Destination> {
        Arc::new(Self::new(Arc::clone(svc), route_path, scope))
    }
}

impl Destination for Db {
    fn name(&self) -> &str {
        "&db"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::HTTP_AND_WEBSOCKET
    }

    fn handle(&self, req: Request) -> Answer {
        match req {
            Request::Http(req) => {
                self.count(match req.msg.head.method {
                    sigma_http::Method::Get | sigma_http::Method::Head => 0,
                    sigma_http::Method::Put => 1,
                    sigma_http::Method::Delete => 2,
                    _ => 3,
                });
                Answer::Http(http::handle(&self.svc, &self.prefix, &self.scope, req))
            }
            Request::Upgrade(u) => {
                self.count(4);
                Answer::Socket(ws::open(&self.svc, &self.scope, &u.identity, u.push))
            }
            other => other.not_taken(),
        }
    }

    fn metrics(&self) -> Vec<sigma_core::Sample> {
        OPS.iter()
            .zip(&self.ops)
            .map(|(op, n)| {
                sigma_core::Sample::counter(
                    "sigma_db_requests_total",
                    "&db requests by kind (read, put, delete, other; socket: WebSocket sessions).",
                    n.load(std::sync::atomic::Ordering::Relaxed),
                )
                .with("op", op)
            })
            .collect()
    }
}

/// The namespace of `identity`: its user name (`None`: anonymous).
fn namespace(identity: &Principal) -> Option<&str> {
    identity
        .as_deref()
        .map(|i| i.user.as_str())
        .filter(|u| !u.is_empty())
}

/// A text frame.
fn text(s: String) -> WsMessage {
    WsMessage::Text(s.into())
}

/// `to = "&db"`: every `&db` route shares the one [`DbService`].
pub const FACTORY: &dyn crate::factory::Factory = &DbFactory;

struct DbFactory;

impl crate::factory::Factory for DbFactory {
    fn name(&self) -> &'static str {
        "&db"
    }

    fn hosts_worlds(&self) -> bool {
        true
    }

    fn build(
        &self,
        cx: &mut crate::factory::Build<'_, '_>,
    ) -> Result<Arc<dyn Destination>, crate::UnavailableDestination> {
        Ok(Db::destination(cx.db, cx.path, Scope::of(cx.shared)))
    }
}
