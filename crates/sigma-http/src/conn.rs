//! `ServerConn`: one connection of `H`, as a sans-IO state machine.
//!
//! Left side: the client's bytes ([`ServerConn::handle_input`],
//! [`ServerConn::handle_eof`]) and the bytes owed to it
//! ([`ServerConn::output`], [`ServerConn::handle_written`]). Right side:
//! [`Event`]s toward `A` ([`ServerConn::poll_event`]) and [`Reply`]s from it
//! ([`ServerConn::send`]). Time enters only as `now`: the shell sleeps until
//! [`ServerConn::poll_timeout`] and calls [`ServerConn::handle_timeout`].
//! After each call the shell checks [`ServerConn::shutdown`] and
//! [`ServerConn::wants_read`].
//!
//! Invariants: responses leave in request order; at most `max_pipelined`
//! requests are waiting for their responses (then reading stops); a
//! request that fails to parse is answered with its status after the
//! responses owed before it, then the connection half-closes (ω); nothing
//! is parsed twice. After a WebSocket upgrade the connection delegates to
//! [`crate::ws::WsConn`]. It does not route, authenticate, or touch sockets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::budget::{Account, MemoryBudget};
use crate::error::{ParseError, SendError};
use crate::event::{AbortReason, Event, Header, Reply, Response, ResponseHead, Version};
use crate::h1::decode::{DecodeLimits, Decoded, Decoder};
use crate::h1::encode::{self, ConnHeader, StreamFraming};
use crate::h1::request::{self, BodyKind};
use crate::h1::scan::{ScanLimits, Scanner};
use crate::io::OutBuf;
use crate::limits::Limits;
use crate::timer::{Timer, TimerTable};
use crate::ws::{self, WsConn};

// Defined with the events (both this driver and the WebSocket one return it,
// and `ws` must not import this module); re-exported under its old path.
pub use crate::event::Shutdown;

/// While this many response bytes wait for a client that does not read,
/// no further pipelined request is parsed (the shell stops reading), so a
/// client cannot make sigma buffer responses without bound. One response
/// may exceed it; the backlog is then at most that response plus this.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Limits a connection reached without an `Abort` event naming them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsReached {
    /// Reading paused because `max_pipelined` requests waited.
    pub max_pipelined: bool,
    /// The connection served `max_requests_per_connection` requests.
    pub max_requests_per_connection: bool,
    /// The WebSocket close handshake timed out after another error.
    pub ws_close_timeout: bool,
}

/// The `Date` value used until the shell sets one.
const EPOCH_DATE: &[u8; 29] = b"Thu, 01 Jan 1970 00:00:00 GMT";

/// Where the request reader is.
#[derive(Debug)]
enum Reading {
    /// Waiting for (the rest of) a request head.
    ExpectHead {
        scanner: Scanner,
        /// When the first byte of this head was seen.
        started: Option<Instant>,
    },
    /// Reading a request body.
    InBody {
        decoder: Decoder,
        /// When the body started, moved later by the time it was paused.
        started: Instant,
        received: u64,
        /// The destination stopped taking the body at this instant
        /// ([`ServerConn::set_body_paused`]): the minimum-rate clock stands.
        paused: Option<Instant>,
    },
    /// A WebSocket upgrade request waits for `Accept` or a refusal; the
    /// bytes after it belong to the next protocol.
    AwaitUpgrade,
    /// No more requests are read on this connection.
    Stopped,
}

/// A request that has been parsed (or failed) and waits for its response.
#[derive(Debug)]
struct Pending {
    version: Version,
    head_only: bool,
    keep_alive: bool,
    body_done: bool,
    upgrade: Option<Box<crate::event::WsHandshake>>,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The right side answers it.
    Forwarded,
    /// `H` answers it with this error, then closes.
    Failed(ParseError),
    /// Nobody answers it (the client went away mid-request).
    Abandoned,
}

/// How the body of the streamed response in progress is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyOut {
    /// No body on the wire (HEAD, 204, 304): pieces are dropped.
    Discard,
    /// `Content-Length`: this many bytes are still owed.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Close-delimited (an HTTP/1.0 client and an unknown length).
    UntilClose,
}

/// One HTTP/1.1 (+ WebSocket) server connection.
#[derive(Debug)]
pub struct ServerConn {
    limits: Arc<Limits>,
    input: BytesMut,
    out: OutBuf,
    reading: Reading,
    in_flight: VecDeque<Pending>,
    events: VecDeque<Event>,
    date: [u8; 29],
    requests: u64,
    opened: Instant,
    idle_since: Instant,
    eof: bool,
    draining: bool,
    /// A terminal event (End or Abort) has been queued.
    finished: bool,
    shutdown: Option<Shutdown>,
    ws: Option<Box<WsConn>>,
    /// Reading paused at least once because `max_pipelined` requests waited.
    pipeline_limit_hit: bool,
    /// A streamed response ([`Reply::Head`]) whose body is still being sent.
    stream: Option<BodyOut>,
}

