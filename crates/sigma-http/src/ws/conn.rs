//! One open server-side WebSocket: frames in, events out, frames back
//! (RFC 6455 §5–§7).
//!
//! Place in `T → H → A`: inside `H`, after the 101 response. The left side
//! takes the client's bytes ([`WsConn::handle_input`]) and appends our frames
//! to the connection's [`OutBuf`]; the right side hands complete, validated
//! messages, pings and the close to `A` as [`Event`]s and takes messages
//! and closes back ([`WsConn::send_message`], [`WsConn::send_close`]).
//!
//! Invariants: every byte is looked at once, as it arrives (headers through
//! a 14-byte decoder, payloads unmasked, UTF-8-checked and appended in one
//! pass), so text is rejected on the first impossible byte even mid-frame;
//! the message buffer never exceeds `max_message`, control payloads never
//! exceed 125 bytes, at most [`MAX_QUEUED_EVENTS`] events wait unpolled
//! (past that the rest of a read is parked and [`WsConn::wants_read`] is
//! false), and the outbound queue never exceeds `max_outbound` except by the
//! one close frame that reports the breach.
//!
//! Ordering: a close frame that answers input (our reply to the client's
//! close, or the close that reports a protocol error) is held until the
//! application has polled the events before it, so the replies to earlier
//! messages go out first (Autobahn 3.x, 4.x, 7.1.x). While one is held,
//! [`WsConn::poll_timeout`] returns an instant already passed, and the next
//! [`WsConn::handle_timeout`] (or any call with the `OutBuf`) queues it.
//! Pongs are queued at once.
//!
//! Not here: the opening handshake (`handshake.rs`), socket IO, the clock,
//! the slow-read (write stall) deadline, which the connection owning the
//! `OutBuf` enforces, permessage-deflate, and fragmenting outbound messages.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::close;
use super::error::ProtocolError;
use super::frame::{encode_header, FrameHeader, HeaderDecoder, OpCode, MAX_CONTROL_PAYLOAD};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;
use crate::error::SendError;
use crate::event::{AbortReason, Event, WsEvent, WsMessage};
use crate::io::OutBuf;
use crate::limits::WsLimits;
use crate::timer::{Timer, TimerTable};
use crate::Shutdown;

/// Unpolled events past which parsing pauses and [`WsConn::wants_read`] is false.
pub const MAX_QUEUED_EVENTS: usize = 64;

/// Text payload is unmasked through a stack buffer of this size.
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

/// A data message being reassembled.
#[derive(Debug)]
enum Partial {
    Text { text: String, utf8: Utf8Validator },
    Binary(Vec<u8>),
}

impl Partial {
    fn len(&self) -> usize {
        match self {
            Self::Text { text, utf8 } => text.len().saturating_add(utf8.pending()),
            Self::Binary(v) => v.len(),
        }
    }
}

/// The capacity to reserve so that `len + additional` bytes fit, doubling
/// as usual but never past `max` (the message limit).
fn bounded_capacity(len: usize, cap: usize, additional: usize, max: usize) -> usize {
    let need = len.saturating_add(additional);
    if need <= cap {
        return cap;
    }
    cap.saturating_mul(2).max(need).min(max.max(need))
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
}

impl WsConn {
    /// An open WebSocket, created right after the 101 response was queued.
    pub fn new(limits: WsLimits, now: Instant) -> Self {
        let mut conn = Self {
            limits,
            state: State::Open,
            reader: Reader::Header(HeaderDecoder::new()),
            message: None,
            control: Vec::new(),
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
        };
        conn.arm_keepalive(now);
        conn
    }

    // ----- inputs -----------------------------------------------------------

    /// Bytes from the client. May queue pongs and close frames into `out`.
    pub fn handle_input(&mut self, data: &[u8], now: Instant, out: &mut OutBuf) {
        self.now = now;
        self.release_held(now, out);
        if !self.is_reading() || self.eof {
            return;
        }
        if self.backlog_at < self.backlog.len() {
            // The shell read while we asked it not to: park and go on.
            self.backlog.extend_from_slice(data);
            self.drive(now, out);
            return;
        }
        let used = self.process(data, now, out);
        if let Some(rest) = data.get(used..) {
            if !rest.is_empty() && self.is_reading() {
                self.backlog.clear();
                self.backlog.extend_from_slice(rest);
                self.backlog_at = 0;
            }
        }
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
        Some(ev)
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
        if !matches!(self.state, State::Open | State::CloseOwed { .. }) {
            return Err(SendError::Closed);
        }
        let (opcode, payload): (OpCode, &[u8]) = match &msg {
            WsMessage::Text(s) => (OpCode::Text, s.as_bytes()),
            WsMessage::Binary(b) => (OpCode::Binary, b),
        };
        if !self.fits_outbound(out, payload.len()) {
            self.slow_consumer(now, out);
            return Ok(());
        }
        write_frame(opcode, payload, now, out);
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

    // ----- state transitions ------------------------------------------------

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
        self.events.push_back(ev);
        self.pushed += 1;
    }

