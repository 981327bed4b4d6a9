//! The per-connection glue between `H` and the rest of the pipeline.
//!
//! ```text
//!  H ──Event──▶ [ dispatch: A (gate, identity) ──Tagged──▶ route ──▶ destination ]
//!    ◀─Reply──  [ outbox (request order) ◀── A.check_reply ◀──────── reply      ]
//! ```
//!
//! [`Dispatch`] takes `H`'s events for one connection, runs them through
//! `A` (identity-header stripping, route access, the reply rule) and the
//! route table, and queues the replies in request order in its [`Outbox`]:
//! a destination may answer at once or later (a future), and responses
//! still leave in the order the requests came. It owns no socket and no
//! timer; [`crate::conn`] drives it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sigma_http::{
    Event, Header, Method, Reply, RequestHead, Response, SendError, ServerConn, WsEvent,
};

use crate::access::{self, Entry};
use crate::auth::admit::unauthenticated;
use crate::auth::forwarded::{self, Client};
use crate::auth::{self, endpoints, Denied, Gate, Resolved, RouteAccess, Tagged, Via};
use crate::config::AuthLevel;
use crate::listener::{Generation, ListenerCtx, RouteRef};
use crate::metrics::{add, inc};
use crate::route::Destination as _;
use crate::route::{
    ws_push_queue_for, Answer, Delivered, Handled, HttpRequest, Pushed, Request, Route, Upgrade,
    UpgradeRequest, WsEndpoint, WsReceiver,
};
use crate::streaming::{self, BodyError, BodyTx, ClientInfo, Refusal, Streamed, TrySend};
use sigma_core::{enforce, Dropped, ReplyAudit as _};

mod outbox;
mod sent;
pub use outbox::{LaterReply, Outbox, Outgoing};
use sent::Sent;

/// A request body streamed to its destination as it arrives.
struct Upload {
    tx: BodyTx,
    /// Pieces that found the channel full; while any wait here the
    /// connection does not read from the client.
    overflow: VecDeque<Bytes>,
    received: u64,
    max_body: Option<u64>,
    /// `EndOfMessage` was seen: finish once `overflow` is empty.
    ended: bool,
}

/// A request whose body is still arriving.
struct Incoming {
    head: Tagged<RequestHead>,
    /// How `A` authenticated it.
    via: Via,
    /// Where it goes, decided from its head ([`Dispatch::target`]).
    target: Target,
    /// The client's address (after trusted proxies).
    client: std::net::IpAddr,
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

/// Where a request goes: the request precedence of docs/architecture.md,
/// decided once per request from its head by [`Dispatch::target`].
enum Target {
    /// Answered by sigma itself: a bearer token that does not verify
    /// (401), `/healthz` and `/metrics`, no route (404), a route `A` does
    /// not admit the request to. `dest` names who answered (access log).
    Answer(Response, &'static str),
    /// `A`'s own endpoints ([`endpoints::Endpoints`]).
    Auth(std::sync::Arc<auth::Auth>),
    /// The route's destination, the request admitted to it.
    Route(RouteRef),
}

/// sigma's public keys (its tokens and upstream assertions), on `[HA]`
/// listeners.
const JWKS_PATH: &[u8] = b"/.well-known/sigma/jwks.json";

/// One connection's pipeline: `H`, `A` and the route table.
pub struct Dispatch<'a> {
    ctx: &'a ListenerCtx,
    /// The routes and `/metrics` access in force for the current request
    /// (re-read from `ctx.current` at each request head: a reload applies
    /// to the next request, never to half of one).
    gen: std::sync::Arc<Generation>,
    /// The codec of this connection.
    pub h: ServerConn,
    /// Who the client is (fixed at a WebSocket's upgrade); the driver
    /// reads it to take pushes checked against it ([`WsReceiver::recv_for`]).
    pub gate: Gate,
    incoming: Option<Incoming>,
    /// The access log entries of the requests whose response has not gone
    /// out yet, in request order (responses leave in that order).
    log: VecDeque<Entry>,
    /// The entry of the response whose body is being sent.
    log_body: Option<Entry>,
    /// The entry of this connection's WebSocket session.
    log_ws: Option<Entry>,
    /// The streamed request body in progress, if any.
    upload: Option<Upload>,
    /// Replies in request order.
    pub outbox: Outbox,
    ws: Option<Box<dyn WsEndpoint>>,
    /// Messages the destination pushes to this socket.
    pub pushed: Option<WsReceiver>,
    /// The socket's place among its login session's (closed with it).
    session_socket: Option<auth::revoke::Registration>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The buffered request body's share of the memory budget.
    body_account: sigma_http::Account,
    /// The time of the connection's current wake-up: the driver reads the
    /// clock once per wake ([`Dispatch::wake`]) and every step of that
    /// wake (a request's start, the replies handed to `H`) uses it.
    now: Instant,
}

impl<'a> Dispatch<'a> {
    /// The pipeline of a connection from `peer` accepted at `now`.
    pub fn new(ctx: &'a ListenerCtx, peer: SocketAddr, now: Instant) -> Self {
        Self {
            ctx,
            gen: ctx.current.load_full(),
            h: ServerConn::with_budget(
                std::sync::Arc::clone(&ctx.limits),
                std::sync::Arc::clone(&ctx.budget),
                now,
            ),
            gate: Gate::new(),
            incoming: None,
            log: VecDeque::new(),
            log_body: None,
            log_ws: None,
            upload: None,
            outbox: Outbox::default(),
            ws: None,
            pushed: None,
            session_socket: None,
            peer,
            body_account: sigma_http::Account::new(std::sync::Arc::clone(&ctx.budget)),
            now,
        }
    }