impl ServerConn {
    /// A new connection accepted at `now`, with no memory budget.
    pub fn new(limits: Arc<Limits>, now: Instant) -> Self {
        Self::with_account(limits, Account::default(), now)
    }

    /// A new connection accepted at `now` whose buffers draw on `budget`
    /// (`server.memory_budget`, shared by all connections of the process).
    pub fn with_budget(limits: Arc<Limits>, budget: Arc<MemoryBudget>, now: Instant) -> Self {
        Self::with_account(limits, Account::new(budget), now)
    }

    fn with_account(limits: Arc<Limits>, account: Account, now: Instant) -> Self {
        Self {
            limits,
            input: BytesMut::new(),
            out: OutBuf::with_account(account),
            reading: Reading::ExpectHead {
                scanner: Scanner::new(),
                started: None,
            },
            in_flight: VecDeque::new(),
            events: VecDeque::new(),
            date: *EPOCH_DATE,
            requests: 0,
            opened: now,
            idle_since: now,
            eof: false,
            draining: false,
            finished: false,
            shutdown: None,
            ws: None,
            pipeline_limit_hit: false,
            stream: None,
        }
    }

    /// Sets the `Date` value (an IMF-fixdate, 29 bytes) for the responses
    /// encoded from now on; other lengths are ignored.
    pub fn set_date(&mut self, date: &[u8]) {
        if let Ok(d) = <[u8; 29]>::try_from(date) {
            self.date = d;
        }
    }

    // ----- inputs -------------------------------------------------------

