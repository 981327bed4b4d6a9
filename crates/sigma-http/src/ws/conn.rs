//! One open server-side WebSocket: frames in, events out, frames back
//! (RFC 6455 §5–§7).
//!
//! Place in `T → H → A`: inside `H`, after the 101 response. The left side
//! takes the client's bytes ([`WsConn::handle_input`]) and appends our frames
//! to the connection's [`OutBuf`]; the right side hands complete, validated
//! messages, pings and the close to `A` as [`Event`]s and takes messages
//! and closes back ([`WsConn::send_message`], [`WsConn::send_close`]).
//!
//! Invariants: every byte is parsed once, as it arrives (headers through
//! a 14-byte decoder, payloads unmasked, UTF-8-checked and appended in one
//! pass), so text is rejected on the first impossible byte even mid-frame;
//! the message buffer never exceeds `max_message`, control payloads never
//! exceed 125 bytes, at most [`MAX_QUEUED_EVENTS`] events wait unpolled
//! (past that the rest of a read is parked and [`WsConn::wants_read`] is
//! false), and the outbound queue never exceeds `max_outbound` except by
//! one frame queued while it was empty (a message may be larger than the
//! backlog allowance) and the one close frame that reports the breach.
//!
//! Ordering: a close frame that answers input (our reply to the client's
//! close, or the close that reports a protocol error) is held until the
//! application has polled the events before it, so the replies to earlier
//! messages go out first (Autobahn 3.x, 4.x, 7.1.x). While one is held,
//! [`WsConn::poll_timeout`] returns an instant already passed, and the next
//! [`WsConn::handle_timeout`] (or `handle_input`, `handle_eof`) queues it;
//! [`WsConn::send_message`] does not, and is still accepted until then.
//! Pongs are queued at once. The shell must drain [`WsConn::poll_event`]
//! before acting on [`WsConn::shutdown`].
//!
//! Keepalive: a ping after `ping_interval` without a complete frame from
//! the client, then every `ping_interval`; close 1001 after `idle_timeout`
//! without one (a frame trickling in does not count until complete).
//!
//! permessage-deflate ([`WsConn::with_deflate`]): RSV1 on the first frame
//! marks a compressed message, inflated as it arrives (`deflate.rs`); the
//! inflated size counts against `max_message` as it grows (a bomb is a 1009
//! after at most that much output), text is validated on it, and the
//! decompressor lives (charged) only while the message arrives. Outbound
//! data messages go out compressed, control frames never.
//!
//! Not here: the opening handshake (`handshake.rs`, `extension.rs`), socket
//! IO, the clock, the slow-read (write stall) deadline, which the
//! connection owning the `OutBuf` enforces, and fragmenting outbound
//! messages.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::close;
use super::deflate::{self, Inflater, INFLATER_FOOTPRINT, INFLATE_CHUNK, TAIL};
use super::error::ProtocolError;
use super::frame::{encode_header, FrameHeader, HeaderDecoder, OpCode, MAX_CONTROL_PAYLOAD};
use super::mask::apply_mask;
use super::message::{append_inflated, message_capacity, Partial};
use super::utf8::Utf8Validator;
use crate::error::SendError;
use crate::event::Shutdown;
use crate::event::{AbortReason, DeflateParams, Event, WsEvent, WsMessage};
use crate::io::OutBuf;
use crate::limits::WsLimits;
use crate::timer::{Timer, TimerTable};

/// Unpolled events past which parsing pauses and [`WsConn::wants_read`] is false.
pub const MAX_QUEUED_EVENTS: usize = 64;

/// Text payload is unmasked through a scratch buffer of at most this size.
const UNMASK_CHUNK: usize = 4096;

/// Abort label: no frame for `idle_timeout` (we sent 1001).
pub const ABORT_IDLE_TIMEOUT: &str = "ws_idle_timeout";
/// Abort label: the close handshake did not finish within `close_timeout`.
pub const ABORT_CLOSE_TIMEOUT: &str = "ws_close_timeout";
/// Abort label: the client's stream ended without a close frame.
pub const ABORT_EOF: &str = "ws_eof_before_close";

/// A close frame we owe, held until the application has polled `after` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeldClose {
    code: Option<u16>,
    reason: &'static str,
    after: u64,
}

/// Where the close handshake stands; each state names what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Messages flow both ways.
    Open,
    /// The client is done (its close arrived, or it hung up after ours was
    /// decided); waiting for the application to poll the events before our
    /// close, then the handshake is complete.
    CloseOwed { close: HeldClose },
    /// Our close is decided; waiting for the client's close (or EOF) until
    /// the close deadline. `held` is a failure close not yet in the `OutBuf`.
    CloseSent { held: Option<HeldClose> },
    /// The handshake is complete: flush, half-close, linger.
    Closed,
    /// Given up: drop the connection.
    Aborted,
}

/// Where a frame's payload goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// The message being reassembled.
    Data,
    /// The control buffer, handled when the frame ends.
    Control(OpCode),
    /// Nowhere: after a close, or the rest of a rejected frame.
    Discard,
}

/// The frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    fin: bool,
    mask: Option<[u8; 4]>,
    sink: Sink,
    remaining: u64,
    /// Payload bytes seen so far, modulo 4 (the mask phase).
    phase: usize,
}

/// What the frame reader waits for.
#[derive(Debug, Clone)]
enum Reader {
    /// (The rest of) a frame header.
    Header(HeaderDecoder),
    /// (The rest of) a frame payload.
    Payload(InFrame),
}

/// Grows `out`'s account by `more` bytes, before they are allocated;
/// false (and nothing reserved) when the budget cannot.
fn charge(out: &mut OutBuf, more: usize) -> bool {
    out.charge(more)
}

/// One open server-side WebSocket (sans-IO).
#[derive(Debug)]
pub struct WsConn {
    limits: WsLimits,
    state: State,
    reader: Reader,
    /// The data message being reassembled, if a fragmented one is open.
    message: Option<Partial>,
    /// Payload of the control frame being read (≤ 125 bytes).
    control: Vec<u8>,
    /// Unmasked text on its way through the UTF-8 check (≤ `UNMASK_CHUNK`).
    scratch: Vec<u8>,
    /// The next frame header was rejected: skip that frame.
    rejected_header: bool,
    events: VecDeque<Event>,
    /// Events pushed and polled so far (orders held close frames).
    pushed: u64,
    polled: u64,
    /// `End` or `Abort` is queued; nothing follows it.
    finished: bool,
    /// Input parked while too many events wait; `backlog[backlog_at..]` is unread.
    backlog: Vec<u8>,
    backlog_at: usize,
    /// The client's EOF arrived; handled once the backlog is parsed.
    eof: bool,
    eof_handled: bool,
    timers: TimerTable,
    /// The latest `now` seen (the "at once" deadline of [`Self::poll_timeout`]).
    now: Instant,
    /// The close handshake timed out after another terminal event had
    /// already been reported (so metrics can still count it).
    close_timed_out: bool,
    /// Payload bytes of the message events not yet polled.
    queued_bytes: usize,
    /// permessage-deflate, when negotiated (RSV1 then marks compressed
    /// messages both ways).
    deflate: Option<DeflateParams>,
    /// The decompressor of the compressed message being received; none
    /// between messages (no context takeover), so an idle socket holds
    /// no zlib state.
    inflater: Option<Box<Inflater>>,
    /// Inflated output on its way into the message (`INFLATE_CHUNK`
    /// bytes while `inflater` is set, else empty).
    inflated: Vec<u8>,
}

impl WsConn {
    /// An open WebSocket, created right after the 101 response was queued.
    pub fn new(limits: WsLimits, now: Instant) -> Self {
        Self::with_deflate(limits, None, now)
    }

    /// An open WebSocket whose 101 accepted permessage-deflate with
    /// `deflate` (none: no extension, as [`Self::new`]).
    pub fn with_deflate(limits: WsLimits, deflate: Option<DeflateParams>, now: Instant) -> Self {
        let mut conn = Self {
            limits,
            state: State::Open,
            reader: Reader::Header(HeaderDecoder::with_rsv1(deflate.is_some())),
            message: None,
            control: Vec::new(),
            scratch: Vec::new(),
            rejected_header: false,
            events: VecDeque::new(),
            pushed: 0,
            polled: 0,
            finished: false,
            backlog: Vec::new(),
            backlog_at: 0,
            eof: false,
            eof_handled: false,
            timers: TimerTable::default(),
            now,
            close_timed_out: false,
            queued_bytes: 0,
            deflate,
            inflater: None,
            inflated: Vec::new(),
        };
        conn.arm_keepalive(now);
        conn
    }

    // ----- inputs -----------------------------------------------------------

    /// Bytes from the client. May queue pongs and close frames into `out`.
    ///
    /// Every buffer that grows here (the message being assembled, parked
    /// input) is charged to `out`'s account by its new capacity before it
    /// is allocated; when the budget cannot hold it the message is dropped
    /// and the socket closed with 1009.
    pub fn handle_input(&mut self, data: &[u8], now: Instant, out: &mut OutBuf) {
        self.now = now;
        self.release_held(now, out);
        if !self.is_reading() || self.eof {
            return;
        }
        if self.backlog_at < self.backlog.len() {
            // The shell read while we asked it not to: park and go on.
            if !self.park(data, out) {
                return self.refuse_inbound(now, out);
            }
            self.drive(now, out);
            return;
        }
        let used = self.process(data, now, out);
        if let Some(rest) = data.get(used..) {
            if !rest.is_empty() && self.is_reading() {
                self.backlog.clear();
                self.backlog_at = 0;
                if !self.park(rest, out) {
                    self.refuse_inbound(now, out);
                }
            }
        }
    }

    /// Appends `data` to the parked input, charged before it is allocated.
    fn park(&mut self, data: &[u8], out: &mut OutBuf) -> bool {
        let need = self.backlog.len().saturating_add(data.len());
        let more = need.saturating_sub(self.backlog.capacity());
        if !charge(out, more) {
            return false;
        }
        self.backlog.reserve_exact(data.len());
        self.backlog.extend_from_slice(data);
        true
    }

    /// The client's EOF (TCP half-close).
    pub fn handle_eof(&mut self, now: Instant, out: &mut OutBuf) {
        self.now = now;
        self.eof = true;
        self.drive(now, out);
    }

