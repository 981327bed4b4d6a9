//! The connection driver: one socket, one `H` core, one timer.
//!
//! ```text
//!  socket ◀──▶ [ conn: read → H.handle_input → H.poll_event → A → route ]
//!                        write ◀── H.output ◀── H.send ◀── A.check_reply
//! ```
//!
//! This is the thin tokio shell around the sans-IO codec (quinn's
//! `ConnectionDriver` is the model): it reads when `H` wants input, writes
//! what `H` produced, sleeps until `H`'s next deadline, and carries the
//! events through `A` to the route table and the replies back. It owns the
//! socket-level half-close semantics of T (DESIGN §2):
//! - ω ([`Shutdown::Graceful`]): flush, `shutdown(SHUT_WR)`, then read and
//!   discard until the peer's EOF or the linger deadline;
//! - Ω ([`Shutdown::Abort`]): `shutdown(SHUT_RDWR)` and close at once;
//! - `H` will never read again but still owes output: `shutdown(SHUT_RD)`.
//!
//! It does not parse bytes, pick routes or decide identities.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown as SockShutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use sigma_http::{
    Event, Header, Method, Reply, RequestHead, Response, ServerConn, Shutdown, WsEvent, WsMessage,
};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::auth::{self, Denied, Gate, Tagged};
use crate::config::Cidr;
use crate::metrics::add;
use crate::metrics::{inc, Metrics};
use crate::route::{HttpRequest, Route, RouteTable, WsEndpoint};
use crate::tcp::{ConnLimiter, ConnSlot};

/// What every connection of one listener shares.
pub struct ListenerCtx {
    /// Limits of `H`.
    pub limits: Arc<sigma_http::Limits>,
    /// The route table.
    pub routes: Arc<RouteTable>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// How long to wait for the peer's EOF after our half-close.
    pub linger: Duration,
    /// Whether the `A` stage is in this listener's pipeline.
    pub auth: bool,
    /// The connection caps (for the open-connections gauge).
    pub limiter: Arc<ConnLimiter>,
    /// Who may read `/metrics`.
    pub metrics_allow: Arc<Vec<Cidr>>,
}

/// Size of the per-thread read buffer; connections hold no read buffer
/// while idle.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [b' '; 29])) };
}

/// The current IMF-fixdate, formatted at most once per second per thread.
fn http_date() -> [u8; 29] {
    let now = SystemTime::now();
    let sec = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != sec {
            let s = httpdate::fmt_http_date(now);
            if let Ok(b) = <[u8; 29]>::try_from(s.as_bytes()) {
                *d = (sec, b);
            }
        }
        d.1
    })
}

/// A request whose body is still arriving.
struct Incoming {
    head: Tagged<RequestHead>,
    body: BodyAcc,
    started: Instant,
    /// Body bytes so far.
    received: u64,
    /// The route's body limit, when lower than the connection's.
    max_body: Option<u64>,
}

/// Collects a body without copying when it arrives in one piece.
enum BodyAcc {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyAcc {
    fn push(&mut self, b: Bytes) {
        *self = match std::mem::replace(self, Self::Empty) {
            Self::Empty => Self::One(b),
            Self::One(first) => {
                let mut m = BytesMut::with_capacity(first.len() + b.len());
                m.extend_from_slice(&first);
                m.extend_from_slice(&b);
                Self::Many(m)
            }
            Self::Many(mut m) => {
                m.extend_from_slice(&b);
                Self::Many(m)
            }
        }
    }

    fn finish(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(m) => m.freeze(),
        }
    }
}

/// One connection's pipeline: `H`, `A` and the route table.
struct Pipeline<'a> {
    ctx: &'a ListenerCtx,
    h: ServerConn,
    gate: Gate,
    incoming: Option<Incoming>,
    /// Replies ready to be handed to `H`, in request order.
    ready: VecDeque<Reply>,
    ws: Option<Box<dyn WsEndpoint>>,
    peer: SocketAddr,
}