    /// Queues the last event (`End` or `Abort`) unless one is queued already.
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
        self.message = None;
        self.state = State::CloseSent { held };
        self.arm_close_deadline(now);
    }

    fn enter_close_owed(&mut self, close: HeldClose, now: Instant) {
        self.message = None;
        let was_closing = matches!(self.state, State::CloseSent { .. });
        self.state = State::CloseOwed { close };
        if !was_closing {
            self.arm_close_deadline(now);
        }
        self.drop_input();
    }

    fn enter_closed(&mut self) {
        self.state = State::Closed;
        self.message = None;
        self.timers = TimerTable::default();
        self.drop_input();
    }

    fn enter_aborted(&mut self) {
        self.state = State::Aborted;
        self.message = None;
        self.timers = TimerTable::default();
        self.drop_input();
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
        let err = ProtocolError::SlowConsumer;
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
            _ => {}
        }
    }

    fn fits_outbound(&self, out: &OutBuf, payload: usize) -> bool {
        let frame = payload.saturating_add(10);
        out.len().saturating_add(frame) <= self.limits.max_outbound
    }

    fn write_close(&mut self, code: Option<u16>, reason: &str, now: Instant, out: &mut OutBuf) {
        let mut payload = Vec::with_capacity(MAX_CONTROL_PAYLOAD);
        close::encode_payload(code, reason, &mut payload);
        payload.truncate(MAX_CONTROL_PAYLOAD);
        write_frame(OpCode::Close, &payload, now, out);
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
                State::Open => self.open_sink(header).unwrap_or_else(|err| {
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
    fn open_sink(&mut self, header: FrameHeader) -> Result<Sink, ProtocolError> {
        let opcode = header.opcode.ok_or(ProtocolError::ReservedOpcode)?;
        if opcode.is_control() {
            self.control.clear();
            return Ok(Sink::Control(opcode));
        }
        let len = usize::try_from(header.len).map_err(|_| ProtocolError::FrameTooBig)?;
        if len > self.limits.max_frame {
            return Err(ProtocolError::FrameTooBig);
        }
        let so_far = match (opcode, &self.message) {
            (OpCode::Continuation, Some(m)) => m.len(),
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (_, None) => 0,
        };
        if so_far
            .checked_add(len)
            .is_none_or(|total| total > self.limits.max_message)
        {
            return Err(ProtocolError::MessageTooBig);
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
                if let Err(err) = self.append_data(chunk, frame.mask, frame.phase) {
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
    fn append_data(
        &mut self,
        chunk: &[u8],
        mask: Option<[u8; 4]>,
        phase: usize,
    ) -> Result<(), ProtocolError> {
        let max = self.limits.max_message;
        match &mut self.message {
            Some(Partial::Binary(data)) => {
                let start = data.len();
                let cap = bounded_capacity(start, data.capacity(), chunk.len(), max);
                data.reserve_exact(cap.saturating_sub(start));
                data.extend_from_slice(chunk);
                if let (Some(key), Some(new)) = (mask, data.get_mut(start..)) {
                    apply_mask(new, key, phase);
                }
                Ok(())
            }
            Some(Partial::Text { text, utf8 }) => {
                let cap = bounded_capacity(text.len(), text.capacity(), chunk.len(), max);
                text.reserve_exact(cap.saturating_sub(text.len()));
                let mut buf = [0u8; UNMASK_CHUNK];
                let mut phase = phase;
                for piece in chunk.chunks(UNMASK_CHUNK) {
                    let Some(tmp) = buf.get_mut(..piece.len()) else {
                        break;
                    };
                    tmp.copy_from_slice(piece);
                    if let Some(key) = mask {
                        apply_mask(tmp, key, phase);
                    }
                    phase = (phase + piece.len()) % 4;
                    utf8.push(tmp, text)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn end_frame(&mut self, frame: InFrame, now: Instant, out: &mut OutBuf) {
        self.reader = Reader::Header(HeaderDecoder::new());
        if self.state == State::Open {
            self.arm_keepalive(now);
        }
        match frame.sink {
            Sink::Discard | Sink::Control(OpCode::Pong) => {}
            Sink::Data if frame.fin => self.end_message(now),
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
                WsMessage::Text(text)
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

/// Appends one unmasked, unfragmented server frame.
fn write_frame(opcode: OpCode, payload: &[u8], now: Instant, out: &mut OutBuf) {
    let (header, n) = encode_header(true, opcode, payload.len());
    out.extend(header.get(..n).unwrap_or_default(), now);
    out.extend(payload, now);
}