    /// Deadlines: keepalive ping, idle timeout, close handshake; also queues
    /// held close frames and parses parked input (see the module docs).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut OutBuf) {
        self.now = now;
        self.drive(now, out);
        if self.timers.is_expired(Timer::WsCloseHandshake, now) {
            match self.state {
                State::CloseOwed { close } => {
                    // The application never polled: answer anyway.
                    self.write_close(close.code, close.reason, now, out);
                    self.enter_closed();
                }
                State::CloseSent { .. } => {
                    self.close_timed_out = self.finished;
                    self.finish(Event::Abort(AbortReason {
                        reason: ABORT_CLOSE_TIMEOUT,
                        status: None,
                    }));
                    self.enter_aborted();
                }
                _ => {}
            }
            return;
        }
        if self.state != State::Open {
            return;
        }
        if self.timers.is_expired(Timer::WsIdle, now) {
            self.finish(Event::Abort(AbortReason {
                reason: ABORT_IDLE_TIMEOUT,
                status: None,
            }));
            self.write_close(Some(close::GOING_AWAY), "idle timeout", now, out);
            self.enter_close_sent(None, now);
        } else if self.timers.is_expired(Timer::WsPing, now) {
            if !self.fits_outbound(out, 2) {
                self.slow_consumer(now, out);
                return;
            }
            if !charge_control(out, 0) {
                self.policy_close(ProtocolError::OutboundBudget, now, out);
                return;
            }
            write_frame(OpCode::Ping, &[], now, out);
            self.timers
                .set_opt(Timer::WsPing, now.checked_add(self.limits.ping_interval));
        }
    }

    // ----- outputs ----------------------------------------------------------

    /// The next event: `Ws(Message | Ping | Close)`, then exactly one `End`
    /// (clean close) or `Abort`. Drain it before acting on [`Self::shutdown`].
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        self.polled += 1;
        self.queued_bytes = self.queued_bytes.saturating_sub(event_bytes(&ev));
        Some(ev)
    }

    /// The bytes this socket keeps allocated on the way in (the message
    /// being assembled and the parked input, by capacity; message events
    /// not yet polled, whose buffers are exactly their size): what it
    /// charges to the memory budget besides the `OutBuf`.
    pub fn footprint(&self) -> usize {
        let message = self.message.as_ref().map_or(0, Partial::capacity);
        let inflater = self.inflater.as_ref().map_or(0, |_| INFLATER_FOOTPRINT);
        message
            .saturating_add(inflater)
            .saturating_add(self.inflated.capacity())
            .saturating_add(self.backlog.capacity())
            .saturating_add(self.queued_bytes)
    }

    /// The memory budget cannot hold the client's next input: drop what
    /// is being assembled and close 1009 (the input is not parsed).
    pub fn refuse_inbound(&mut self, now: Instant, out: &mut OutBuf) {
        self.drop_message();
        self.drop_input();
        self.fail(ProtocolError::InboundBudget, now);
        self.release_held(now, out);
    }

    /// The memory budget cannot hold a message queued to the client: drop
    /// it and close 1008.
    pub fn refuse_outbound(&mut self, now: Instant, out: &mut OutBuf) {
        self.now = now;
        self.policy_close(ProtocolError::OutboundBudget, now, out);
    }

    /// When to call [`Self::handle_timeout`]; an instant already passed when
    /// a held close frame or parked input is ready.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.state, State::Closed | State::Aborted) {
            return None;
        }
        let next = self.timers.next();
        if self.has_ready_work() {
            return Some(next.map_or(self.now, |t| t.min(self.now)));
        }
        next
    }

    /// False once nothing more needs reading, and while events or parked
    /// input wait for the application.
    pub fn wants_read(&self) -> bool {
        self.is_reading()
            && !self.eof
            && self.events.len() < MAX_QUEUED_EVENTS
            && self.backlog_at >= self.backlog.len()
    }

    /// `None` while open; `Graceful` once the close handshake is complete;
    /// `Abort` after a close timeout or when no close frame can be sent.
    pub fn shutdown(&self) -> Option<Shutdown> {
        match self.state {
            State::Closed => Some(Shutdown::Graceful),
            State::Aborted => Some(Shutdown::Abort),
            _ => None,
        }
    }

    // ----- commands ---------------------------------------------------------

    /// Queues a message (one unmasked frame). `Err(Closed)` once our close is
    /// decided. If the client is not reading and the frame would take the
    /// queue past `max_outbound`, the message is dropped and the connection
    /// closed with 1008 (slow consumer); that is not the caller's error.
    pub fn send_message(
        &mut self,
        msg: WsMessage,
        now: Instant,
        out: &mut OutBuf,
    ) -> Result<(), SendError> {
        self.now = now;
        if !self.can_send() {
            return Err(SendError::Closed);
        }
        let (opcode, payload) = match msg {
            WsMessage::Text(s) => (OpCode::Text, s.to_bytes()),
            WsMessage::Binary(b) => (OpCode::Binary, b),
        };
        if !self.fits_outbound(out, payload.len()) {
            self.slow_consumer(now, out);
            return Ok(());
        }
        // Server frames are unmasked: the payload is queued as is, shared
        // with every other socket it is sent to; or, with permessage-deflate,
        // compressed (RSV1). `ServerConn::send` charged
        // `OutBuf::footprint_with` of the uncompressed frame before:
        // `push_frame` grows the buffer to that, or compressed, to that
        // and at most `deflate::max_compressed` more (synced after).
        let compressed = self
            .deflate
            .and_then(|p| deflate::compress(&payload, p.server_max_window_bits));
        let (payload, rsv1) = match compressed {
            Some(c) => (Bytes::from(c), 0x40),
            None => (payload, 0),
        };
        let (mut header, n) = encode_header(true, opcode, payload.len());
        if let Some(b0) = header.first_mut() {
            *b0 |= rsv1;
        }
        out.push_frame(header.get(..n).unwrap_or_default(), payload, now);
        Ok(())
    }

    /// Starts the close handshake, or answers the client's close with this
    /// code instead of the echo. `Err(InvalidClose)` for a code we may not
    /// send or a reason over 123 bytes; `Err(Closed)` once our close is out.
    pub fn send_close(
        &mut self,
        code: u16,
        reason: &str,
        now: Instant,
        out: &mut OutBuf,
    ) -> Result<(), SendError> {
        self.now = now;
        if !close::may_send(code) || reason.len() > close::MAX_REASON {
            return Err(SendError::InvalidClose);
        }
        match self.state {
            State::Open => {
                self.write_close(Some(code), reason, now, out);
                self.enter_close_sent(None, now);
                Ok(())
            }
            State::CloseOwed { .. } => {
                self.write_close(Some(code), reason, now, out);
                self.enter_closed();
                Ok(())
            }
            _ => Err(SendError::Closed),
        }
    }

    /// True while a message may still be queued (our close is not out).
    pub fn can_queue(&self) -> bool {
        self.can_send()
    }

    // ----- state transitions ------------------------------------------------

    /// Data may still be queued: our close is not in the `OutBuf` yet.
    fn can_send(&self) -> bool {
        matches!(
            self.state,
            State::Open | State::CloseOwed { .. } | State::CloseSent { held: Some(_) }
        )
    }

    fn is_reading(&self) -> bool {
        matches!(self.state, State::Open | State::CloseSent { .. })
    }

    fn can_parse(&self) -> bool {
        self.is_reading() && self.events.len() < MAX_QUEUED_EVENTS
    }

    fn held(&self) -> Option<HeldClose> {
        match self.state {
            State::CloseOwed { close } => Some(close),
            State::CloseSent { held } => held,
            _ => None,
        }
    }

    fn has_ready_work(&self) -> bool {
        let held_ready = self.held().is_some_and(|h| self.polled >= h.after);
        let parked = self.backlog_at < self.backlog.len() && self.can_parse();
        held_ready || parked
    }

    fn push(&mut self, ev: Event) {
        self.queued_bytes = self.queued_bytes.saturating_add(event_bytes(&ev));
        self.events.push_back(ev);
        self.pushed += 1;
    }

    /// Queues the last event (`End` or `Abort`) unless one is queued already.
    /// True when the close handshake timed out after the connection had
    /// already reported another terminal event (which took the `Abort`).
    pub fn close_timed_out_late(&self) -> bool {
        self.close_timed_out
    }

    fn finish(&mut self, ev: Event) {
        if !self.finished {
            self.finished = true;
            self.push(ev);
        }
    }

    fn arm_keepalive(&mut self, now: Instant) {
        self.timers
            .set_opt(Timer::WsPing, now.checked_add(self.limits.ping_interval));
        self.timers
            .set_opt(Timer::WsIdle, now.checked_add(self.limits.idle_timeout));
    }

    fn arm_close_deadline(&mut self, now: Instant) {
        self.timers.stop(Timer::WsPing);
        self.timers.stop(Timer::WsIdle);
        let deadline = now.checked_add(self.limits.close_timeout);
        self.timers.set_opt(Timer::WsCloseHandshake, deadline);
    }

    fn enter_close_sent(&mut self, held: Option<HeldClose>, now: Instant) {
        self.drop_message();
        self.state = State::CloseSent { held };
        self.arm_close_deadline(now);
    }

    fn enter_close_owed(&mut self, close: HeldClose, now: Instant) {
        self.drop_message();
        let was_closing = matches!(self.state, State::CloseSent { .. });
        self.state = State::CloseOwed { close };
        if !was_closing {
            self.arm_close_deadline(now);
        }
        self.drop_input();
    }

    fn enter_closed(&mut self) {
        self.state = State::Closed;
        self.drop_message();
        self.timers = TimerTable::default();
        self.drop_input();
    }

    fn enter_aborted(&mut self) {
        self.state = State::Aborted;
        self.drop_message();
        self.timers = TimerTable::default();
        self.drop_input();
    }

    /// Forgets the message being assembled, and its decompressor.
    fn drop_message(&mut self) {
        self.message = None;
        self.inflater = None;
        self.inflated = Vec::new();
    }

    fn drop_input(&mut self) {
        self.backlog = Vec::new();
        self.backlog_at = 0;
    }

    /// Queues a held close frame once the events before it are polled.
    fn release_held(&mut self, now: Instant, out: &mut OutBuf) {
        let Some(held) = self.held() else { return };
        if self.polled < held.after {
            return;
        }
        self.write_close(held.code, held.reason, now, out);
        match self.state {
            State::CloseOwed { .. } => self.enter_closed(),
            State::CloseSent { .. } => self.state = State::CloseSent { held: None },
            _ => {}
        }
    }

    /// Releases held frames, parses parked input, then handles a pending EOF.
    fn drive(&mut self, now: Instant, out: &mut OutBuf) {
        self.release_held(now, out);
        if self.backlog_at < self.backlog.len() && self.can_parse() {
            let backlog = std::mem::take(&mut self.backlog);
            let used = self.process(backlog.get(self.backlog_at..).unwrap_or_default(), now, out);
            if self.is_reading() && self.backlog_at.saturating_add(used) < backlog.len() {
                self.backlog = backlog;
                self.backlog_at = self.backlog_at.saturating_add(used);
            } else {
                self.backlog_at = 0;
            }
        }
        if self.eof && !self.eof_handled && self.backlog_at >= self.backlog.len() {
            self.eof_handled = true;
            self.on_eof(now);
        }
    }

    fn on_eof(&mut self, now: Instant) {
        match self.state {
            State::Open => {
                self.finish(Event::Abort(AbortReason {
                    reason: ABORT_EOF,
                    status: None,
                }));
                self.enter_aborted();
            }
            State::CloseSent { held: None } => {
                self.finish(Event::End);
                self.enter_closed();
            }
            State::CloseSent { held: Some(close) } => self.enter_close_owed(close, now),
            _ => {}
        }
    }

    /// A protocol violation: report it, and hold a close frame with its code.
    /// While our close is already decided there is nothing more to send.
    fn fail(&mut self, err: ProtocolError, now: Instant) {
        if self.state != State::Open {
            return;
        }
        self.finish(Event::Abort(AbortReason {
            reason: err.reason(),
            status: None,
        }));
        let held = HeldClose {
            code: Some(err.close_code()),
            reason: err.close_reason(),
            after: self.pushed,
        };
        self.enter_close_sent(Some(held), now);
    }

    /// The client does not read: drop what we meant to send and close 1008.
    fn slow_consumer(&mut self, now: Instant, out: &mut OutBuf) {
        self.policy_close(ProtocolError::SlowConsumer, now, out);
    }

    /// Drops what we meant to send and closes with `err` (1008) at once.
    fn policy_close(&mut self, err: ProtocolError, now: Instant, out: &mut OutBuf) {
        match self.state {
            State::Open => {
                self.finish(Event::Abort(AbortReason {
                    reason: err.reason(),
                    status: None,
                }));
                self.write_close(Some(err.close_code()), err.close_reason(), now, out);
                self.enter_close_sent(None, now);
            }
            State::CloseOwed { .. } => {
                self.write_close(Some(err.close_code()), err.close_reason(), now, out);
                self.enter_closed();
            }
            State::CloseSent { held: Some(close) } => {
                // Already failing: send that close now instead.
                self.write_close(close.code, close.reason, now, out);
                self.state = State::CloseSent { held: None };
            }
            _ => {}
        }
    }

    /// The limit bounds the backlog of a client that does not read: a frame
    /// always fits an empty queue, so a message up to `max_message` can be
    /// sent (echoed) even when it is larger than `max_outbound`.
    fn fits_outbound(&self, out: &OutBuf, payload: usize) -> bool {
        let (_, header) = encode_header(true, OpCode::Binary, payload);
        let frame = payload.saturating_add(header);
        out.is_empty() || out.len().saturating_add(frame) <= self.limits.max_outbound
    }

    fn write_close(&mut self, code: Option<u16>, reason: &str, now: Instant, out: &mut OutBuf) {
        let mut payload = Vec::with_capacity(MAX_CONTROL_PAYLOAD);
        close::encode_payload(code, reason, &mut payload);
        payload.truncate(MAX_CONTROL_PAYLOAD);
        write_close_frame(&payload, now, out);
    }

    // ----- frame reader -----------------------------------------------------

    /// Parses as much of `input` as the event bound allows; returns bytes used.
    fn process(&mut self, input: &[u8], now: Instant, out: &mut OutBuf) -> usize {
        let mut used = 0;
        let mut again = false;
        while self.can_parse() && (used < input.len() || again) {
            let rest = input.get(used..).unwrap_or_default();
            let (n, more) = match self.reader.clone() {
                Reader::Header(dec) => self.read_header(dec, rest, now, out),
                Reader::Payload(frame) => (self.read_payload(frame, rest, now, out), false),
            };
            used += n;
            again = more;
        }
        used
    }

    /// Returns bytes used and whether to step again without new input.
    fn read_header(
        &mut self,
        mut dec: HeaderDecoder,
        input: &[u8],
        now: Instant,
        out: &mut OutBuf,
    ) -> (usize, bool) {
        let (n, result) = dec.decode(input);
        match result {
            Ok(None) => {
                self.reader = Reader::Header(dec);
                (n, false)
            }
            Ok(Some(header)) => {
                self.reader = Reader::Header(dec);
                self.on_header(header, now, out);
                (n, false)
            }
            Err(err) => {
                self.fail(err, now);
                // Decode the rest of this header anyway, to skip its payload
                // and stay in step until the client's close frame.
                dec.make_lenient();
                self.rejected_header = true;
                self.reader = Reader::Header(dec);
                (n, true)
            }
        }
    }

    fn on_header(&mut self, header: FrameHeader, now: Instant, out: &mut OutBuf) {
        let sink = if std::mem::take(&mut self.rejected_header) {
            Sink::Discard
        } else {
            match self.state {
                State::Open => self.open_sink(header, out).unwrap_or_else(|err| {
                    self.fail(err, now);
                    Sink::Discard
                }),
                // Our close is decided: only the client's close matters.
                State::CloseSent { .. } if header.opcode == Some(OpCode::Close) => {
                    self.control.clear();
                    Sink::Control(OpCode::Close)
                }
                _ => Sink::Discard,
            }
        };
        let frame = InFrame {
            fin: header.fin,
            mask: header.mask,
            sink,
            remaining: header.len,
            phase: 0,
        };
        if header.len == 0 {
            self.end_frame(frame, now, out);
        } else {
            self.reader = Reader::Payload(frame);
        }
    }

    /// Checks a header against the fragmentation rules and limits (§5.4, 1009).
    /// A compressed message (RFC 7692) counts against `max_message` by its
    /// inflated size, as it inflates, not by what the headers declare.
    fn open_sink(&mut self, header: FrameHeader, out: &mut OutBuf) -> Result<Sink, ProtocolError> {
        let opcode = header.opcode.ok_or(ProtocolError::ReservedOpcode)?;
        if header.rsv1 && (self.deflate.is_none() || opcode.is_control()) {
            return Err(ProtocolError::NonZeroReservedBits);
        }
        if opcode.is_control() {
            self.control.clear();
            return Ok(Sink::Control(opcode));
        }
        let len = usize::try_from(header.len).map_err(|_| ProtocolError::FrameTooBig)?;
        let compressed = header.rsv1 || (opcode == OpCode::Continuation && self.inflater.is_some());
        let max_frame = if compressed {
            deflate::max_compressed(self.limits.max_frame)
        } else {
            self.limits.max_frame
        };
        if len > max_frame {
            return Err(ProtocolError::FrameTooBig);
        }
        let so_far = match (opcode, &self.message) {
            (OpCode::Continuation, Some(m)) => m.len(),
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (_, None) => 0,
        };
        if !compressed
            && so_far
                .checked_add(len)
                .is_none_or(|total| total > self.limits.max_message)
        {
            return Err(ProtocolError::MessageTooBig);
        }
        if header.rsv1 {
            // The first frame of a compressed message: a decompressor for it.
            let cost = INFLATER_FOOTPRINT.saturating_add(INFLATE_CHUNK);
            if !charge(out, cost) {
                return Err(ProtocolError::InboundBudget);
            }
            self.inflater = Some(Box::new(Inflater::new()));
            self.inflated = vec![0; INFLATE_CHUNK];
        }
        if self.message.is_none() {
            self.message = Some(match opcode {
                OpCode::Text => Partial::Text {
                    text: String::new(),
                    utf8: Utf8Validator::new(),
                },
                _ => Partial::Binary(Vec::new()),
            });
        }
        Ok(Sink::Data)
    }

    fn read_payload(
        &mut self,
        mut frame: InFrame,
        input: &[u8],
        now: Instant,
        out: &mut OutBuf,
    ) -> usize {
        let n = usize::try_from(frame.remaining).map_or(input.len(), |r| r.min(input.len()));
        let chunk = input.get(..n).unwrap_or_default();
        match frame.sink {
            Sink::Data => {
                let rest = usize::try_from(frame.remaining).unwrap_or(usize::MAX);
                let appended = if self.inflater.is_some() {
                    self.inflate_data(chunk, frame.mask, frame.phase, out)
                } else {
                    self.append_data(chunk, rest, frame.mask, frame.phase, out)
                };
                if let Err(err) = appended {
                    if err == ProtocolError::InboundBudget {
                        self.drop_message();
                    }
                    self.fail(err, now);
                    frame.sink = Sink::Discard;
                }
            }
            Sink::Control(_) => {
                let start = self.control.len();
                let room = MAX_CONTROL_PAYLOAD.saturating_sub(start);
                self.control
                    .extend_from_slice(chunk.get(..room).unwrap_or(chunk));
                if let (Some(key), Some(new)) = (frame.mask, self.control.get_mut(start..)) {
                    apply_mask(new, key, frame.phase);
                }
            }
            Sink::Discard => {}
        }
        frame.remaining = frame
            .remaining
            .saturating_sub(u64::try_from(n).unwrap_or(u64::MAX));
        frame.phase = (frame.phase + n) % 4;
        if frame.remaining == 0 {
            self.end_frame(frame, now, out);
        } else {
            self.reader = Reader::Payload(frame);
        }
        n
    }

    /// Unmasks `chunk` into the open message; text is validated as it goes.
    /// `rest` is what the frame still holds, `chunk` included: the buffer
    /// grows toward the frame's declared end, never past it, and its new
    /// capacity is charged to `out`'s account before it is allocated.
    fn append_data(
        &mut self,
        chunk: &[u8],
        rest: usize,
        mask: Option<[u8; 4]>,
        phase: usize,
        out: &mut OutBuf,
    ) -> Result<(), ProtocolError> {
        let Some(message) = self.message.as_ref() else {
            return Ok(());
        };
        let (len, cap) = (message.len(), message.capacity());
        let frame_end = len.saturating_add(rest);
        let target = message_capacity(len, cap, chunk.len(), frame_end);
        if !charge(out, target.saturating_sub(cap)) {
            return Err(ProtocolError::InboundBudget);
        }
        match &mut self.message {
            Some(Partial::Binary(data)) => {
                let start = data.len();
                data.reserve_exact(target.saturating_sub(start));
                data.extend_from_slice(chunk);
                if let (Some(key), Some(new)) = (mask, data.get_mut(start..)) {
                    apply_mask(new, key, phase);
                }
                Ok(())
            }
            Some(Partial::Text { text, utf8 }) => {
                // `len` counts the carried bytes of an unfinished character:
                // the target holds them too.
                text.reserve_exact(target.saturating_sub(text.len()));
                let scratch = &mut self.scratch;
                let mut phase = phase;
                for piece in chunk.chunks(UNMASK_CHUNK) {
                    scratch.clear();
                    scratch.extend_from_slice(piece);
                    if let Some(key) = mask {
                        apply_mask(scratch, key, phase);
                    }
                    phase = (phase + piece.len()) % 4;
                    utf8.push(scratch, text)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Unmasks `chunk` of a compressed message and inflates it into the
    /// message, which never grows past `max_message` (1009 before that).
    fn inflate_data(
        &mut self,
        chunk: &[u8],
        mask: Option<[u8; 4]>,
        phase: usize,
        out: &mut OutBuf,
    ) -> Result<(), ProtocolError> {
        let max = self.limits.max_message;
        let (Some(inflater), Some(message)) = (self.inflater.as_deref_mut(), self.message.as_mut())
        else {
            return Ok(());
        };
        let sink = |b: &[u8]| append_inflated(message, b, max, out);
        inflater.inflate_masked(
            chunk,
            mask,
            phase,
            &mut self.scratch,
            &mut self.inflated,
            sink,
        )
    }

    /// The end of a compressed message: inflate the tail the sender
    /// stripped (RFC 7692 §7.2.2); the decompressor goes with the message.
    fn finish_inflate(&mut self, out: &mut OutBuf) -> Result<(), ProtocolError> {
        let max = self.limits.max_message;
        let (Some(mut inflater), Some(message)) = (self.inflater.take(), self.message.as_mut())
        else {
            return Ok(());
        };
        let done = inflater.inflate_all(&TAIL, &mut self.inflated, |b| {
            append_inflated(message, b, max, out)
        });
        self.inflated = Vec::new();
        done
    }

    fn end_frame(&mut self, frame: InFrame, now: Instant, out: &mut OutBuf) {
        self.reader = Reader::Header(HeaderDecoder::with_rsv1(self.deflate.is_some()));
        if self.state == State::Open {
            self.arm_keepalive(now);
        }
        match frame.sink {
            Sink::Discard | Sink::Control(OpCode::Pong) => {}
            Sink::Data if frame.fin => match self.finish_inflate(out) {
                Ok(()) => self.end_message(now),
                Err(err) => {
                    self.drop_message();
                    self.fail(err, now);
                }
            },
            Sink::Data => {}
            Sink::Control(OpCode::Ping) => self.on_ping(now, out),
            Sink::Control(OpCode::Close) => self.on_close(now),
            Sink::Control(_) => {}
        }
    }

    fn end_message(&mut self, now: Instant) {
        let msg = match self.message.take() {
            Some(Partial::Text { text, utf8 }) => {
                if utf8.finish().is_err() {
                    self.fail(ProtocolError::InvalidUtf8, now);
                    return;
                }
                WsMessage::Text(text.into())
            }
            Some(Partial::Binary(data)) => WsMessage::Binary(Bytes::from(data)),
            None => return,
        };
        self.push(Event::Ws(WsEvent::Message(msg)));
    }

    fn on_ping(&mut self, now: Instant, out: &mut OutBuf) {
        if self.state != State::Open {
            return;
        }
        if !self.fits_outbound(out, self.control.len()) {
            self.slow_consumer(now, out);
            return;
        }
        if !charge_control(out, self.control.len()) {
            self.policy_close(ProtocolError::OutboundBudget, now, out);
            return;
        }
        write_frame(OpCode::Pong, &self.control, now, out);
        let payload = Bytes::copy_from_slice(&self.control);
        self.push(Event::Ws(WsEvent::Ping(payload)));
    }

    fn on_close(&mut self, now: Instant) {
        let parsed = close::parse_payload(&self.control);
        let held = match self.state {
            State::Open => match parsed {
                Ok((code, reason)) => {
                    self.push(Event::Ws(WsEvent::Close { code, reason }));
                    let after = self.pushed;
                    self.finish(Event::End);
                    // Echo the code (RFC 6455 §5.5.1); one we may not send becomes 1000.
                    let code = code.map(|c| if close::may_send(c) { c } else { close::NORMAL });
                    HeldClose {
                        code,
                        reason: "",
                        after,
                    }
                }
                Err(err) => {
                    self.finish(Event::Abort(AbortReason {
                        reason: err.reason(),
                        status: None,
                    }));
                    HeldClose {
                        code: Some(err.close_code()),
                        reason: err.close_reason(),
                        after: self.pushed,
                    }
                }
            },
            State::CloseSent { held } => {
                match parsed {
                    Ok((code, reason)) if !self.finished => {
                        self.push(Event::Ws(WsEvent::Close { code, reason }));
                        self.finish(Event::End);
                    }
                    Ok(_) => {}
                    Err(err) => self.finish(Event::Abort(AbortReason {
                        reason: err.reason(),
                        status: None,
                    })),
                }
                match held {
                    Some(close) => close,
                    None => {
                        self.enter_closed();
                        return;
                    }
                }
            }
            _ => return,
        };
        self.enter_close_owed(held, now);
    }
}

/// The payload bytes an event carries (what it charges to the budget).
fn event_bytes(ev: &Event) -> usize {
    match ev {
        Event::Ws(WsEvent::Message(WsMessage::Text(t))) => t.as_bytes().len(),
        Event::Ws(WsEvent::Message(WsMessage::Binary(b))) => b.len(),
        _ => 0,
    }
}

/// The payload bytes of a message.
pub fn payload_len(msg: &WsMessage) -> usize {
    match msg {
        WsMessage::Text(t) => t.as_bytes().len(),
        WsMessage::Binary(b) => b.len(),
    }
}

/// The bytes a message frame takes in the `OutBuf` (header included).
pub fn frame_len(msg: &WsMessage) -> usize {
    let payload = payload_len(msg);
    let (_, header) = encode_header(true, OpCode::Binary, payload);
    payload.saturating_add(header)
}

/// Charges `out`'s account for what queuing a control frame with this
/// payload grows the buffer by; false (nothing charged) when the budget
/// cannot hold it.
fn charge_control(out: &mut OutBuf, payload: usize) -> bool {
    let (_, header) = encode_header(true, OpCode::Ping, payload);
    charge(out, out.growth_for(header.saturating_add(payload)))
}

/// Appends one unmasked, unfragmented control frame whose growth of the
/// buffer was charged with [`charge_control`].
fn write_frame(opcode: OpCode, payload: &[u8], now: Instant, out: &mut OutBuf) {
    let (header, n) = encode_header(true, opcode, payload.len());
    out.extend_parts(&[header.get(..n).unwrap_or_default(), payload], now);
}

/// Appends a close frame, charged when the budget can hold it; past the
/// budget it goes out anyway (it is the refusal), with at most its 127
/// bytes left uncharged until the account is next synced.
fn write_close_frame(payload: &[u8], now: Instant, out: &mut OutBuf) {
    let (header, n) = encode_header(true, OpCode::Close, payload.len());
    out.extend_charged(&[header.get(..n).unwrap_or_default(), payload], now);
}

#[cfg(test)]
mod tests {
    use super::super::frame::client::{frame, masked};
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn limits() -> WsLimits {
        WsLimits {
            max_frame: 1000,
            max_message: 3000,
            max_outbound: 100_000,
            ..WsLimits::default()
        }
    }

    /// A server frame, as the client sees it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Srv {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    /// Decodes server output: every frame must be unmasked, final, well-formed.
    fn parse_server(mut b: &[u8]) -> Vec<Srv> {
        let mut v = Vec::new();
        while !b.is_empty() {
            assert_eq!(b[0] & 0xb0, 0x80, "FIN set, RSV2/3 clear");
            let compressed = b[0] & 0x40 != 0;
            assert_eq!(b[1] & 0x80, 0, "server frames are unmasked");
            let (len, at) = match b[1] {
                126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            let mut p = b[at..at + len].to_vec();
            if compressed {
                assert!(
                    matches!(b[0] & 0x0f, 1 | 2),
                    "only data frames are compressed"
                );
                p = inflate_message(&[&p]);
            }
            v.push(match b[0] & 0x0f {
                1 => Srv::Text(String::from_utf8(p).unwrap()),
                2 => Srv::Binary(p),
                9 => Srv::Ping(p),
                10 => Srv::Pong(p),
                8 => match p.len() {
                    0 => Srv::Close(None, String::new()),
                    _ => Srv::Close(
                        Some(u16::from_be_bytes([p[0], p[1]])),
                        String::from_utf8(p[2..].to_vec()).unwrap(),
                    ),
                },
                op => panic!("server sent opcode {op}"),
            });
            b = &b[at + len..];
        }
        v
    }

    /// Inflates one compressed message body (the tail appended).
    fn inflate_message(pieces: &[&[u8]]) -> Vec<u8> {
        let mut inf = Inflater::new();
        let mut out = Vec::new();
        let mut buf = vec![0; 777];
        for p in pieces.iter().copied().chain([&TAIL[..]]) {
            inf.inflate_all(p, &mut buf, |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        }
        out
    }

    /// A raw DEFLATE body (no context takeover, tail stripped) as a
    /// permessage-deflate client sends it.
    fn deflated(payload: &[u8]) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut z = Compress::new(Compression::default(), false);
        let mut c = Vec::with_capacity(payload.len() + 1024);
        z.compress_vec(payload, &mut c, FlushCompress::Sync)
            .unwrap();
        assert!(c.ends_with(&TAIL));
        c.truncate(c.len() - 4);
        c
    }

    fn agreed() -> DeflateParams {
        DeflateParams {
            server_max_window_bits: 15,
            server_window_requested: false,
            client_max_window_bits: 15,
        }
    }

    /// A shell in memory: feeds input, drains events (optionally echoing
    /// messages), honours `poll_timeout`, and collects what goes on the wire.
    struct Shell {
        conn: WsConn,
        out: OutBuf,
        now: Instant,
        events: Vec<Event>,
        wire: Vec<u8>,
        echo: bool,
    }

    impl Shell {
        fn new(limits: WsLimits) -> Self {
            let now = Instant::now();
            Self {
                conn: WsConn::new(limits, now),
                out: OutBuf::new(),
                now,
                events: Vec::new(),
                wire: Vec::new(),
                echo: false,
            }
        }

        fn deflate(limits: WsLimits) -> Self {
            let mut s = Self::new(limits);
            s.conn = WsConn::with_deflate(s.conn.limits.clone(), Some(agreed()), s.now);
            s
        }

        fn echoing(mut self) -> Self {
            self.echo = true;
            self
        }

        fn feed(&mut self, data: &[u8]) {
            self.conn.handle_input(data, self.now, &mut self.out);
            self.pump();
        }

        fn eof(&mut self) {
            self.conn.handle_eof(self.now, &mut self.out);
            self.pump();
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            self.pump();
        }

        fn pump(&mut self) {
            for _ in 0..100_000 {
                while let Some(ev) = self.conn.poll_event() {
                    if let (true, Event::Ws(WsEvent::Message(m))) = (self.echo, &ev) {
                        let _ = self.conn.send_message(m.clone(), self.now, &mut self.out);
                    }
                    self.events.push(ev);
                }
                match self.conn.poll_timeout() {
                    Some(t) if t <= self.now => self.conn.handle_timeout(self.now, &mut self.out),
                    _ => break,
                }
            }
            self.flush();
        }

        fn flush(&mut self) {
            while !self.out.is_empty() {
                let front = self.out.as_slice();
                self.wire.extend_from_slice(front);
                let n = front.len();
                self.out.consume(n, self.now);
            }
        }

        fn take_events(&mut self) -> Vec<Event> {
            std::mem::take(&mut self.events)
        }

        fn take_wire(&mut self) -> Vec<Srv> {
            parse_server(&std::mem::take(&mut self.wire))
        }
    }

    type Outcome = (Vec<Event>, Vec<Srv>, Option<Shutdown>);

    fn run_chunks(limits: WsLimits, chunks: &[&[u8]]) -> Outcome {
        let mut s = Shell::new(limits);
        for c in chunks {
            s.feed(c);
        }
        let shutdown = s.conn.shutdown();
        (s.take_events(), s.take_wire(), shutdown)
    }

    /// Whole, one byte at a time, and split at every offset: same outcome.
    fn run_all_splits(limits: WsLimits, input: &[u8]) -> Outcome {
        let whole = run_chunks(limits.clone(), &[input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run_chunks(limits.clone(), &bytes), whole, "byte at a time");
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(run_chunks(limits.clone(), &[a, b]), whole, "split at {i}");
        }
        whole
    }

    fn text(s: &str) -> Event {
        Event::Ws(WsEvent::Message(WsMessage::Text(s.into())))
    }

    fn binary(b: &[u8]) -> Event {
        Event::Ws(WsEvent::Message(WsMessage::Binary(Bytes::copy_from_slice(
            b,
        ))))
    }

    fn closed(code: Option<u16>, reason: &str) -> Event {
        Event::Ws(WsEvent::Close {
            code,
            reason: reason.to_owned(),
        })
    }

    fn abort(reason: &'static str) -> Event {
        Event::Abort(AbortReason {
            reason,
            status: None,
        })
    }

    fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        masked(true, 8, &p)
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn messages_pings_and_close_in_any_split() {
        let kosme = "κόσμε".as_bytes();
        let input = cat(&[
            masked(true, 1, b"Hello"),
            masked(false, 2, b"\x00\x01"),
            masked(true, 9, b"p1"),
            masked(false, 0, b""),
            masked(true, 0, b"\xff"),
            masked(true, 1, b""),
            masked(false, 1, &kosme[..3]),
            masked(true, 10, b"unsolicited"),
            masked(false, 0, &kosme[3..4]),
            masked(true, 0, &kosme[4..]),
            close_frame(1000, b"bye"),
        ]);
        let (events, wire, shutdown) = run_all_splits(limits(), &input);
        assert_eq!(
            events,
            [
                text("Hello"),
                Event::Ws(WsEvent::Ping(Bytes::from_static(b"p1"))),
                binary(b"\x00\x01\xff"),
                text(""),
                text("κόσμε"),
                closed(Some(1000), "bye"),
                Event::End,
            ]
        );
        assert_eq!(
            wire,
            [
                Srv::Pong(b"p1".to_vec()),
                Srv::Close(Some(1000), String::new())
            ]
        );
        assert_eq!(shutdown, Some(Shutdown::Graceful));
    }

    #[test]
    fn pong_answers_each_ping_between_fragments() {
        // Autobahn 5.19: pongs go out before the message completes.
        let mut s = Shell::new(limits()).echoing();
        s.feed(&cat(&[
            masked(false, 1, b"frag1"),
            masked(false, 0, b"frag2"),
            masked(true, 9, b"pongme 1!"),
        ]));
        assert_eq!(s.take_wire(), [Srv::Pong(b"pongme 1!".to_vec())]);
        s.feed(&cat(&[
            masked(false, 0, b"frag3"),
            masked(true, 9, b"pongme 2!"),
            masked(true, 0, b"frag4"),
        ]));
        assert_eq!(
            s.take_wire(),
            [
                Srv::Pong(b"pongme 2!".to_vec()),
                Srv::Text("frag1frag2frag3frag4".into())
            ]
        );
    }

    #[test]
    fn protocol_errors_close_with_their_code() {
        let mut long_len = vec![0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1];
        long_len.extend_from_slice(&[1, 2, 3, 4]);
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (
                frame(true, 0, 1, None, b"x"),
                ProtocolError::UnmaskedFrameFromClient,
            ),
            (
                frame(true, 1, 1, Some([9; 4]), b"x"),
                ProtocolError::NonZeroReservedBits,
            ),
            (
                frame(true, 2, 1, Some([9; 4]), b"x"),
                ProtocolError::NonZeroReservedBits,
            ),
            (
                frame(true, 4, 2, Some([9; 4]), b"x"),
                ProtocolError::NonZeroReservedBits,
            ),
            (
                frame(true, 7, 8, Some([9; 4]), b""),
                ProtocolError::NonZeroReservedBits,
            ),
            (masked(true, 3, b""), ProtocolError::ReservedOpcode),
            (masked(true, 7, b"xyz"), ProtocolError::ReservedOpcode),
            (masked(true, 0xb, b""), ProtocolError::ReservedOpcode),
            (masked(true, 0xf, b"xyz"), ProtocolError::ReservedOpcode),
            (
                masked(false, 9, b"ping"),
                ProtocolError::FragmentedControlFrame,
            ),
            (
                masked(true, 9, &[b'a'; 126]),
                ProtocolError::ControlFrameTooBig,
            ),
            (
                masked(true, 0, b"cont"),
                ProtocolError::UnexpectedContinuation,
            ),
            (
                cat(&[masked(false, 1, b"a"), masked(true, 1, b"b")]),
                ProtocolError::ExpectedContinuation,
            ),
            (
                cat(&[masked(false, 2, b"a"), masked(true, 1, b"b")]),
                ProtocolError::ExpectedContinuation,
            ),
            (
                masked(true, 1, b"\xce\xba\xed\xa0\x80"),
                ProtocolError::InvalidUtf8,
            ),
            (
                cat(&[masked(false, 1, b"ok"), masked(true, 0, b"\xce")]),
                ProtocolError::InvalidUtf8,
            ),
            (masked(true, 2, &[0; 1001]), ProtocolError::FrameTooBig),
            (
                cat(&[
                    masked(false, 2, &[0; 1000]),
                    masked(false, 0, &[0; 1000]),
                    masked(false, 0, &[0; 1000]),
                    masked(true, 0, &[0; 1]),
                ]),
                ProtocolError::MessageTooBig,
            ),
        ];
        for (bad, err) in cases {
            // A message before the error is delivered; nothing after it is,
            // not even the pong; the client's close completes the handshake.
            let input = cat(&[
                masked(true, 1, b"hi"),
                bad.clone(),
                masked(true, 9, b"late"),
                masked(true, 1, b"late"),
                close_frame(1000, b""),
            ]);
            let (events, wire, shutdown) = run_all_splits(limits(), &input);
            assert_eq!(events, [text("hi"), abort(err.reason())], "{err:?}");
            assert_eq!(
                wire,
                [Srv::Close(
                    Some(err.close_code()),
                    err.close_reason().into()
                )],
                "{err:?}"
            );
            assert_eq!(shutdown, Some(Shutdown::Graceful), "{err:?}");
        }
        // A length with the MSB set loses the framing: wait for EOF.
        let input = cat(&[masked(true, 1, b"hi"), long_len, close_frame(1000, b"")]);
        let (events, wire, shutdown) = run_all_splits(limits(), &input);
        assert_eq!(events, [text("hi"), abort("ws_payload_length_msb_set")]);
        assert_eq!(
            wire,
            [Srv::Close(Some(1002), "invalid payload length".into())]
        );
        assert_eq!(shutdown, None);
    }

    #[test]
    fn bad_close_frames() {
        let cases: [(Vec<u8>, ProtocolError); 8] = [
            (masked(true, 8, b"\x03"), ProtocolError::CloseFrameTooShort),
            (close_frame(0, b""), ProtocolError::InvalidCloseCode),
            (close_frame(999, b""), ProtocolError::InvalidCloseCode),
            (close_frame(1005, b""), ProtocolError::InvalidCloseCode),
            (close_frame(1006, b""), ProtocolError::InvalidCloseCode),
            (close_frame(2999, b""), ProtocolError::InvalidCloseCode),
            (close_frame(5000, b""), ProtocolError::InvalidCloseCode),
            (
                close_frame(1000, b"\xce\xba\xed\xa0\x80edited"),
                ProtocolError::InvalidUtf8CloseReason,
            ),
        ];
        for (bad, err) in cases {
            let (events, wire, shutdown) = run_all_splits(limits(), &bad);
            assert_eq!(events, [abort(err.reason())], "{err:?}");
            assert_eq!(
                wire,
                [Srv::Close(
                    Some(err.close_code()),
                    err.close_reason().into()
                )]
            );
            assert_eq!(shutdown, Some(Shutdown::Graceful), "{err:?}");
        }
        // 124-byte reason: a 126-byte control frame.
        let (events, ..) = run_chunks(limits(), &[&close_frame(1000, &[b'a'; 124])]);
        assert_eq!(events, [abort("ws_control_frame_too_big")]);
        let (events, ..) = run_chunks(limits(), &[&close_frame(1000, &[b'a'; 123])]);
        assert_eq!(events, [closed(Some(1000), &"a".repeat(123)), Event::End]);
    }

    #[test]
    fn client_close_is_echoed() {
        let cases: [(Vec<u8>, Option<u16>, Srv); 5] = [
            (masked(true, 8, b""), None, Srv::Close(None, String::new())),
            (
                close_frame(1000, b""),
                Some(1000),
                Srv::Close(Some(1000), String::new()),
            ),
            (
                close_frame(4999, b"x"),
                Some(4999),
                Srv::Close(Some(4999), String::new()),
            ),
            (
                close_frame(1014, b""),
                Some(1014),
                Srv::Close(Some(1014), String::new()),
            ),
            (
                close_frame(1010, b""),
                Some(1010),
                Srv::Close(Some(1000), String::new()),
            ),
        ];
        for (input, code, reply) in cases {
            let mut s = Shell::new(limits());
            s.feed(&input);
            let reason = if code == Some(4999) { "x" } else { "" };
            assert_eq!(s.take_events(), [closed(code, reason), Event::End]);
            assert_eq!(s.take_wire(), [reply]);
            assert_eq!(s.conn.shutdown(), Some(Shutdown::Graceful));
            assert!(!s.conn.wants_read());
            assert_eq!(s.conn.poll_timeout(), None);
            // Everything after is ignored; nothing more can be sent.
            s.feed(&masked(true, 9, b"after"));
            assert!(s.take_events().is_empty() && s.take_wire().is_empty());
            let now = s.now;
            assert_eq!(
                s.conn
                    .send_message(WsMessage::Text("x".into()), now, &mut s.out),
                Err(SendError::Closed)
            );
            assert_eq!(
                s.conn.send_close(1000, "", now, &mut s.out),
                Err(SendError::Closed)
            );
        }
    }

    #[test]
    fn replies_to_earlier_messages_go_out_before_our_close() {
        // Autobahn 7.1.x: message then close in one read.
        let mut s = Shell::new(limits()).echoing();
        s.feed(&cat(&[
            masked(true, 1, b"Hello World!"),
            close_frame(1000, b""),
        ]));
        assert_eq!(
            s.take_wire(),
            [
                Srv::Text("Hello World!".into()),
                Srv::Close(Some(1000), String::new())
            ]
        );
        // Autobahn 3.2 / 4.1.3: message, bad frame, ping in one read.
        let mut s = Shell::new(limits()).echoing();
        s.feed(&cat(&[
            masked(true, 1, b"Hello, world!"),
            frame(true, 2, 1, Some([1; 4]), b"x"),
            masked(true, 9, b""),
        ]));
        assert_eq!(
            s.take_wire(),
            [
                Srv::Text("Hello, world!".into()),
                Srv::Close(Some(1002), "reserved bits set".into())
            ]
        );
        // An application that answers the close itself, after polling it.
        let mut s = Shell::new(limits());
        let now = s.now;
        s.conn
            .handle_input(&close_frame(1000, b""), now, &mut s.out);
        assert_eq!(s.conn.poll_event(), Some(closed(Some(1000), "")));
        assert_eq!(s.conn.poll_timeout(), Some(now));
        s.conn
            .send_message(WsMessage::Text("last".into()), now, &mut s.out)
            .unwrap();
        s.conn.send_close(4000, "mine", now, &mut s.out).unwrap();
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Graceful));
        s.flush();
        assert_eq!(
            s.take_wire(),
            [
                Srv::Text("last".into()),
                Srv::Close(Some(4000), "mine".into())
            ]
        );
        assert_eq!(s.conn.poll_event(), Some(Event::End));
    }

    #[test]
    fn server_initiated_close() {
        let mut s = Shell::new(limits());
        let now = s.now;
        s.conn
            .send_close(1001, "going away", now, &mut s.out)
            .unwrap();
        s.flush();
        assert_eq!(s.take_wire(), [Srv::Close(Some(1001), "going away".into())]);
        assert_eq!(
            s.conn.send_close(1000, "", now, &mut s.out),
            Err(SendError::Closed)
        );
        assert_eq!(
            s.conn
                .send_message(WsMessage::Text("x".into()), now, &mut s.out),
            Err(SendError::Closed)
        );
        assert_eq!(s.conn.shutdown(), None);
        assert!(s.conn.wants_read());
        // Data frames are parsed and dropped (even invalid text); pings are not answered.
        s.feed(&cat(&[
            masked(false, 1, b"\xff"),
            masked(true, 9, b"p"),
            masked(true, 0, b"x"),
            masked(true, 2, b"b"),
        ]));
        assert!(s.take_events().is_empty() && s.take_wire().is_empty());
        s.feed(&close_frame(1001, b"ok"));
        assert_eq!(s.take_events(), [closed(Some(1001), "ok"), Event::End]);
        assert!(s.take_wire().is_empty());
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Graceful));
        assert!(!s.conn.wants_read());
    }

    #[test]
    fn send_close_validation() {
        let mut s = Shell::new(limits());
        let now = s.now;
        for code in [0, 999, 1004, 1005, 1006, 1010, 1015, 1016, 2999, 5000] {
            assert_eq!(
                s.conn.send_close(code, "", now, &mut s.out),
                Err(SendError::InvalidClose),
                "{code}"
            );
        }
        let long = "a".repeat(124);
        assert_eq!(
            s.conn.send_close(1000, &long, now, &mut s.out),
            Err(SendError::InvalidClose)
        );
        assert!(s.out.is_empty());
        s.conn
            .send_close(3000, &long[..123], now, &mut s.out)
            .unwrap();
        s.flush();
        assert_eq!(s.take_wire(), [Srv::Close(Some(3000), long[..123].into())]);
    }

    #[test]
    fn close_handshake_timeout_aborts() {
        let mut s = Shell::new(limits());
        let now = s.now;
        s.conn.send_close(1000, "", now, &mut s.out).unwrap();
        assert_eq!(s.conn.poll_timeout(), Some(now + Duration::from_secs(5)));
        s.advance(Duration::from_millis(4999));
        assert_eq!(s.conn.shutdown(), None);
        s.advance(Duration::from_millis(1));
        assert_eq!(s.take_events(), [abort(ABORT_CLOSE_TIMEOUT)]);
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Abort));
        assert_eq!(s.conn.poll_timeout(), None);
        // After a protocol error, the same deadline.
        let mut s = Shell::new(limits());
        s.feed(&masked(true, 3, b""));
        assert_eq!(s.take_events(), [abort("ws_reserved_opcode")]);
        s.advance(Duration::from_secs(5));
        assert!(s.take_events().is_empty());
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Abort));
    }

    #[test]
    fn eof() {
        // While open (even mid-frame): abort.
        for input in [&b""[..], &masked(true, 1, b"hi")[..3]] {
            let mut s = Shell::new(limits());
            s.feed(input);
            s.eof();
            assert_eq!(s.take_events(), [abort(ABORT_EOF)]);
            assert_eq!(s.conn.shutdown(), Some(Shutdown::Abort));
        }
        // After our close: a clean end.
        let mut s = Shell::new(limits());
        let now = s.now;
        s.conn.send_close(1000, "", now, &mut s.out).unwrap();
        s.eof();
        assert_eq!(s.take_events(), [Event::End]);
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Graceful));
        // After a protocol error: our held close still goes out, then Graceful.
        let mut s = Shell::new(limits());
        let now = s.now;
        s.conn
            .handle_input(&masked(true, 0xc, b""), now, &mut s.out);
        s.conn.handle_eof(now, &mut s.out);
        assert_eq!(s.conn.shutdown(), None);
        s.pump();
        assert_eq!(s.take_events(), [abort("ws_reserved_opcode")]);
        assert_eq!(
            s.take_wire(),
            [Srv::Close(Some(1002), "reserved opcode".into())]
        );
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Graceful));
    }

    #[test]
    fn keepalive_ping_and_idle_timeout() {
        let mut s = Shell::new(limits());
        let t0 = s.now;
        assert_eq!(s.conn.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        s.advance(Duration::from_secs(29));
        assert!(s.take_wire().is_empty());
        s.advance(Duration::from_secs(1));
        assert_eq!(s.take_wire(), [Srv::Ping(vec![])]);
        // Silence: another ping every interval.
        s.advance(Duration::from_secs(30));
        assert_eq!(s.take_wire(), [Srv::Ping(vec![])]);
        // A frame (the pong) resets both timers.
        s.feed(&masked(true, 10, b""));
        assert_eq!(s.conn.poll_timeout(), Some(s.now + Duration::from_secs(30)));
        // A frame trickling in does not count until complete.
        let f = masked(true, 1, b"slow");
        s.feed(&f[..3]);
        s.advance(Duration::from_secs(30));
        assert_eq!(s.take_wire(), [Srv::Ping(vec![])]);
        s.advance(Duration::from_secs(30));
        assert_eq!(s.take_wire(), [Srv::Ping(vec![])]);
        assert!(s.take_events().is_empty());
        s.advance(Duration::from_secs(15));
        assert_eq!(s.take_events(), [abort(ABORT_IDLE_TIMEOUT)]);
        assert_eq!(
            s.take_wire(),
            [Srv::Close(Some(1001), "idle timeout".into())]
        );
        // The client answers: clean end of the handshake, no second terminal event.
        s.feed(&f[3..]);
        s.feed(&close_frame(1001, b""));
        assert!(s.take_events().is_empty());
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Graceful));
    }

    #[test]
    fn a_message_larger_than_max_outbound_fits_an_empty_queue() {
        let mut s = Shell::new(WsLimits {
            max_outbound: 100,
            ..limits()
        });
        let now = s.now;
        let big = vec![3; 500];
        assert_eq!(
            s.conn
                .send_message(WsMessage::Binary(Bytes::from(big.clone())), now, &mut s.out),
            Ok(())
        );
        assert_eq!(s.conn.poll_event(), None);
        s.flush();
        assert_eq!(s.take_wire(), [Srv::Binary(big)]);
    }

    #[test]
    fn slow_consumer_closes_1008() {
        let mut s = Shell::new(WsLimits {
            max_outbound: 100,
            ..limits()
        });
        let now = s.now;
        s.conn
            .send_message(WsMessage::Binary(Bytes::from(vec![7; 50])), now, &mut s.out)
            .unwrap();
        // Not flushed: the client is not reading.
        assert_eq!(
            s.conn
                .send_message(WsMessage::Text("x".repeat(60).into()), now, &mut s.out),
            Ok(())
        );
        assert_eq!(s.conn.poll_event(), Some(abort("ws_slow_consumer")));
        assert_eq!(
            s.conn
                .send_message(WsMessage::Text("x".into()), now, &mut s.out),
            Err(SendError::Closed)
        );
        s.flush();
        assert_eq!(
            s.take_wire(),
            [
                Srv::Binary(vec![7; 50]),
                Srv::Close(Some(1008), "slow consumer".into())
            ]
        );
        // A ping flood from a client that never reads also hits the bound.
        let mut s = Shell::new(WsLimits {
            max_outbound: 1000,
            ..limits()
        });
        let now = s.now;
        let ping = masked(true, 9, &[1; 100]);
        for _ in 0..20 {
            s.conn.handle_input(&ping, now, &mut s.out);
        }
        assert!(s.out.len() <= 1000 + 2 + 2 + "slow consumer".len());
        let pings = std::iter::from_fn(|| s.conn.poll_event())
            .filter(|e| matches!(e, Event::Ws(WsEvent::Ping(_))))
            .count();
        assert_eq!(pings, 9, "9 pongs of 102 bytes fit in 1000");
        s.flush();
        let wire = s.take_wire();
        assert_eq!(
            wire.last(),
            Some(&Srv::Close(Some(1008), "slow consumer".into()))
        );
    }

    #[test]
    fn event_queue_is_bounded() {
        let input: Vec<u8> = (0..200)
            .flat_map(|i| masked(true, 1, format!("{i}").as_bytes()))
            .collect();
        let mut s = Shell::new(limits());
        let now = s.now;
        s.conn.handle_input(&input, now, &mut s.out);
        assert_eq!(s.conn.events.len(), MAX_QUEUED_EVENTS);
        assert!(!s.conn.wants_read());
        assert_eq!(s.conn.poll_timeout(), s.conn.timers.next());
        s.conn.poll_event();
        assert!(!s.conn.wants_read(), "parked input first");
        assert_eq!(s.conn.poll_timeout(), Some(now));
        s.pump();
        let want: Vec<Event> = (0..200).map(|i| text(&format!("{i}"))).collect();
        let mut got = vec![text("0")];
        got.extend(s.take_events());
        assert_eq!(got, want);
        assert!(s.conn.wants_read());
        // A shell that reads anyway: the input is parked behind, in order.
        let mut s = Shell::new(limits());
        s.conn
            .handle_input(&input[..input.len() / 2], now, &mut s.out);
        s.conn
            .handle_input(&input[input.len() / 2..], now, &mut s.out);
        assert_eq!(s.conn.events.len(), MAX_QUEUED_EVENTS);
        s.pump();
        assert_eq!(s.take_events(), want);
        // EOF behind parked input waits for it.
        let mut s = Shell::new(limits());
        s.conn.handle_input(&input, now, &mut s.out);
        s.conn.handle_eof(now, &mut s.out);
        assert_eq!(s.conn.shutdown(), None);
        s.pump();
        assert_eq!(s.events.len(), 201);
        assert_eq!(s.events.last(), Some(&abort(ABORT_EOF)));
    }

    #[test]
    fn limits_at_and_one_past() {
        let l = limits();
        // Frame exactly max_frame; message exactly max_message, fragments ending mid-character.
        let (events, ..) = run_chunks(l.clone(), &[&masked(true, 2, &[1; 1000])]);
        assert_eq!(events, [binary(&[1; 1000])]);
        let (events, ..) = run_chunks(l.clone(), &[&masked(true, 2, &[1; 1001])]);
        assert_eq!(events, [abort("ws_frame_too_big")]);
        let mut msg = "€".repeat(999).into_bytes(); // 2997 bytes
        msg.extend_from_slice(b"abc");
        let frames = cat(&[
            masked(false, 1, &msg[..1000]),
            masked(false, 0, &msg[1000..2000]),
            masked(true, 0, &msg[2000..]),
        ]);
        let mut s = Shell::new(l.clone());
        for b in frames.chunks(1) {
            s.feed(b);
        }
        let events = s.take_events();
        let Some(Event::Ws(WsEvent::Message(WsMessage::Text(t)))) = events.first() else {
            panic!("{events:?}")
        };
        assert_eq!(t.as_bytes(), &msg[..]);
        assert!(t.len() <= l.max_message, "message past the limit");
        // One byte more; the carried partial character counts too.
        msg.push(b'd');
        let frames = cat(&[
            masked(false, 1, &msg[..1000]),
            masked(false, 0, &msg[1000..2000]),
            masked(false, 0, &msg[2000..3000]),
            masked(true, 0, &msg[3000..]),
        ]);
        let (events, wire, _) = run_all_splits(l, &frames);
        assert_eq!(events, [abort("ws_message_too_big")]);
        assert_eq!(wire, [Srv::Close(Some(1009), "message too big".into())]);
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_ends() {
        // Autobahn 6.4.3/6.4.4: one frame sent in three chops.
        let payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited";
        let f = masked(true, 1, payload);
        let hdr = f.len() - payload.len();
        let mut s = Shell::new(limits());
        s.feed(&f[..hdr + 12]);
        assert!(s.take_events().is_empty());
        s.feed(&f[hdr + 12..hdr + 13]);
        assert_eq!(s.take_events(), [abort("ws_invalid_utf8")]);
        assert_eq!(
            s.take_wire(),
            [Srv::Close(
                Some(1007),
                "invalid UTF-8 in text message".into()
            )]
        );
        // The rest of the frame and the client's close are still parsed.
        s.feed(&f[hdr + 13..]);
        s.feed(&close_frame(1000, b""));
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Graceful));
    }

    /// One message of a random session: text or binary, in fragments,
    /// with pings between fragments.
    /// (is text, payload, fragment cuts, ping after fragment i).
    type MessagePlan = (bool, Vec<u8>, Vec<usize>, Vec<bool>);

    fn session() -> impl Strategy<Value = Vec<MessagePlan>> {
        let msg = prop_oneof![
            "\\PC{0,40}".prop_map(|s| (true, s.into_bytes())),
            proptest::collection::vec(any::<u8>(), 0..120).prop_map(|b| (false, b)),
        ];
        proptest::collection::vec(
            (
                msg,
                proptest::collection::vec(0usize..200, 0..4),
                proptest::collection::vec(any::<bool>(), 4),
            )
                .prop_map(|((t, b), cuts, pings)| (t, b, cuts, pings)),
            0..8,
        )
    }

    proptest! {
        /// Arbitrary bytes (mostly well-framed, sometimes not), in arbitrary
        /// chunks: no panic, bounded queues, one terminal event, last.
        #[test]
        fn arbitrary_input_is_survived(
            frames in proptest::collection::vec(
                (any::<bool>(), 0u8..4, 0u8..16, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..140)),
                0..12,
            ),
            noise in proptest::collection::vec(any::<u8>(), 0..16),
            step in 1usize..50,
        ) {
            let mut input: Vec<u8> = frames
                .iter()
                .flat_map(|(fin, rsv, op, mask, p)| {
                    let rsv = if *rsv == 3 { 1 } else { 0 };
                    frame(*fin, rsv, *op, mask.then_some([1, 2, 3, 4]), p)
                })
                .collect();
            input.extend(noise);
            let mut s = Shell::new(WsLimits { max_frame: 100, max_message: 200, ..limits() });
            for chunk in input.chunks(step) {
                s.feed(chunk);
                prop_assert!(s.conn.events.len() <= MAX_QUEUED_EVENTS + 1);
                prop_assert!(s.conn.control.len() <= MAX_CONTROL_PAYLOAD);
                prop_assert!(s.conn.message.as_ref().is_none_or(|m| m.len() <= 200));
            }
            s.eof();
            s.advance(Duration::from_secs(10));
            let events = s.take_events();
            let terminal = events.iter().filter(|e| matches!(e, Event::End | Event::Abort(_))).count();
            prop_assert_eq!(terminal, 1);
            prop_assert!(matches!(events.last(), Some(Event::End | Event::Abort(_))));
            prop_assert!(s.conn.shutdown().is_some());
            prop_assert_eq!(s.conn.poll_timeout(), None);
            parse_server(&s.wire);
        }

        #[test]
        fn random_sessions_round_trip(
            messages in session(),
            chunk_cuts in proptest::collection::vec(0usize..4000, 0..12),
        ) {
            let mut input = Vec::new();
            let mut expect = Vec::new();
            let mut expect_wire = Vec::new();
            for (i, (is_text, payload, cuts, pings)) in messages.iter().enumerate() {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (payload.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.push(payload.len());
                let mut last = 0;
                for (j, &c) in cuts.iter().enumerate() {
                    let op = if j > 0 { 0 } else if *is_text { 1 } else { 2 };
                    let key = [i as u8, j as u8, 0x5a, 0xa5];
                    input.extend(frame(j + 1 == cuts.len(), 0, op, Some(key), &payload[last..c]));
                    last = c;
                    if j + 1 == cuts.len() {
                        if *is_text {
                            let s = String::from_utf8(payload.clone()).unwrap();
                            expect_wire.push(Srv::Text(s.clone()));
                            expect.push(text(&s));
                        } else {
                            expect_wire.push(Srv::Binary(payload.clone()));
                            expect.push(binary(payload));
                        }
                    }
                    if pings.get(j) == Some(&true) {
                        let p = format!("ping {i}.{j}").into_bytes();
                        input.extend(masked(true, 9, &p));
                        expect.push(Event::Ws(WsEvent::Ping(Bytes::from(p.clone()))));
                        expect_wire.push(Srv::Pong(p));
                    }
                }
            }
            let mut cuts: Vec<usize> = chunk_cuts.iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut s = Shell::new(limits()).echoing();
            let mut last = 0;
            for c in cuts {
                s.feed(&input[last..c]);
                last = c;
            }
            s.feed(&input[last..]);
            prop_assert_eq!(s.take_events(), expect);
            // Echoes and pongs may interleave differently; each kind keeps its order.
            let wire = s.take_wire();
            let (pongs, msgs): (Vec<_>, Vec<_>) = wire.into_iter().partition(|f| matches!(f, Srv::Pong(_)));
            let (want_pongs, want_msgs): (Vec<_>, Vec<_>) = expect_wire.into_iter().partition(|f| matches!(f, Srv::Pong(_)));
            prop_assert_eq!(pongs, want_pongs);
            prop_assert_eq!(msgs, want_msgs);
            prop_assert_eq!(s.conn.shutdown(), None);
            prop_assert!(s.conn.wants_read());
        }
    }

    // ----- permessage-deflate ----------------------------------------------

    fn run_deflate(limits: WsLimits, chunks: &[&[u8]]) -> Outcome {
        let mut s = Shell::deflate(limits);
        for c in chunks {
            s.feed(c);
        }
        let shutdown = s.conn.shutdown();
        (s.take_events(), s.take_wire(), shutdown)
    }

    /// Whole, one byte at a time, and split at every offset: same outcome.
    fn run_deflate_all_splits(limits: WsLimits, input: &[u8]) -> Outcome {
        let whole = run_deflate(limits.clone(), &[input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run_deflate(limits.clone(), &bytes), whole, "byte at a time");
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(run_deflate(limits.clone(), &[a, b]), whole, "split at {i}");
        }
        whole
    }

    /// A compressed client frame (RSV1 set when `first`).
    fn zframe(fin: bool, first: bool, opcode: u8, body: &[u8]) -> Vec<u8> {
        frame(
            fin,
            if first { 4 } else { 0 },
            opcode,
            Some([9, 8, 7, 6]),
            body,
        )
    }

    #[test]
    fn compressed_messages_in_any_split() {
        let kosme = "κόσμε κόσμε κόσμε".as_bytes();
        let z = deflated(kosme);
        let bin: Vec<u8> = (0..200u8).map(|i| i % 7).collect();
        let zb = deflated(&bin);
        let input = cat(&[
            // RFC 7692 §7.2.3.1: "Hello".
            zframe(true, true, 1, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]),
            // A compressed text split mid-character, with a ping between.
            zframe(false, true, 1, &z[..3]),
            masked(true, 9, b"p"),
            zframe(false, false, 0, &z[3..]),
            zframe(true, false, 0, b""),
            // Uncompressed messages still work.
            masked(true, 1, b"plain"),
            zframe(true, true, 2, &zb),
            // An empty compressed message.
            zframe(true, true, 2, &[0x00]),
            close_frame(1000, b""),
        ]);
        let (events, wire, shutdown) = run_deflate_all_splits(limits(), &input);
        assert_eq!(
            events,
            [
                text("Hello"),
                Event::Ws(WsEvent::Ping(Bytes::from_static(b"p"))),
                text("κόσμε κόσμε κόσμε"),
                text("plain"),
                binary(&bin),
                binary(b""),
                closed(Some(1000), ""),
                Event::End,
            ]
        );
        assert_eq!(
            wire,
            [
                Srv::Pong(b"p".to_vec()),
                Srv::Close(Some(1000), String::new())
            ]
        );
        assert_eq!(shutdown, Some(Shutdown::Graceful));
    }

    #[test]
    fn rsv1_where_not_allowed_is_1002() {
        let z = deflated(b"abc");
        for input in [
            // RSV1 on a continuation frame.
            cat(&[zframe(false, true, 1, &z), zframe(true, true, 0, b"")]),
            // RSV1 on a control frame.
            zframe(true, true, 9, b""),
        ] {
            let (events, wire, _) = run_deflate_all_splits(limits(), &input);
            assert_eq!(events, [abort("ws_reserved_bits")]);
            assert_eq!(wire, [Srv::Close(Some(1002), "reserved bits set".into())]);
        }
        // Not negotiated: RSV1 is reserved as before.
        let (events, ..) = run_chunks(limits(), &[&zframe(true, true, 1, &z)]);
        assert_eq!(events, [abort("ws_reserved_bits")]);
    }

    #[test]
    fn inflated_text_is_validated_and_bad_deflate_is_1007() {
        let (events, wire, _) =
            run_deflate_all_splits(limits(), &zframe(true, true, 1, &deflated(b"ok \xff no")));
        assert_eq!(events, [abort("ws_invalid_utf8")]);
        assert_eq!(
            wire,
            [Srv::Close(
                Some(1007),
                "invalid UTF-8 in text message".into()
            )]
        );
        // Ends mid-character.
        let (events, ..) =
            run_deflate_all_splits(limits(), &zframe(true, true, 1, &deflated(b"ok \xce")));
        assert_eq!(events, [abort("ws_invalid_utf8")]);
        let (events, wire, _) =
            run_deflate_all_splits(limits(), &zframe(true, true, 2, &[0xff, 0xfe, 0xfd]));
        assert_eq!(events, [abort("ws_invalid_deflate")]);
        assert_eq!(
            wire,
            [Srv::Close(Some(1007), "invalid compressed data".into())]
        );
        // A back-reference into a previous message: no context takeover.
        let z = deflated(b"abcdefghabcdefgh");
        let (events, ..) = run_deflate(
            limits(),
            &[
                &zframe(true, true, 2, &deflated(b"abcdefgh")),
                &zframe(true, true, 2, &z[z.len() / 2..]),
            ],
        );
        assert_eq!(events.first(), Some(&binary(b"abcdefgh")));
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn inflated_size_counts_against_max_message() {
        let l = limits(); // max_frame 1000, max_message 3000
                          // A compressed frame may pass max_frame by DEFLATE's expansion.
        let noise = deflate::tests::noise(0x2545_f491_4f6c_dd1du64, 1000);
        let z = deflated(&noise);
        assert!(z.len() > 1000 && z.len() <= deflate::max_compressed(1000));
        let (events, ..) = run_deflate(l.clone(), &[&zframe(true, true, 2, &z)]);
        assert_eq!(events, [binary(&noise)]);
        let over = vec![0; deflate::max_compressed(1000) + 1];
        let (events, ..) = run_deflate(l.clone(), &[&zframe(true, true, 2, &over)]);
        assert_eq!(events, [abort("ws_frame_too_big")]);
        // Exactly max_message inflated, from a frame far smaller.
        let (events, ..) =
            run_deflate_all_splits(l.clone(), &zframe(true, true, 2, &deflated(&[7; 3000])));
        assert_eq!(events, [binary(&[7; 3000])]);
        // One byte more, across two fragments.
        let z = deflated(&[7; 3001]);
        let input = cat(&[
            zframe(false, true, 2, &z[..5]),
            zframe(true, false, 0, &z[5..]),
        ]);
        let (events, wire, _) = run_deflate_all_splits(l.clone(), &input);
        assert_eq!(events, [abort("ws_message_too_big")]);
        assert_eq!(wire, [Srv::Close(Some(1009), "message too big".into())]);
        // A bomb: 8 MiB of zeros in one frame under max_frame; stopped at
        // the limit, the decompressor released, the buffers bounded.
        let bomb = deflated(&vec![0; 8 << 20]);
        let l = WsLimits {
            max_frame: bomb.len(),
            ..l
        };
        let mut s = Shell::deflate(l);
        let f = zframe(true, true, 2, &bomb);
        for piece in f.chunks(1000) {
            s.feed(piece);
            assert!(s.conn.message.as_ref().is_none_or(|m| m.len() <= 3000));
            assert!(s.conn.footprint() <= 3000 + INFLATER_FOOTPRINT + INFLATE_CHUNK + 64 * 1024);
        }
        assert_eq!(s.take_events(), [abort("ws_message_too_big")]);
        assert!(s.conn.inflater.is_none());
        assert_eq!(s.conn.footprint(), 0);
        s.feed(&close_frame(1000, b""));
        assert_eq!(s.conn.shutdown(), Some(Shutdown::Graceful));
    }

    #[test]
    fn outbound_messages_are_compressed() {
        let mut s = Shell::deflate(limits()).echoing();
        let long = "sigma ".repeat(100);
        s.feed(&masked(true, 1, long.as_bytes()));
        s.feed(&zframe(true, true, 1, &deflated(b"tiny")));
        let noise = deflate::tests::noise(0x9e37_79b9_7f4a_7c15u64, 500);
        s.feed(&masked(true, 2, &noise));
        let wire = s.wire.clone();
        // Every message went out compressed (RSV1), even tiny or noise.
        assert_eq!(wire[0], 0xc1);
        assert!(usize::from(wire[1]) < 100);
        let rest = &wire[2 + usize::from(wire[1])..];
        assert_eq!(rest[0], 0xc1);
        let rest = &rest[2 + usize::from(rest[1])..];
        assert_eq!(rest[0], 0xc2);
        assert_eq!(
            s.take_wire(),
            [
                Srv::Text(long.clone()),
                Srv::Text("tiny".into()),
                Srv::Binary(noise)
            ]
        );
        // No extension: never RSV1.
        let mut s = Shell::new(limits()).echoing();
        s.feed(&masked(true, 1, long.as_bytes()));
        assert_eq!(s.wire[0], 0x81);
        // server_max_window_bits=8: accepted, but we never compress.
        let mut s = Shell::new(limits()).echoing();
        let p = DeflateParams {
            server_max_window_bits: 8,
            ..agreed()
        };
        s.conn = WsConn::with_deflate(limits(), Some(p), s.now);
        s.feed(&masked(true, 1, long.as_bytes()));
        assert_eq!(s.wire[0], 0x81);
        // An idle compressed socket holds no zlib state.
        assert!(s.conn.inflater.is_none() && s.conn.inflated.capacity() == 0);
    }

    proptest! {
        /// Random messages compressed as a client would, fragmented and
        /// chunked at random: the same messages come out, and echoed back
        /// (compressed or not) they read the same.
        #[test]
        fn compressed_sessions_round_trip(
            messages in session(),
            compress in proptest::collection::vec(any::<bool>(), 8),
            chunk_cuts in proptest::collection::vec(0usize..4000, 0..12),
        ) {
            let mut input = Vec::new();
            let mut expect = Vec::new();
            let mut expect_wire = Vec::new();
            for (i, (is_text, payload, cuts, _)) in messages.iter().enumerate() {
                let z = compress.get(i) == Some(&true);
                let body = if z { deflated(payload) } else { payload.clone() };
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.push(body.len());
                let mut last = 0;
                for (j, &c) in cuts.iter().enumerate() {
                    let op = if j > 0 { 0 } else if *is_text { 1 } else { 2 };
                    let rsv = if z && j == 0 { 4 } else { 0 };
                    input.extend(frame(j + 1 == cuts.len(), rsv, op, Some([i as u8, 1, 2, 3]), &body[last..c]));
                    last = c;
                }
                if *is_text {
                    let s = String::from_utf8(payload.clone()).unwrap();
                    expect_wire.push(Srv::Text(s.clone()));
                    expect.push(text(&s));
                } else {
                    expect_wire.push(Srv::Binary(payload.clone()));
                    expect.push(binary(payload));
                }
            }
            let mut cuts: Vec<usize> = chunk_cuts.iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut s = Shell::deflate(limits()).echoing();
            let mut last = 0;
            for c in cuts {
                s.feed(&input[last..c]);
                last = c;
            }
            s.feed(&input[last..]);
            prop_assert_eq!(s.take_events(), expect);
            prop_assert_eq!(s.take_wire(), expect_wire);
            prop_assert!(s.conn.inflater.is_none());
        }
    }
}