/// Serves one accepted connection to its end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerCtx>,
    mut drain: watch::Receiver<bool>,
    _slot: ConnSlot,
) {
    let now = Instant::now();
    let mut p = Pipeline {
        ctx: &ctx,
        h: ServerConn::new(Arc::clone(&ctx.limits), now),
        gate: Gate::new(),
        incoming: None,
        ready: VecDeque::new(),
        ws: None,
        peer,
    };
    let mut draining = false;
    let mut read_shut = false;
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;

    let outcome = loop {
        p.pump();
        match p.h.shutdown() {
            Some(Shutdown::Abort) => break Shutdown::Abort,
            Some(Shutdown::Graceful) if p.h.output().is_empty() => break Shutdown::Graceful,
            _ => {}
        }
        // Write eagerly; wait for writability only when the socket is full.
        if !p.h.output().is_empty() {
            match stream.try_write(p.h.output()) {
                Ok(n) => {
                    p.h.handle_written(n, Instant::now());
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break Shutdown::Abort,
            }
        }
        // The pipeline stopped reading for good but still owes output.
        if !read_shut && p.h.shutdown().is_none() && !p.h.wants_read() && p.h.read_closed() {
            let _ = SockRef::from(&stream).shutdown(SockShutdown::Read);
            read_shut = true;
        }
        let deadline = p.h.poll_timeout();
        if deadline != armed {
            if let Some(d) = deadline {
                sleep.as_mut().reset(d.into());
            }
            armed = deadline;
        }
        let wants_read = p.h.wants_read() && !read_shut;
        let wants_write = !p.h.output().is_empty();
        tokio::select! {
            r = stream.readable(), if wants_read => {
                if r.is_err() {
                    break Shutdown::Abort;
                }
                let now = Instant::now();
                p.h.set_date(&http_date());
                let res = SCRATCH.with(|s| {
                    let mut s = s.borrow_mut();
                    match stream.try_read(&mut s) {
                        Ok(0) => { p.h.handle_eof(now); Ok(()) }
                        Ok(n) => { p.h.handle_input(s.get(..n).unwrap_or_default(), now); Ok(()) }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                        Err(e) => Err(e),
                    }
                });
                if res.is_err() {
                    break Shutdown::Abort;
                }
            }
            r = stream.writable(), if wants_write => {
                if r.is_err() {
                    break Shutdown::Abort;
                }
            }
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                p.h.set_date(&http_date());
                p.h.handle_timeout(Instant::now());
            }
            _ = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                p.h.start_drain(Instant::now());
            }
            else => {
                // Nothing can make progress: a state the codec should never
                // reach. End the connection rather than hang it.
                tracing::error!(peer = %p.peer, "connection stalled; aborting");
                break Shutdown::Abort;
            }
        }
    };

    let reached = p.h.limits_reached();
    for (hit, reason) in [
        (reached.max_pipelined, "max_pipelined"),
        (
            reached.max_requests_per_connection,
            "max_requests_per_connection",
        ),
        (reached.ws_close_timeout, "ws_close_timeout"),
    ] {
        if hit {
            ctx.metrics.reject(reason);
        }
    }
    match outcome {
        Shutdown::Abort => {
            let _ = SockRef::from(&stream).shutdown(SockShutdown::Both);
        }
        Shutdown::Graceful => {
            let _ = SockRef::from(&stream).shutdown(SockShutdown::Write);
            if !read_shut {
                linger(&stream, ctx.linger).await;
            }
        }
    }
}

/// After our half-close: read and discard until the peer's EOF or the
/// deadline, so that the peer sees our last response rather than a reset.
async fn linger(stream: &TcpStream, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ready = tokio::time::timeout_at(deadline, stream.readable()).await;
        if !matches!(ready, Ok(Ok(()))) {
            return;
        }
        let done = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match stream.try_read(&mut s) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            }
        });
        if done {
            return;
        }
    }
}