    /// A new wake-up of the connection: the one clock read it makes,
    /// returned for the driver's own use.
    pub fn wake(&mut self) -> Instant {
        self.now = Instant::now();
        self.now
    }
}

impl<'a> Dispatch<'a> {
    /// Moves events through `A` and the router, and ready replies into `H`,
    /// until neither has anything left.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.h.poll_event() {
                progressed = true;
                self.on_event(ev);
            }
            if progressed {
                if let Some(ep) = self.ws.as_mut() {
                    ep.flush();
                }
            }
            while let Some(mut reply) = self.outbox.ready.pop_front() {
                progressed = true;
                crate::front::decorate(&self.ctx.front, &mut reply);
                let now = self.now;
                let sent = Sent::of(&reply);
                let is_response = matches!(sent, Sent::Response { .. } | Sent::Head(_));
                let is_body = matches!(sent, Sent::Head(_) | Sent::Chunk(_) | Sent::End);
                match self.h.send(reply, now) {
                    Ok(()) => self.on_sent(sent),
                    // The socket is closing (a close handshake, a slow
                    // consumer): what was still queued for it is dropped,
                    // and nothing more is taken from the push queue.
                    Err(SendError::Closed | SendError::NotWebSocket) if !is_response => {
                        self.pushed = None;
                    }
                    Err(e) => {
                        if is_body {
                            // Nothing more of this streamed response goes out.
                            self.outbox.drop_body();
                            if let Some(entry) = self.log_body.take() {
                                self.finished(entry);
                            }
                        }
                        tracing::error!(peer = %self.peer, error = %e, "reply refused by H");
                        // A destination produced something H cannot send:
                        // the client gets a 500 instead of whatever it was.
                        if is_response {
                            let resp = plain(500, "internal error\n");
                            let bytes = resp.body.len() as u64;
                            let _ = self.h.send(Reply::Response(resp), now);
                            self.on_sent(Sent::Response { status: 500, bytes });
                        }
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Takes the generation in force for the request that starts now.
    /// The common case (no reload since) costs one lock-free load and no
    /// reference count.
    fn refresh_generation(&mut self) {
        let now = self.ctx.current.load();
        if !std::sync::Arc::ptr_eq(&now, &self.gen) {
            self.gen = arc_swap::Guard::into_inner(now);
        }
    }

    /// Accounts for what went out: the access log entry of its request
    /// moves on, and ends at [`Dispatch::finished`].
    fn on_sent(&mut self, sent: Sent) {
        match sent {
            Sent::Response { status, bytes } => {
                self.ctx.metrics.response(status);
                if let Some(mut entry) = self.log.pop_front() {
                    entry.status = status;
                    entry.bytes_out = bytes;
                    self.finished(entry);
                }
            }
            Sent::Head(status) => {
                self.ctx.metrics.response(status);
                if let Some(mut entry) = self.log.pop_front() {
                    entry.status = status;
                    self.log_body = Some(entry);
                }
            }
            Sent::Chunk(n) => {
                if let Some(entry) = self.log_body.as_mut() {
                    entry.bytes_out = entry.bytes_out.saturating_add(n);
                }
            }
            Sent::End => {
                if let Some(entry) = self.log_body.take() {
                    self.finished(entry);
                }
            }
            Sent::Accept => {
                if let Some(mut entry) = self.log.pop_front() {
                    entry.status = 101;
                    self.log_ws = Some(entry);
                }
                // No request follows on a WebSocket: its idle memory keeps
                // no room for their log entries.
                if self.log.is_empty() {
                    self.log = VecDeque::new();
                }
            }
            Sent::Ws(n) => {
                inc(&self.ctx.metrics.ws_messages_out);
                add(&self.ctx.metrics.ws_bytes_out, n);
                if let Some(entry) = self.log_ws.as_mut() {
                    entry.bytes_out = entry.bytes_out.saturating_add(n as u64);
                }
            }
            Sent::Other => {}
        }
    }

    /// The one "request finished" point: a response (or a WebSocket
    /// session) has ended. Counts it for its route and writes the access
    /// log line (one clock read for both).
    fn finished(&mut self, entry: Entry) {
        let took = entry.started.elapsed();
        let route = entry.route.as_ref().or(entry.matched.as_ref());
        if let Some(stats) = route.and_then(RouteRef::stats) {
            stats.record(entry.status, took);
        }
        if self.ctx.access_log {
            access::write(&entry, took);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Request(head) => self.on_request(head),
            Event::Body(b) if self.upload.is_some() => self.upload_piece(b),
            Event::EndOfMessage { .. } if self.upload.is_some() => {
                if let Some(u) = self.upload.as_mut() {
                    u.ended = true;
                }
                self.finish_upload_if_done();
            }
            Event::Body(b) => {
                if let Some(inc) = self.incoming.as_mut() {
                    inc.received = inc.received.saturating_add(b.len() as u64);
                    if inc.max_body.is_some_and(|max| inc.received > max) {
                        return self.refuse_body();
                    }
                    let held = usize::try_from(inc.received).unwrap_or(usize::MAX);
                    if !self.body_account.try_set(held) {
                        return self.refuse_budget();
                    }
                    inc.body.push(b);
                }
            }
            Event::EndOfMessage { .. } => {
                // The body is the destination's now.
                let _ = self.body_account.try_set(0);
                if let Some(inc) = self.incoming.take() {
                    if let Some(entry) = self.log.back_mut() {
                        entry.bytes_in = inc.received;
                    }
                    let req = Tagged::new(
                        inc.head.identity,
                        HttpRequest {
                            head: inc.head.msg,
                            body: inc.body.finish(),
                        },
                    );
                    match self.dispatch(req, inc.target, inc.via, inc.client) {
                        Handled::Ready(resp) => {
                            self.ctx.metrics.latency(inc.started.elapsed());
                            self.outbox.push(Reply::Response(resp.msg));
                        }
                        Handled::Later(fut) => {
                            let metrics = std::sync::Arc::clone(&self.ctx.metrics);
                            let started = inc.started;
                            self.outbox.push_later(Box::pin(async move {
                                let resp = fut.await;
                                metrics.latency(started.elapsed());
                                Outgoing::Reply(Reply::Response(resp.msg))
                            }));
                        }
                    }
                }
            }
            Event::Upgraded { .. } => {}
            Event::Ws(WsEvent::Message(msg)) => {
                inc(&self.ctx.metrics.ws_messages_in);
                add(&self.ctx.metrics.ws_bytes_in, msg.len());
                if let Some(entry) = self.log_ws.as_mut() {
                    entry.bytes_in = entry.bytes_in.saturating_add(msg.len() as u64);
                }
                // The session ended and the connection has not taken the
                // news yet: nothing more reaches the endpoint as it.
                if self.pushed.as_ref().is_some_and(WsReceiver::revoked) {
                    return self.on_pushed(Pushed::Revoked);
                }
                let tagged = self.gate.tag(msg);
                if let Some(ep) = self.ws.as_mut() {
                    if let Some(reply) = ep.on_message(tagged) {
                        let audit = &*self.ctx.metrics;
                        let expected = self.gate.identity();
                        if let Some(r) = enforce(expected, reply, audit, Dropped::Reply, &self.peer)
                        {
                            self.outbox.push(Reply::Ws(r.msg));
                        }
                    }
                }
            }
            Event::Ws(WsEvent::Close { code, reason }) => {
                if let Some(ep) = self.ws.as_mut() {
                    ep.flush();
                    ep.on_close(code, &reason);
                }
            }
            Event::Ws(WsEvent::Ping(_)) => {}
            Event::End => {}
            Event::Abort(reason) => {
                // The request in progress (its body was being read) ends
                // here, with H's own answer if it gave one.
                let in_progress = self.incoming.take().is_some() | self.upload.is_some();
                let entry = if in_progress {
                    self.log.pop_back()
                } else {
                    reason.status.map(|_| {
                        let mut e = Entry::new(self.now, self.peer.ip());
                        if self.ctx.access_log {
                            e.req = access::new_request_id();
                        }
                        e
                    })
                };
                if let Some(mut entry) = entry {
                    entry.status = reason.status.unwrap_or(0);
                    self.finished(entry);
                }
                let _ = self.body_account.try_set(0);
                if let Some(u) = self.upload.take() {
                    u.tx.fail(BodyError::Aborted);
                }
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

    /// A request head: who the client is (trusted proxies), who the user
    /// is (`A`), where the request goes ([`Dispatch::target`], the route
    /// looked up once), then a whole request, a streamed one or an
    /// upgrade.
    fn on_request(&mut self, mut head: RequestHead) {
        inc(&self.ctx.metrics.requests);
        self.refresh_generation();
        let started = self.now;
        let client = forwarded::resolve(self.peer.ip(), &head, &self.ctx.trusted_proxies);
        forwarded::apply(&mut head, &client);
        let req_id = client
            .request_id
            .clone()
            .unwrap_or_else(access::new_request_id);
        let mut entry = Entry::new(started, client.ip);
        entry.method = Some(head.method);
        // What only the access log reads is copied only when it is on.
        let logged = self.ctx.access_log;
        if logged {
            entry.req.clone_from(&req_id);
        }
        // One path for A, the route table and the destination: a path
        // that could be read two ways is refused here (and logged as it
        // came).
        let refused = crate::route::path::normalise_target(&head.target)
            .map(|target| head.target = target)
            .err();
        if logged {
            entry.path = String::from_utf8_lossy(head.path()).into_owned();
        }
        if let Some(why) = refused {
            self.log.push_back(entry);
            return self.refuse_path(why);
        }
        // TLS's front door (redirect to https, ACME http-01) comes before
        // A: its answers carry no identity.
        if self.ctx.front.is_active() {
            if let Some(resp) = crate::front::answer(&self.ctx.front, &head) {
                self.log.push_back(entry);
                self.incoming = None;
                self.outbox.push(Reply::Response(resp));
                return;
            }
        }
        head.headers
            .push(Header::new(&b"X-Request-Id"[..], req_id.into_bytes()));
        let own = self.ctx.auth.is_some() && endpoints::is_endpoint(head.path());
        let route = if own {
            None
        } else {
            RouteRef::lookup(&self.gen, head.path())
        };
        let (route_auth, max_body, streams) = match route.as_ref().and_then(RouteRef::route) {
            Some(r) => (Some(r.auth), r.max_body, r.dest.capabilities().streams_http),
            None => (None, None, false),
        };
        // A route with `auth = "none"` is forwarded with identity null:
        // its requests are not authenticated at all.
        let resolved = match &self.ctx.auth {
            Some(a) if route_auth != Some(AuthLevel::None) => {
                a.identify(&head, a.clock().unix_ms(), client.ip)
            }
            _ => Resolved::anonymous(),
        };
        let (via, session) = (resolved.via, resolved.session);
        let tagged = auth::tag_request(resolved.identity, head);
        let target = self.target(&tagged, route.as_ref(), &via, &client);
        entry.user = tagged.identity.clone();
        match &target {
            Target::Answer(_, dest) => {
                entry.dest = dest;
                // Refused requests count for the route they asked for too.
                entry.matched = route;
            }
            Target::Auth(_) => entry.dest = access::DEST_AUTH,
            Target::Route(_) => entry.route = route,
        }
        self.log.push_back(entry);
        if tagged.msg.websocket.is_some() {
            return self.on_upgrade(tagged, target, &via, session, client.ip);
        }
        if let (Target::Route(r), true) = (&target, streams) {
            let r = r.clone();
            return self.start_stream(tagged, &r, &via, session, client.ip);
        }
        if declared_over(max_body, &tagged.msg) {
            return self.refuse_body();
        }
        self.incoming = Some(Incoming {
            head: tagged,
            via,
            target,
            client: client.ip,
            body: BodyAcc::Empty,
            started,
            received: 0,
            max_body,
        });
    }

    /// The request precedence (docs/architecture.md), in one place: a bad
    /// bearer token (401), then `A`'s endpoints, then sigma's built-ins,
    /// then the route (404 without one), then `A`'s admission to it.
    fn target(
        &self,
        req: &Tagged<RequestHead>,
        route: Option<&RouteRef>,
        via: &Via,
        client: &Client,
    ) -> Target {
        let head = &req.msg;
        if let Via::InvalidBearer(reason) = via {
            if self.ctx.metrics.may_log() {
                tracing::warn!(
                    target: auth::SECURITY,
                    event = "bad_token",
                    client = %client.ip,
                    reason = *reason,
                    path = %String::from_utf8_lossy(head.path()),
                    "bearer token refused"
                );
            }
            return Target::Answer(auth::admit::bearer_refusal(reason), access::DEST_NONE);
        }
        if let Some(a) = &self.ctx.auth {
            if endpoints::is_endpoint(head.path()) {
                return Target::Auth(std::sync::Arc::clone(a));
            }
        }
        let upgrade = head.websocket.is_some();
        let builtin = matches!(head.path(), b"/healthz" | b"/metrics" | JWKS_PATH);
        if builtin && !upgrade {
            if let Some(resp) = self.builtin(head, client.ip) {
                return Target::Answer(resp, access::DEST_BUILTIN);
            }
        }
        let Some((found, route)) = route.and_then(|r| Some((r, r.route()?))) else {
            let body = if upgrade {
                "no WebSocket here\n"
            } else {
                "not found\n"
            };
            return Target::Answer(plain(404, body), access::DEST_NONE);
        };
        // sigma's own paths with another method are never passed on to
        // a destination that streams (the proxy).
        if builtin && !upgrade && route.dest.capabilities().streams_http {
            return Target::Answer(plain(404, "not found\n"), access::DEST_BUILTIN);
        }
        if let Err(denied) = self.admit(route, head, &req.identity, via, client.ip) {
            return Target::Answer(denied, access::DEST_NONE);
        }
        Target::Route(found.clone())
    }

    /// Hands a request to its streaming destination at once; its body
    /// follows through a bounded channel ([`streaming::body_channel`]).
    fn start_stream(
        &mut self,
        req: Tagged<RequestHead>,
        route: &RouteRef,
        via: &Via,
        session: Option<crate::store::SessionId>,
        ip: std::net::IpAddr,
    ) {
        let expected = req.identity.clone();
        let Some(route) = route.route() else {
            return self
                .outbox
                .push(Reply::Response(plain(500, "internal error\n")));
        };
        let max_body = route.max_body;
        if declared_over(max_body, &req.msg) {
            return self.refuse_body();
        }
        let (tx, rx) = streaming::body_channel();
        let client = ClientInfo {
            ip,
            bearer: matches!(via, Via::Bearer),
        };
        let fut = match route.dest.handle(Request::Stream {
            head: req,
            body: rx,
            client,
        }) {
            Answer::Stream(fut) => fut,
            // Not a streaming answer (a destination breaking its own
            // capabilities): nothing of it is sent.
            _ => Box::pin(std::future::ready(Tagged::new(
                expected.clone(),
                Streamed::Whole(plain(500, "internal error\n")),
            ))),
        };
        self.upload = Some(Upload {
            tx,
            overflow: VecDeque::new(),
            received: 0,
            max_body,
            ended: false,
        });
        let metrics = std::sync::Arc::clone(&self.ctx.metrics);
        let peer = self.peer;
        let started = Instant::now();
        // An open-ended response (an event stream) authenticated by a login
        // session ends when the session does, as its sockets do.
        let bound = crate::streaming::SessionBound::new(self.ctx.auth.as_ref(), session, &expected);
        self.outbox.push_later(Box::pin(async move {
            let t = fut.await;
            metrics.latency(started.elapsed());
            // The reply rule: another identity (A's tag), or an upstream
            // that did not echo the one it was sent (`echo_identity`).
            let msg = match enforce(&expected, t, &*metrics, Dropped::Reply, &peer) {
                Some(t) => t.msg,
                None => return Outgoing::Reply(Reply::Response(plain(502, "bad gateway\n"))),
            };
            match msg {
                Streamed::Whole(r) => Outgoing::Reply(Reply::Response(r)),
                Streamed::Stream { head, body } => {
                    let body = crate::streaming::SessionBound::wrap(bound, &head, body);
                    Outgoing::Stream(head, body)
                }
                Streamed::IdentityMismatch => {
                    metrics.mismatch(Dropped::Reply, &peer);
                    Outgoing::Reply(Reply::Response(plain(502, "bad gateway\n")))
                }
            }
        }));
    }

    /// A piece of a streamed request body: into the channel, or into the
    /// overflow (then the connection stops reading) when it is full.
    fn upload_piece(&mut self, b: Bytes) {
        let Some(u) = self.upload.as_mut() else {
            return;
        };
        u.received = u.received.saturating_add(b.len() as u64);
        // The entry of the request being uploaded: still queued, or its
        // response's head already sent.
        if let Some(entry) = self.log.back_mut().or(self.log_body.as_mut()) {
            entry.bytes_in = u.received;
        }
        if u.max_body.is_some_and(|max| u.received > max) {
            // The destination sees the body fail and answers 413.
            self.ctx.metrics.reject("body_too_large");
            if let Some(u) = self.upload.take() {
                u.tx.fail(BodyError::TooLarge);
            }
            return;
        }
        if !u.overflow.is_empty() {
            u.overflow.push_back(b);
            return;
        }
        match u.tx.try_send(b) {
            TrySend::Sent => {}
            TrySend::Full(back) => u.overflow.push_back(back),
            // The destination stopped reading (it answered or failed): the
            // rest of the body is dropped.
            TrySend::Closed => self.upload = None,
        }
    }

    /// Ends the streamed body once it is complete. Pieces still waiting
    /// for room are handed over by a task, so that a pipelined request
    /// behind this one does not wait (they are at most one read's worth).
    fn finish_upload_if_done(&mut self) {
        if !self.upload.as_ref().is_some_and(|u| u.ended) {
            return;
        }
        let Some(u) = self.upload.take() else {
            return;
        };
        if u.overflow.is_empty() {
            u.tx.finish();
            return;
        }
        let (tx, overflow) = (u.tx, u.overflow);
        tokio::spawn(async move {
            for b in overflow {
                if !tx.send(b).await {
                    return;
                }
            }
            tx.finish();
        });
    }

    /// True while body pieces wait for room in the channel: the connection
    /// then stops reading from the client.
    pub fn upload_blocked(&self) -> bool {
        self.upload.as_ref().is_some_and(|u| !u.overflow.is_empty())
    }

    /// The channel to wait on while [`Dispatch::upload_blocked`].
    pub fn upload_sender(&self) -> Option<tokio::sync::mpsc::Sender<Bytes>> {
        self.upload.as_ref().map(|u| u.tx.sender())
    }

    /// The channel has room (`Some`) or is gone (`None`): moves the
    /// overflow on.
    pub fn on_upload_room(&mut self, permit: Option<tokio::sync::mpsc::OwnedPermit<Bytes>>) {
        let Some(u) = self.upload.as_mut() else {
            return;
        };
        let Some(permit) = permit else {
            self.upload = None;
            return;
        };
        if let Some(first) = u.overflow.pop_front() {
            permit.send(first);
        }
        while let Some(next) = u.overflow.pop_front() {
            match u.tx.try_send(next) {
                TrySend::Sent => {}
                TrySend::Full(back) => {
                    u.overflow.push_front(back);
                    break;
                }
                TrySend::Closed => {
                    self.upload = None;
                    return;
                }
            }
        }
        self.finish_upload_if_done();
    }

    /// The request path is ambiguous (`route::path`): 400 at once; its
    /// body, if any, is not read and the connection closes.
    fn refuse_path(&mut self, why: crate::route::path::BadPath) {
        self.incoming = None;
        self.ctx.metrics.reject(crate::route::path::REJECT_LABEL);
        if self.ctx.metrics.may_log() {
            tracing::info!(peer = %self.peer, why = why.describe(), "request path refused");
        }
        let mut resp = sigma_core::response::json_error(400, "invalid_path");
        resp.headers
            .push(Header::new(&b"Connection"[..], &b"close"[..]));
        self.outbox.push(Reply::Response(resp));
    }

    /// The route's `max_body` is exceeded: 413 at once; the codec closes
    /// the connection since the body was not read to its end.
    fn refuse_body(&mut self) {
        self.incoming = None;
        let _ = self.body_account.try_set(0);
        self.ctx.metrics.reject("body_too_large");
        let mut resp = plain(413, "request body too large\n");
        resp.headers
            .push(Header::new(&b"Connection"[..], &b"close"[..]));
        self.outbox.push(Reply::Response(resp));
    }

    /// Buffering the request body would pass `server.memory_budget`: 503
    /// at once and close (the rest of the body is not read).
    fn refuse_budget(&mut self) {
        self.incoming = None;
        let _ = self.body_account.try_set(0);
        self.ctx.metrics.reject("memory_budget");
        if self.ctx.metrics.may_log() {
            tracing::info!(peer = %self.peer, "request body refused: memory budget");
        }
        let mut resp = plain(503, "server memory budget exhausted\n");
        resp.headers
            .push(Header::new(&b"Connection"[..], &b"close"[..]));
        self.outbox.push(Reply::Response(resp));
    }

    /// Hands a complete request to where [`Dispatch::target`] sent it and
    /// applies the reply rule to the answer.
    fn dispatch(
        &mut self,
        req: Tagged<HttpRequest>,
        target: Target,
        via: Via,
        client_ip: std::net::IpAddr,
    ) -> Handled {
        let expected = req.identity.clone();
        let answer = match target {
            Target::Answer(resp, _) => return Handled::Ready(Tagged::new(expected, resp)),
            Target::Auth(auth) => endpoints::Endpoints {
                auth,
                via,
                client_ip,
            }
            .handle(Request::Http(req)),
            Target::Route(route) => match route.route() {
                Some(r) => r.dest.handle(Request::Http(req)),
                None => Request::Http(req).not_taken(),
            },
        };
        let answer = answer.into_http().unwrap_or_else(|| {
            Handled::Ready(Tagged::new(
                expected.clone(),
                plain(500, "internal error\n"),
            ))
        });
        match answer {
            Handled::Ready(reply) => {
                Handled::Ready(reply_rule(&expected, reply, &self.ctx.metrics, self.peer))
            }
            Handled::Later(fut) => {
                let metrics = std::sync::Arc::clone(&self.ctx.metrics);
                let peer = self.peer;
                Handled::Later(Box::pin(async move {
                    let reply = fut.await;
                    reply_rule(&expected, reply, &metrics, peer)
                }))
            }
        }
    }

    /// sigma's own endpoints: `/healthz` (see [`crate::health::health_text`]), and
    /// `/metrics` for the client addresses (after trusted proxies) in
    /// `server.metrics_allow`.
    fn builtin(&self, head: &RequestHead, client: std::net::IpAddr) -> Option<Response> {
        let get = matches!(head.method, Method::Get | Method::Head);
        match head.path() {
            JWKS_PATH if get => self
                .ctx
                .auth
                .as_ref()
                .map(|a| sigma_core::response::json_response(200, a.jwks())),
            b"/healthz" if get => Some(crate::health::health_response(&self.ctx.health)),
            b"/metrics" if get => {
                if !self.gen.metrics_allow.iter().any(|n| n.contains(client)) {
                    return Some(plain(403, "forbidden\n"));
                }
                Some(crate::health::metrics_response(
                    &self.ctx.metrics,
                    self.ctx.limiter.open(),
                    &self.ctx.health,
                    &self.gen.routes,
                ))
            }
            _ => None,
        }
    }

    /// `A`'s admission of a request to a route: who may use it (401 or a
    /// redirect to the login page for browsers, 403), its policy
    /// (`allow`, `deny`, `methods`: 401, 403, 405), and for
    /// cookie-authenticated unsafe methods and WebSocket upgrades, that the
    /// request is not cross-site. `[H]` listeners have no `A` and admit all.
    fn admit(
        &self,
        route: &Route,
        head: &RequestHead,
        identity: &auth::Principal,
        via: &Via,
        client: std::net::IpAddr,
    ) -> Result<(), Response> {
        let Some(a) = &self.ctx.auth else {
            return Ok(());
        };
        let access = RouteAccess {
            level: route.auth,
            users: route.users.as_deref(),
        };
        a.admit(access, identity, via, head).map_err(|denied| {
            if denied == Denied::CrossSite && a.may_log() {
                tracing::warn!(
                    target: auth::SECURITY,
                    event = "cross_site",
                    client = %client,
                    user = identity.as_ref().map(|i| i.user.as_str()),
                    path = %String::from_utf8_lossy(head.path()),
                    "cross-site request refused"
                );
            }
            denied.response(head)
        })?;
        match route.policy() {
            Some(policy) => a.admit_policy(policy, identity, client, head, &route.path),
            None => Ok(()),
        }
    }

    fn on_upgrade(
        &mut self,
        req: Tagged<RequestHead>,
        target: Target,
        via: &Via,
        session: Option<crate::store::SessionId>,
        client_ip: std::net::IpAddr,
    ) {
        let own;
        let held;
        let (dest, on_route): (&dyn crate::route::Destination, Option<&Route>) = match target {
            Target::Answer(resp, _) => return self.outbox.push(Reply::Response(resp)),
            Target::Auth(auth) => {
                own = endpoints::Endpoints {
                    auth,
                    via: via.clone(),
                    client_ip,
                };
                (&own, None)
            }
            Target::Route(r) => {
                held = r;
                match held.route() {
                    Some(route) => (&*route.dest, Some(route)),
                    None => {
                        return self
                            .outbox
                            .push(Reply::Response(plain(500, "internal error\n")))
                    }
                }
            }
        };
        // No credentials, no upgrade, whatever the route's `auth`.
        let caps = dest.capabilities();
        if req.identity.is_none() && caps.requires_identity {
            self.outbox.push(Reply::Response(unauthenticated()));
            return;
        }
        // The socket's identity is fixed at the upgrade.
        self.gate = Gate::with_identity(req.identity.clone());
        let (push, received) = ws_push_queue_for(req.identity.clone());
        let closer = push.closer();
        let socket_push = push.clone();
        let client = ClientInfo {
            ip: client_ip,
            bearer: matches!(via, Via::Bearer),
        };
        let endpoint = if caps.websocket {
            dest.handle(Request::Upgrade(Upgrade {
                identity: req.identity.clone(),
                push,
                from: Some(UpgradeRequest {
                    head: req.msg,
                    client,
                }),
            }))
            .into_socket()
        } else {
            None
        };
        match endpoint {
            Some(mut ep) => {
                // A reload that removes the route closes the socket (1001).
                if let Some(r) = on_route {
                    r.sockets.register(socket_push);
                }
                let admission = ep.accept_when();
                self.ws = Some(ep);
                self.pushed = Some(received);
                // Authenticated by a login session (its cookie or one of
                // its tokens): the socket closes when the session ends.
                if let (Some(a), Some(id), Some(who)) = (&self.ctx.auth, session, &req.identity) {
                    self.session_socket = Some(a.sessions.register_socket(&id, &who.user, closer));
                }
                let accept = Reply::Accept {
                    protocol: None,
                    headers: Vec::new(),
                };
                match admission {
                    None => self.outbox.push(accept),
                    // The destination decides later (the proxy connects to
                    // its upstream first); replies queue behind it.
                    Some(wait) => {
                        let metrics = std::sync::Arc::clone(&self.ctx.metrics);
                        let peer = self.peer;
                        self.outbox.push_later(Box::pin(async move {
                            Outgoing::Reply(match wait.await {
                                Ok(()) => accept,
                                Err(Refusal::Status(400)) => {
                                    Reply::Response(plain(400, "bad request\n"))
                                }
                                Err(Refusal::Status(500)) => {
                                    Reply::Response(plain(500, "internal error\n"))
                                }
                                Err(Refusal::Status(504)) => {
                                    Reply::Response(plain(504, "gateway timeout\n"))
                                }
                                Err(Refusal::Status(_)) => {
                                    Reply::Response(plain(502, "bad gateway\n"))
                                }
                                Err(Refusal::IdentityMismatch) => {
                                    metrics.mismatch(Dropped::Upgrade, &peer);
                                    Reply::Response(plain(502, "bad gateway\n"))
                                }
                            })
                        }))
                    }
                }
            }
            None => self
                .outbox
                .push(Reply::Response(plain(404, "no WebSocket here\n"))),
        }
    }

    /// What the destination pushed, taken with [`WsReceiver::recv_for`].
    pub fn on_delivered(&mut self, delivered: Delivered) {
        match delivered {
            // Its tag was the socket's own identity: the reply rule held
            // (`recv_for` compared it with the gate's).
            Delivered::Checked(msg) => self.outbox.push(Reply::Ws(msg)),
            Delivered::Other(p) => self.on_pushed(p),
        }
    }

    /// What the destination pushed: a message goes through the reply rule
    /// to `H`; an overflow closes the socket with 1008 (slow consumer).
    pub fn on_pushed(&mut self, pushed: Pushed) {
        match pushed {
            Pushed::Message(m) => {
                let audit = &*self.ctx.metrics;
                if let Some(m) = enforce(self.gate.identity(), m, audit, Dropped::Push, &self.peer)
                {
                    self.outbox.push(Reply::Ws(m.msg));
                }
            }
            Pushed::Closed => self.pushed = None,
            Pushed::Close { code, reason } => {
                self.pushed = None;
                self.outbox.push(Reply::WsClose { code, reason });
            }
            Pushed::Revoked => {
                // The endpoint goes now (subscriptions, watches, worlds,
                // the upstream relay), not after the close handshake.
                self.pushed = None;
                self.ws = None;
                self.session_socket = None;
                self.ctx.metrics.reject("ws_session_revoked");
                self.outbox.push(Reply::WsClose {
                    code: crate::route::WS_CLOSE_REVOKED,
                    reason: "session revoked".into(),
                });
            }
            Pushed::Overflow => {
                self.pushed = None;
                self.ctx.metrics.reject("ws_slow_consumer");
                self.outbox.push(Reply::WsClose {
                    code: 1008,
                    reason: "slow consumer".into(),
                });
            }
        }
    }
}

/// The connection ended: its WebSocket session's access log line, and
/// those of requests that never got their response (status `0`), or whose
/// streamed body did not end.
impl Drop for Dispatch<'_> {
    fn drop(&mut self) {
        let mut left: Vec<Entry> = self.log_ws.take().into_iter().collect();
        left.extend(self.log_body.take());
        left.extend(self.log.drain(..));
        for entry in left {
            self.finished(entry);
        }
    }
}

/// Applies the reply rule to a response: one with another identity is
/// replaced by a 502 that carries none of its data, counted and logged
/// ([`sigma_core::enforce`]).
fn reply_rule(
    expected: &auth::Principal,
    reply: Tagged<Response>,
    metrics: &crate::metrics::Metrics,
    peer: SocketAddr,
) -> Tagged<Response> {
    enforce(expected, reply, metrics, Dropped::Reply, &peer)
        .unwrap_or_else(|| Tagged::new(expected.clone(), plain(502, "bad gateway\n")))
}

/// The declared `Content-Length` goes over the route's `max_body`: the
/// request is refused before its body is read (H answers at once and
/// closes, since the rest of the body is not read).
fn declared_over(max_body: Option<u64>, head: &RequestHead) -> bool {
    matches!((max_body, head.content_length()), (Some(max), Some(len)) if len > max)
}

/// A small text response (one definition, in `sigma-core`).
pub use sigma_core::response::plain;