    /// Bytes from the client. They are charged to the memory budget
    /// before they are buffered; when the budget cannot hold them the
    /// connection is refused (503 and close, or WebSocket close 1009) and
    /// they are dropped. A WebSocket charges each buffer it grows, by its
    /// new capacity, before growing it ([`WsConn::handle_input`]).
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        if self.ws.is_none() && matches!(self.reading, Reading::Stopped) {
            return;
        }
        if let Some(ws) = self.ws.as_mut() {
            ws.handle_input(data, now, &mut self.out);
            self.sync_budget();
            return;
        }
        if !self.grow_input(data.len()) {
            self.refuse_inbound(now);
            self.sync_budget();
            return;
        }
        self.input.extend_from_slice(data);
        self.advance(now);
        // A request body that ends after its streamed response did ends
        // the connection.
        self.check_done();
        self.sync_budget();
    }

    /// Makes room for `additional` more input bytes: in place when the
    /// buffer has (or can cheaply reclaim) it, else in a new buffer whose
    /// capacity is charged before it is allocated. False when the budget
    /// cannot hold it (nothing is allocated then).
    ///
    /// A reclaim takes back the whole allocation that polled heads and
    /// bodies were split from (no longer charged here while the
    /// application held them), so it is charged too; when the budget
    /// cannot hold it, it is let go for a new buffer of the usual size.
    fn grow_input(&mut self, additional: usize) -> bool {
        let (len, cap) = (self.input.len(), self.input.capacity());
        if cap.saturating_sub(len) >= additional {
            return true;
        }
        if self.input.try_reclaim(additional) {
            let want = self.footprint();
            if self.out.account_mut().try_set(want) {
                return true;
            }
        }
        // What the input holds now: the reclaimed allocation, if any, is
        // replaced (or, on refusal, dropped by the caller).
        let held_now = self.input.capacity();
        let target = len.saturating_add(additional).max(cap.saturating_mul(2));
        let want = self
            .footprint()
            .saturating_sub(held_now)
            .saturating_add(target);
        if !self.out.account_mut().try_set(want) {
            return false;
        }
        let mut grown = BytesMut::with_capacity(target);
        grown.extend_from_slice(&self.input);
        self.input = grown;
        true
    }

    /// The budget cannot hold the client's input: refuse this connection.
    fn refuse_inbound(&mut self, now: Instant) {
        if let Some(ws) = self.ws.as_mut() {
            ws.refuse_inbound(now, &mut self.out);
            return;
        }
        self.input = BytesMut::new();
        self.fail(ParseError::MemoryBudget, now);
    }

    /// The bytes this connection keeps allocated for its buffers (what it
    /// charges to the budget): capacities, not lengths, so the budget
    /// holds in resident memory and not only in payload bytes.
    pub fn footprint(&self) -> usize {
        let ws = self.ws.as_ref().map_or(0, |ws| ws.footprint());
        self.input
            .capacity()
            .saturating_add(self.out.footprint())
            .saturating_add(ws)
    }

    /// Bytes this connection holds in the memory budget.
    pub fn budget_held(&self) -> usize {
        self.out.account().held()
    }

    /// Sets the reservation to the footprint; false when it could not grow
    /// (the reservation then stays below what is buffered).
    fn sync_budget(&mut self) -> bool {
        let f = self.footprint();
        self.out.account_mut().try_set(f)
    }

    /// The client half-closed its side (EOF on read).
    pub fn handle_eof(&mut self, now: Instant) {
        if self.eof {
            return;
        }
        self.eof = true;
        if let Some(ws) = self.ws.as_mut() {
            ws.handle_eof(now, &mut self.out);
        } else {
            self.advance(now);
            self.check_done();
        }
        self.sync_budget();
    }

    /// Fires the deadlines that have passed at `now`; a spurious call does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fire_timeouts(now);
        self.sync_budget();
    }

    fn fire_timeouts(&mut self, now: Instant) {
        if self.shutdown == Some(Shutdown::Abort) {
            return;
        }
        // A client that does not read is dropped even when the connection
        // was already closing (its last response may never be taken).
        if self.shutdown.is_some() {
            if self.timers().is_expired(Timer::WriteStall, now) {
                self.abort_now("write_timeout");
            }
            return;
        }
        let table = self.timers();
        for timer in table.expired(now).collect::<Vec<_>>() {
            match timer {
                Timer::WriteStall => {
                    self.abort_now("write_timeout");
                    return;
                }
                Timer::HeadRead => {
                    if self.input.is_empty() {
                        // Not a byte arrived: just close.
                        self.stop_quietly("head_timeout");
                    } else {
                        self.fail(ParseError::HeadTimeout, now);
                    }
                }
                Timer::KeepAliveIdle => self.stop_quietly("keepalive_timeout"),
                Timer::BodyRate => self.fail(ParseError::BodyTooSlow, now),
                _ => {}
            }
        }
        if let Some(ws) = self.ws.as_mut() {
            ws.handle_timeout(now, &mut self.out);
        }
    }

    /// The destination of the request body in progress stopped taking it
    /// (`paused`: its bounded queue is full, so the shell stops reading)
    /// or takes it again. While paused the body's minimum-rate deadline
    /// (`body_min_rate` after `body_rate_grace`, 408) stands still: the
    /// client is not the one holding the body up, and the destination's
    /// own timeout decides (the proxy answers 504). On resume the clock
    /// goes on from where it stood. Outside a request body this does
    /// nothing.
    pub fn set_body_paused(&mut self, paused: bool, now: Instant) {
        if let Reading::InBody {
            started,
            paused: at,
            ..
        } = &mut self.reading
        {
            match (paused, *at) {
                (true, None) => *at = Some(now),
                (false, Some(since)) => {
                    let stood = now.saturating_duration_since(since);
                    *started = started.checked_add(stood).unwrap_or(*started);
                    *at = None;
                }
                _ => {}
            }
        }
    }

    /// True while a request body is paused ([`ServerConn::set_body_paused`]).
    pub fn body_paused(&self) -> bool {
        matches!(
            self.reading,
            Reading::InBody {
                paused: Some(_),
                ..
            }
        )
    }

    /// Graceful shutdown of the server: finish what is in progress, answer
    /// it with `Connection: close`, close idle keep-alive connections, and
    /// send WebSocket close 1001.
    pub fn start_drain(&mut self, now: Instant) {
        self.draining = true;
        if let Some(ws) = self.ws.as_mut() {
            // An error here means the close handshake already started.
            let _ = ws.send_close(1001, "going away", now, &mut self.out);
            return;
        }
        self.stop_if_draining_and_idle();
        self.check_done();
    }

    /// While draining, no new request starts once the reader is between requests.
    fn stop_if_draining_and_idle(&mut self) {
        if self.draining
            && matches!(self.reading, Reading::ExpectHead { .. })
            && self.input.is_empty()
        {
            self.reading = Reading::Stopped;
        }
    }

    // ----- outputs ------------------------------------------------------

    /// The next right-bound event.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(ev) = self.events.pop_front() {
            return Some(ev);
        }
        let ev = self.ws.as_mut().and_then(|ws| ws.poll_event());
        if ev.is_some() {
            // A polled message is the application's now.
            self.sync_budget();
        }
        ev
    }

    /// The first contiguous run of bytes waiting to be written to the
    /// client: all of them, unless a shared WebSocket payload is queued
    /// (see [`ServerConn::output_slices`]).
    pub fn output(&self) -> &[u8] {
        self.out.as_slice()
    }

    /// Fills `dst` with all the pending output, in order, for one vectored
    /// write; returns how many slices were filled.
    pub fn output_slices<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        self.out.io_slices(dst)
    }

    /// Number of bytes waiting to be written.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// The client took `n` bytes of the output.
    pub fn handle_written(&mut self, n: usize, now: Instant) {
        let was_full = self.out.len() >= OUTPUT_HIGH_WATER;
        self.out.consume(n, now);
        if was_full && self.out.len() < OUTPUT_HIGH_WATER && self.ws.is_none() {
            // Pipelined requests parked behind the backlog may go on.
            self.advance(now);
            self.check_done();
        }
        self.sync_budget();
    }

    /// The earliest deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = self.timers().next();
        let ws = self.ws.as_ref().and_then(|ws| ws.poll_timeout());
        match (own, ws) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the shell should read from the socket now.
    pub fn wants_read(&self) -> bool {
        if self.shutdown.is_some() || self.eof {
            return false;
        }
        if let Some(ws) = self.ws.as_ref() {
            return ws.wants_read();
        }
        match self.reading {
            Reading::ExpectHead { .. } => {
                self.in_flight.len() < self.limits.max_pipelined
                    && self.out.len() < OUTPUT_HIGH_WATER
            }
            Reading::InBody { .. } => true,
            Reading::AwaitUpgrade | Reading::Stopped => false,
        }
    }

    /// What to do with the socket once [`ServerConn::output`] is flushed
    /// (`Abort`: at once). `None` while the connection goes on.
    pub fn shutdown(&self) -> Option<Shutdown> {
        self.shutdown
            .or_else(|| self.ws.as_ref().and_then(|ws| ws.shutdown()))
    }

    /// True when this connection will never read another byte although it
    /// may still owe output (the shell may `shutdown(SHUT_RD)`).
    pub fn read_closed(&self) -> bool {
        self.ws.is_none() && matches!(self.reading, Reading::Stopped)
    }

    /// True while a streamed response's body is being sent (between
    /// [`Reply::Head`] and [`Reply::EndOfBody`]).
    pub fn is_streaming(&self) -> bool {
        self.stream.is_some()
    }

    /// Whether the shell should hand over more pieces of a streamed body
    /// now: false while [`OUTPUT_HIGH_WATER`] bytes wait for the client, so
    /// a slow client slows the source instead of growing the buffer.
    pub fn wants_body(&self) -> bool {
        self.out.len() < OUTPUT_HIGH_WATER
    }

    /// True once the connection speaks WebSocket.
    pub fn is_websocket(&self) -> bool {
        self.ws.is_some()
    }

    /// Number of requests parsed so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The limits this connection ran into that no `Abort` event reported
    /// (for metrics).
    pub fn limits_reached(&self) -> LimitsReached {
        LimitsReached {
            max_pipelined: self.pipeline_limit_hit,
            max_requests_per_connection: self.requests >= self.limits.max_requests_per_connection,
            ws_close_timeout: self.ws.as_ref().is_some_and(|ws| ws.close_timed_out_late()),
        }
    }

    // ----- replies from the right ---------------------------------------

    /// Queues a reply. Responses answer the oldest request without one.
    ///
    /// Output is charged to the memory budget: a WebSocket message that
    /// the budget cannot hold is dropped and the socket closed with 1008;
    /// an HTTP response it cannot hold aborts the connection. Neither is
    /// the caller's error.
    pub fn send(&mut self, reply: Reply, now: Instant) -> Result<(), SendError> {
        if let (Reply::Ws(msg), Some(ws)) = (&reply, self.ws.as_ref()) {
            let payload = crate::ws::payload_len(msg);
            let header = crate::ws::frame_len(msg).saturating_sub(payload);
            let want = self
                .footprint()
                .saturating_sub(self.out.footprint())
                .saturating_add(self.out.footprint_with(header, payload));
            if ws.can_queue() && !self.out.account_mut().try_set(want) {
                if let Some(ws) = self.ws.as_mut() {
                    ws.refuse_outbound(now, &mut self.out);
                }
                self.sync_budget();
                return Ok(());
            }
        }
        // HTTP output (a response, or the 101 that opens a WebSocket) is
        // charged once written: what the budget cannot hold is dropped.
        // A WebSocket message was charged above; what may still trail is
        // the close frame of a refusal.
        let http = self.ws.is_none();
        let res = self.send_unbudgeted(reply, now);
        if !self.sync_budget() && http {
            self.out.clear();
            self.abort_now("memory_budget");
            self.sync_budget();
        }
        res
    }

    fn send_unbudgeted(&mut self, reply: Reply, now: Instant) -> Result<(), SendError> {
        if self.shutdown == Some(Shutdown::Abort) {
            return Err(SendError::Closed);
        }
        let streamed = matches!(reply, Reply::Chunk(_) | Reply::EndOfBody);
        if self.stream.is_some() != streamed
            && matches!(
                reply,
                Reply::Response(_)
                    | Reply::Head(_)
                    | Reply::Accept { .. }
                    | Reply::Chunk(_)
                    | Reply::EndOfBody
            )
        {
            return Err(SendError::StreamState);
        }
        match reply {
            Reply::Response(resp) => self.send_response(resp, now),
            Reply::Head(head) => self.send_head(head, now),
            Reply::Chunk(data) => self.send_chunk(&data, now),
            Reply::EndOfBody => self.end_body(now),
            Reply::Accept { protocol, headers } => self.accept_websocket(protocol, headers, now),
            Reply::Ws(msg) => match self.ws.as_mut() {
                Some(ws) => ws.send_message(msg, now, &mut self.out),
                None => Err(SendError::NotWebSocket),
            },
            Reply::WsClose { code, reason } => match self.ws.as_mut() {
                Some(ws) => ws.send_close(code, &reason, now, &mut self.out),
                None => Err(SendError::NotWebSocket),
            },
            Reply::Close => {
                if let Some(ws) = self.ws.as_mut() {
                    return ws.send_close(1000, "", now, &mut self.out);
                }
                self.reading = Reading::Stopped;
                self.check_done();
                Ok(())
            }
            Reply::Abort => {
                self.abort_now("aborted_by_destination");
                Ok(())
            }
        }
    }

    fn send_response(&mut self, resp: Response, now: Instant) -> Result<(), SendError> {
        let Some(front) = self.in_flight.front() else {
            return Err(SendError::NoRequestPending);
        };
        if front.outcome != Outcome::Forwarded {
            return Err(SendError::NoRequestPending);
        }
        if !(100..=999).contains(&resp.status) || resp.status == 101 {
            return Err(SendError::InvalidStatus);
        }
        encode::validate_headers(&resp.headers)?;
        self.out.mark_pending(now);
        if resp.status < 200 {
            encode::encode_interim(self.out.vec_mut(), resp.status, &resp.headers);
            return Ok(());
        }
        let Some(entry) = self.in_flight.pop_front() else {
            return Err(SendError::NoRequestPending);
        };
        // A response before the whole body arrived, or to a refused upgrade,
        // ends the connection: the bytes after it cannot be trusted. A
        // destination asks for the same with `Connection: close`.
        if !entry.body_done || entry.upgrade.is_some() || asks_close(&resp.headers) {
            self.reading = Reading::Stopped;
        }
        self.stop_if_draining_and_idle();
        let conn = if self.is_last_response() || !entry.keep_alive {
            ConnHeader::Close
        } else if entry.version == Version::Http10 {
            ConnHeader::KeepAlive
        } else {
            ConnHeader::None
        };
        if conn == ConnHeader::Close {
            self.reading = Reading::Stopped;
        }
        encode::encode_response(self.out.vec_mut(), &resp, &self.date, conn, entry.head_only);
        if self.in_flight.is_empty() {
            self.idle_since = now;
        }
        self.flush_front(now);
        self.advance(now);
        self.check_done();
        Ok(())
    }

    /// The head of a streamed response; see [`Reply::Head`].
    fn send_head(&mut self, head: ResponseHead, now: Instant) -> Result<(), SendError> {
        let Some(front) = self.in_flight.front() else {
            return Err(SendError::NoRequestPending);
        };
        if front.outcome != Outcome::Forwarded {
            return Err(SendError::NoRequestPending);
        }
        if !(200..=999).contains(&head.status) {
            return Err(SendError::InvalidStatus);
        }
        encode::validate_headers(&head.headers)?;
        let Some(entry) = self.in_flight.pop_front() else {
            return Err(SendError::NoRequestPending);
        };
        self.out.mark_pending(now);
        // A streamed response may start before the request body is complete
        // (a proxied upstream that answers early, or full duplex): the body
        // is still read to its end (its events go on), then the connection
        // closes, since the reader stops after a body with no request left.
        let body_pending = !entry.body_done && matches!(self.reading, Reading::InBody { .. });
        if entry.upgrade.is_some()
            || (!body_pending && (!entry.body_done || asks_close(&head.headers)))
        {
            self.reading = Reading::Stopped;
        }
        self.stop_if_draining_and_idle();
        let no_body = encode::status_has_no_body(head.status);
        let (framing, body) = if no_body || entry.head_only {
            match head.content_length {
                // HEAD tells the length GET would have had.
                Some(n) if !no_body => (StreamFraming::Length(n), BodyOut::Discard),
                _ => (StreamFraming::None, BodyOut::Discard),
            }
        } else {
            match head.content_length {
                Some(n) => (StreamFraming::Length(n), BodyOut::Length(n)),
                None if entry.version == Version::Http11 => {
                    (StreamFraming::Chunked, BodyOut::Chunked)
                }
                None => {
                    // HTTP/1.0 has no chunked coding: the close ends the body.
                    if !body_pending {
                        self.reading = Reading::Stopped;
                    }
                    (StreamFraming::None, BodyOut::UntilClose)
                }
            }
        };
        let until_close = body == BodyOut::UntilClose;
        let conn = if body_pending || until_close || self.is_last_response() || !entry.keep_alive {
            ConnHeader::Close
        } else if entry.version == Version::Http10 {
            ConnHeader::KeepAlive
        } else {
            ConnHeader::None
        };
        if conn == ConnHeader::Close && !body_pending {
            self.reading = Reading::Stopped;
        }
        encode::encode_stream_head(
            self.out.vec_mut(),
            head.status,
            &head.headers,
            &self.date,
            conn,
            framing,
        );
        self.stream = Some(body);
        Ok(())
    }

    /// One piece of the streamed body.
    fn send_chunk(&mut self, data: &[u8], now: Instant) -> Result<(), SendError> {
        let Some(body) = self.stream.as_mut() else {
            return Err(SendError::StreamState);
        };
        if data.is_empty() {
            return Ok(());
        }
        match body {
            BodyOut::Discard => return Ok(()),
            BodyOut::Length(remaining) => {
                let n = data.len() as u64;
                if n > *remaining {
                    self.abort_now("stream_length_mismatch");
                    return Err(SendError::BodyLength);
                }
                *remaining -= n;
                self.out.mark_pending(now);
                self.out.vec_mut().extend_from_slice(data);
            }
            BodyOut::Chunked => {
                self.out.mark_pending(now);
                encode::encode_chunk(self.out.vec_mut(), data);
            }
            BodyOut::UntilClose => {
                self.out.mark_pending(now);
                self.out.vec_mut().extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// The end of the streamed body: what was parsed behind it may go on.
    fn end_body(&mut self, now: Instant) -> Result<(), SendError> {
        match self.stream.take() {
            None => return Err(SendError::StreamState),
            Some(BodyOut::Length(remaining)) if remaining > 0 => {
                self.abort_now("stream_length_mismatch");
                return Err(SendError::BodyLength);
            }
            Some(BodyOut::Chunked) => {
                self.out.mark_pending(now);
                self.out.vec_mut().extend_from_slice(encode::LAST_CHUNK);
            }
            Some(_) => {}
        }
        if self.in_flight.is_empty() {
            self.idle_since = now;
        }
        self.flush_front(now);
        self.advance(now);
        self.check_done();
        Ok(())
    }

    fn accept_websocket(
        &mut self,
        protocol: Option<String>,
        headers: Vec<Header>,
        now: Instant,
    ) -> Result<(), SendError> {
        let Some(front) = self.in_flight.front() else {
            return Err(SendError::NoRequestPending);
        };
        let Some(hs) = front.upgrade.as_ref() else {
            return Err(SendError::NotAnUpgrade);
        };
        if let Some(p) = &protocol {
            if !hs.protocols.iter().any(|o| o == p) {
                return Err(SendError::NotAnUpgrade);
            }
        }
        encode::validate_headers(&headers)?;
        let accept = ws::accept_key(&hs.key);
        let deflate = hs.deflate.filter(|_| self.limits.ws.compression);
        self.in_flight.pop_front();
        // No request follows an upgrade: an idle WebSocket keeps no
        // room for them (part of its memory, DESIGN §10).
        self.in_flight = VecDeque::new();
        self.out.mark_pending(now);
        let out = self.out.vec_mut();
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
        out.extend_from_slice(accept.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(p) = &protocol {
            encode::push_header(out, b"Sec-WebSocket-Protocol", p.as_bytes());
        }
        if let Some(params) = &deflate {
            let value = ws::extension::response_value(params);
            encode::push_header(out, b"Sec-WebSocket-Extensions", value.as_bytes());
        }
        for h in &headers {
            // The codec answers the extension offer itself.
            if deflate.is_some() && h.is("sec-websocket-extensions") {
                continue;
            }
            encode::push_header(out, &h.name, &h.value);
        }
        out.extend_from_slice(b"\r\n");
        self.events.push_back(Event::Upgraded { protocol });
        let mut ws = Box::new(WsConn::with_deflate(self.limits.ws.clone(), deflate, now));
        let leftover = self.input.split();
        self.input = BytesMut::new();
        if !leftover.is_empty() {
            ws.handle_input(&leftover, now, &mut self.out);
        }
        if self.eof {
            ws.handle_eof(now, &mut self.out);
        }
        if self.draining {
            let _ = ws.send_close(1001, "going away", now, &mut self.out);
        }
        self.reading = Reading::Stopped;
        self.ws = Some(ws);
        Ok(())
    }

    // ----- internals ----------------------------------------------------

    /// Parses as far as the buffered input, the pipelining limit and the
    /// state allow.
    fn advance(&mut self, now: Instant) {
        while self.shutdown.is_none() && self.ws.is_none() && !self.finished {
            match &mut self.reading {
                Reading::ExpectHead { scanner, started } => {
                    if self.in_flight.len() >= self.limits.max_pipelined {
                        self.pipeline_limit_hit |= !self.input.is_empty();
                        return;
                    }
                    if self.out.len() >= OUTPUT_HIGH_WATER {
                        return;
                    }
                    if self.input.is_empty() {
                        if self.eof {
                            self.finish(Event::End);
                        }
                        return;
                    }
                    if started.is_none() {
                        *started = Some(now);
                    }
                    let limits = ScanLimits {
                        max_request_line: Some(self.limits.max_request_line),
                        max_field_bytes: self.limits.max_header_bytes,
                        max_fields: self.limits.max_headers,
                        too_large: ParseError::HeadersTooLarge,
                    };
                    match scanner.scan(&self.input, &limits) {
                        Err(e) => return self.fail(e, now),
                        Ok(None) => {
                            if self.eof {
                                self.reading = Reading::Stopped;
                                self.finish(Event::Abort(AbortReason {
                                    reason: "incomplete_head",
                                    status: None,
                                }));
                            }
                            return;
                        }
                        Ok(Some(span)) => {
                            let head = self.input.split_to(span.len).freeze();
                            match request::parse(head, &span, &self.limits) {
                                Err(e) => return self.fail(e, now),
                                Ok(parsed) => self.start_request(parsed, now),
                            }
                        }
                    }
                }
                Reading::InBody {
                    decoder, received, ..
                } => {
                    let limits = DecodeLimits {
                        max_body: self.limits.max_body,
                        max_chunk_extension: self.limits.max_chunk_extension,
                        max_trailer_bytes: self.limits.max_trailer_bytes,
                        max_trailers: self.limits.max_headers,
                    };
                    match decoder.decode(&mut self.input, &limits) {
                        Err(e) => return self.fail(e, now),
                        Ok(Decoded::Data(b)) => {
                            *received = received.saturating_add(b.len() as u64);
                            self.events.push_back(Event::Body(b));
                        }
                        Ok(Decoded::Done(trailers)) => {
                            self.events.push_back(Event::EndOfMessage { trailers });
                            let (keep_alive, upgrade) = match self.in_flight.back_mut() {
                                Some(p) => {
                                    p.body_done = true;
                                    (p.keep_alive, p.upgrade.is_some())
                                }
                                None => (false, false),
                            };
                            self.reading = next_reading(keep_alive && !self.draining, upgrade);
                            self.stop_if_draining_and_idle();
                        }
                        Ok(Decoded::NeedMore) => {
                            if self.eof {
                                if let Some(p) = self.in_flight.back_mut() {
                                    p.outcome = Outcome::Abandoned;
                                }
                                self.reading = Reading::Stopped;
                                self.finish(Event::Abort(AbortReason {
                                    reason: "incomplete_body",
                                    status: None,
                                }));
                                self.flush_front(now);
                            }
                            return;
                        }
                    }
                }
                Reading::AwaitUpgrade | Reading::Stopped => {
                    if self.eof {
                        self.finish(Event::End);
                    }
                    return;
                }
            }
        }
    }

    fn start_request(&mut self, parsed: request::ParsedHead, now: Instant) {
        self.requests = self.requests.saturating_add(1);
        let head = parsed.head;
        let keep_alive = head.keep_alive
            && self.requests < self.limits.max_requests_per_connection
            && !self.draining;
        let body_done = parsed.body == BodyKind::Empty;
        self.in_flight.push_back(Pending {
            version: head.version,
            head_only: head.method == crate::Method::Head,
            keep_alive,
            body_done,
            upgrade: head.websocket.clone(),
            outcome: Outcome::Forwarded,
        });
        // Not in the middle of a streamed body (the client then sends its
        // body after its own 100-continue timeout).
        if parsed.expect_continue && self.in_flight.len() == 1 && self.stream.is_none() {
            // Charged if it can be (the client may not have read earlier
            // responses): past the budget only these 25 bytes trail it.
            self.out
                .extend_charged(&[b"HTTP/1.1 100 Continue\r\n\r\n"], now);
        }
        let upgrade = head.websocket.is_some();
        self.events.push_back(Event::Request(head));
        self.reading = match parsed.body {
            BodyKind::Empty => {
                self.events.push_back(Event::EndOfMessage {
                    trailers: Vec::new(),
                });
                next_reading(keep_alive, upgrade)
            }
            BodyKind::Length(n) => Reading::InBody {
                decoder: Decoder::length(n),
                started: now,
                received: 0,
                paused: None,
            },
            BodyKind::Chunked => Reading::InBody {
                decoder: Decoder::chunked(),
                started: now,
                received: 0,
                paused: None,
            },
        };
    }

    /// The peer broke a rule: answer `err` after what is owed, then close.
    fn fail(&mut self, err: ParseError, now: Instant) {
        let in_body = matches!(self.reading, Reading::InBody { .. });
        self.reading = Reading::Stopped;
        match self.in_flight.back_mut() {
            Some(p) if in_body => p.outcome = Outcome::Failed(err),
            _ => self.in_flight.push_back(Pending {
                version: Version::Http11,
                head_only: false,
                keep_alive: false,
                body_done: true,
                upgrade: None,
                outcome: Outcome::Failed(err),
            }),
        }
        self.finish(Event::Abort(AbortReason {
            reason: err.reason(),
            status: Some(err.status()),
        }));
        self.flush_front(now);
        self.check_done();
    }

    /// Writes the answers `H` owes itself at the front of the queue (not
    /// in the middle of a streamed body: they wait for its end).
    fn flush_front(&mut self, now: Instant) {
        if self.stream.is_some() {
            return;
        }
        while let Some(front) = self.in_flight.front() {
            let head_only = front.head_only;
            match front.outcome {
                Outcome::Forwarded => return,
                Outcome::Abandoned => {}
                Outcome::Failed(err) => {
                    let status = err.status();
                    let mut headers = vec![Header::new(
                        &b"Content-Type"[..],
                        &b"text/plain; charset=utf-8"[..],
                    )];
                    if err == ParseError::UnsupportedWebSocketVersion {
                        headers.push(Header::new(&b"Sec-WebSocket-Version"[..], &b"13"[..]));
                    }
                    let body = format!("{} {}: {}\n", status, encode::reason_phrase(status), err);
                    let resp = Response::new(status, headers, body);
                    // Encoded apart, then copied in one growth that is
                    // charged if it can be: this may be the 503 of a
                    // refusal, behind a large unwritten response.
                    let mut wire = Vec::new();
                    encode::encode_response(
                        &mut wire,
                        &resp,
                        &self.date,
                        ConnHeader::Close,
                        head_only,
                    );
                    self.out.extend_charged(&[&wire], now);
                }
            }
            self.in_flight.pop_front();
            self.reading = Reading::Stopped;
            self.in_flight.clear();
        }
        self.check_done();
    }

    /// Queues the single terminal event.
    fn finish(&mut self, ev: Event) {
        if !self.finished {
            self.finished = true;
            self.events.push_back(ev);
        }
    }

    fn stop_quietly(&mut self, reason: &'static str) {
        self.reading = Reading::Stopped;
        self.finish(Event::Abort(AbortReason {
            reason,
            status: None,
        }));
        self.check_done();
    }

    fn abort_now(&mut self, reason: &'static str) {
        self.finish(Event::Abort(AbortReason {
            reason,
            status: None,
        }));
        self.shutdown = Some(Shutdown::Abort);
    }

    /// True when the response being written is the last on this connection.
    fn is_last_response(&self) -> bool {
        self.in_flight.is_empty()
            && (matches!(self.reading, Reading::Stopped) || (self.eof && self.input.is_empty()))
    }

    /// Decides the graceful end once nothing more is owed.
    fn check_done(&mut self) {
        if self.shutdown.is_some()
            || self.ws.is_some()
            || !self.in_flight.is_empty()
            || self.stream.is_some()
        {
            return;
        }
        let idle_head = matches!(self.reading, Reading::ExpectHead { .. }) && self.input.is_empty();
        if matches!(self.reading, Reading::Stopped) || (self.eof && idle_head) {
            self.shutdown = Some(Shutdown::Graceful);
        }
    }

    /// The deadlines armed in the current state.
    fn timers(&self) -> TimerTable {
        let mut t = TimerTable::default();
        if self.shutdown == Some(Shutdown::Abort) {
            return t;
        }
        t.set_opt(
            Timer::WriteStall,
            self.out.stall_deadline(self.limits.write_timeout),
        );
        if self.shutdown.is_some() || self.ws.is_some() {
            return t;
        }
        match &self.reading {
            Reading::ExpectHead { started, .. } => {
                if let Some(s) = started {
                    t.set_opt(Timer::HeadRead, s.checked_add(self.limits.head_timeout));
                } else if self.in_flight.is_empty() && self.stream.is_none() {
                    if self.requests == 0 {
                        t.set_opt(
                            Timer::HeadRead,
                            self.opened.checked_add(self.limits.head_timeout),
                        );
                    } else {
                        t.set_opt(
                            Timer::KeepAliveIdle,
                            self.idle_since.checked_add(self.limits.keepalive_timeout),
                        );
                    }
                }
            }
            Reading::InBody {
                started,
                received,
                paused: None,
                ..
            } => {
                if let Some(allowed_ms) = received
                    .saturating_mul(1000)
                    .checked_div(self.limits.body_min_rate)
                {
                    let at = started
                        .checked_add(self.limits.body_rate_grace)
                        .and_then(|s| s.checked_add(Duration::from_millis(allowed_ms)));
                    t.set_opt(Timer::BodyRate, at);
                }
            }
            Reading::InBody {
                paused: Some(_), ..
            }
            | Reading::AwaitUpgrade
            | Reading::Stopped => {}
        }
        t
    }
}

/// True when a destination's response carries `Connection: close`.
fn asks_close(headers: &[Header]) -> bool {
    headers.iter().any(|h| {
        h.is("connection")
            && request::list_items(&h.value).any(|t| t.eq_ignore_ascii_case(b"close"))
    })
}

/// The reader state after a complete request message.
fn next_reading(keep_alive: bool, upgrade: bool) -> Reading {
    if upgrade {
        Reading::AwaitUpgrade
    } else if keep_alive {
        Reading::ExpectHead {
            scanner: Scanner::new(),
            started: None,
        }
    } else {
        Reading::Stopped
    }
}