impl Pipeline<'_> {
    /// Moves events through `A` and the router, and ready replies into `H`,
    /// until neither has anything left.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.h.poll_event() {
                progressed = true;
                self.on_event(ev);
            }
            while let Some(reply) = self.ready.pop_front() {
                progressed = true;
                let now = Instant::now();
                match &reply {
                    Reply::Response(r) => self.ctx.metrics.response(r.status),
                    Reply::Ws(m) => {
                        inc(&self.ctx.metrics.ws_messages_out);
                        add(&self.ctx.metrics.ws_bytes_out, ws_len(m));
                    }
                    _ => {}
                }
                if let Err(e) = self.h.send(reply, now) {
                    tracing::error!(peer = %self.peer, error = %e, "reply refused by H");
                    // A destination produced something H cannot send: the
                    // client gets a 500 instead of whatever it was.
                    let _ = self
                        .h
                        .send(Reply::Response(plain(500, "internal error\n")), now);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Request(head) => {
                inc(&self.ctx.metrics.requests);
                let tagged = self.gate.tag_request(head);
                if tagged.msg.websocket.is_some() {
                    self.on_upgrade(tagged);
                } else {
                    let max_body = self
                        .ctx
                        .routes
                        .lookup(tagged.msg.path())
                        .and_then(|r| r.max_body);
                    let declared = tagged
                        .msg
                        .header("content-length")
                        .and_then(|h| std::str::from_utf8(&h.value).ok()?.parse::<u64>().ok());
                    if let (Some(max), Some(len)) = (max_body, declared) {
                        if len > max {
                            // Refused before the body is read: H answers now
                            // and closes (the rest of the body is not read).
                            return self.refuse_body();
                        }
                    }
                    self.incoming = Some(Incoming {
                        head: tagged,
                        body: BodyAcc::Empty,
                        started: Instant::now(),
                        received: 0,
                        max_body,
                    });
                }
            }
            Event::Body(b) => {
                if let Some(inc) = self.incoming.as_mut() {
                    inc.received = inc.received.saturating_add(b.len() as u64);
                    if inc.max_body.is_some_and(|max| inc.received > max) {
                        return self.refuse_body();
                    }
                    inc.body.push(b);
                }
            }
            Event::EndOfMessage { .. } => {
                if let Some(inc) = self.incoming.take() {
                    let req = Tagged::new(
                        inc.head.identity,
                        HttpRequest {
                            head: inc.head.msg,
                            body: inc.body.finish(),
                        },
                    );
                    let reply = self.dispatch(req);
                    self.ctx.metrics.latency(inc.started.elapsed());
                    self.ready.push_back(Reply::Response(reply));
                }
            }
            Event::Upgraded { .. } => {}
            Event::Ws(WsEvent::Message(msg)) => {
                inc(&self.ctx.metrics.ws_messages_in);
                add(&self.ctx.metrics.ws_bytes_in, ws_len(&msg));
                let tagged = self.gate.tag(msg);
                if let Some(ep) = self.ws.as_mut() {
                    if let Some(reply) = ep.on_message(tagged) {
                        match self.gate.check_reply(&reply) {
                            Ok(()) => self.ready.push_back(Reply::Ws(reply.msg)),
                            Err(_) => self.mismatch(),
                        }
                    }
                }
            }
            Event::Ws(WsEvent::Ping(_)) | Event::Ws(WsEvent::Close { .. }) => {}
            Event::End => {}
            Event::Abort(reason) => {
                self.incoming = None;
                self.ctx.metrics.reject(reason.reason);
                if let Some(status) = reason.status {
                    self.ctx.metrics.response(status);
                }
                if self.ctx.metrics.may_log() {
                    tracing::info!(peer = %self.peer, reason = reason.reason, status = ?reason.status, "connection rejected");
                }
            }
        }
    }

    /// The route's `max_body` is exceeded: 413 at once; the codec closes
    /// the connection since the body was not read to its end.
    fn refuse_body(&mut self) {
        self.incoming = None;
        self.ctx.metrics.reject("body_too_large");
        let mut resp = plain(413, "request body too large\n");
        resp.headers
            .push(Header::new(&b"Connection"[..], &b"close"[..]));
        self.ready.push_back(Reply::Response(resp));
    }

    /// Routes a complete request and applies the reply rule to the answer.
    fn dispatch(&mut self, req: Tagged<HttpRequest>) -> Response {
        if let Some(resp) = self.builtin(&req.msg.head) {
            return resp;
        }
        let Some(route) = self.ctx.routes.lookup(req.msg.head.path()) else {
            return plain(404, "not found\n");
        };
        if let Err(denied) = self.authorize(route) {
            return denied;
        }
        let reply = route.dest.http(req);
        match self.gate.check_reply(&reply) {
            Ok(()) => reply.msg,
            Err(_) => {
                self.mismatch();
                plain(502, "bad gateway\n")
            }
        }
    }

    /// sigma's own endpoints: `/healthz`, and `/metrics` for the addresses
    /// in `server.metrics_allow`.
    fn builtin(&self, head: &RequestHead) -> Option<Response> {
        let get = matches!(head.method, Method::Get | Method::Head);
        match head.path() {
            b"/healthz" if get => Some(plain(200, "ok\n")),
            b"/metrics" if get => {
                let ip = self.peer.ip();
                if !self.ctx.metrics_allow.iter().any(|n| n.contains(ip)) {
                    return Some(plain(403, "forbidden\n"));
                }
                let body = self.ctx.metrics.render(self.ctx.limiter.open());
                Some(Response::new(
                    200,
                    vec![Header::new(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4; charset=utf-8"[..],
                    )],
                    body,
                ))
            }
            _ => None,
        }
    }

    /// `A`'s route access check; `[H]` listeners have no `A` and skip it.
    fn authorize(&self, route: &Route) -> Result<(), Response> {
        if !self.ctx.auth {
            return Ok(());
        }
        auth::authorize(self.gate.identity(), route.auth, route.users.as_deref()).map_err(|d| {
            match d {
                Denied::Unauthenticated => plain(401, "authentication required\n"),
                Denied::Forbidden => plain(403, "forbidden\n"),
            }
        })
    }

    fn on_upgrade(&mut self, req: Tagged<RequestHead>) {
        let route = self.ctx.routes.lookup(req.msg.path());
        if let Some(Err(denied)) = route.map(|r| self.authorize(r)) {
            self.ready.push_back(Reply::Response(denied));
            return;
        }
        let endpoint = route.and_then(|r| r.dest.websocket());
        match endpoint {
            Some(ep) => {
                self.ws = Some(ep);
                self.ready.push_back(Reply::Accept {
                    protocol: None,
                    headers: Vec::new(),
                });
            }
            None => self
                .ready
                .push_back(Reply::Response(plain(404, "no WebSocket here\n"))),
        }
    }

    fn mismatch(&self) {
        inc(&self.ctx.metrics.identity_mismatch);
        if self.ctx.metrics.may_log() {
            tracing::warn!(peer = %self.peer, "reply dropped: identity mismatch");
        }
    }
}

/// Payload length of a WebSocket message.
fn ws_len(m: &WsMessage) -> usize {
    match m {
        WsMessage::Text(t) => t.len(),
        WsMessage::Binary(b) => b.len(),
    }
}

/// A small text response.
pub fn plain(status: u16, body: &'static str) -> Response {
    Response::new(
        status,
        vec![Header::new(
            &b"Content-Type"[..],
            &b"text/plain; charset=utf-8"[..],
        )],
        Bytes::from_static(body.as_bytes()),
    )
}
