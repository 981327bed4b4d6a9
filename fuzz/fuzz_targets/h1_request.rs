//! Invariant: any bytes, fed to `ServerConn` whole or split anywhere, never panic; the events are well-formed (every `Request` is followed by `Body*` then `EndOfMessage`, or by an `Abort`; nothing follows `End`/`Abort`; an `Abort` status is 4xx/5xx), the same for every split, the output starts with `HTTP/1.1 `, the connection reaches a shutdown after EOF, and every deadline it reports changes something when it fires.
//!
//! Where it sits: `T → [H] → A`. This target plays both `T` (bytes in,
//! EOF) and a trivial `A` that answers every complete request with a 200,
//! so the send path, pipelining and keep-alive are exercised too.
//!
//! Input layout: byte 0 picks the limits (bit 0: small limits so the
//! 414/431/413 paths are reachable) and the split mode (bits 1–2); byte 1
//! seeds the split lengths; the rest is what the client sends.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sigma_fuzz::Input;
use sigma_http::{Event, Header, Limits, Method, Reply, Response, ServerConn, Shutdown};

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let (seed, data) = (input.seed, input.data);
    let limits = Arc::new(if input.small_limits() {
        small_limits()
    } else {
        Limits::default()
    });

    let whole = run(&limits, &[data]);
    let pieces = input.pieces();
    let split_run = run(&limits, &pieces);

    assert_eq!(
        whole.events,
        split_run.events,
        "whole vs split events differ ({} pieces)",
        pieces.len()
    );

    run_timed(&limits, &pieces, seed);
});

/// Third run: time moves between pieces (0–16 s), the client may stop
/// reading, and then every deadline `poll_timeout` reports must, when it
/// fires, change something: a deadline that fires and leaves the same
/// deadline behind is a busy loop in the shell.
fn run_timed(limits: &Arc<Limits>, pieces: &[&[u8]], seed: u8) {
    let t0 = Instant::now();
    let mut now = t0;
    let reads = seed & 1 == 0;
    let mut conn = ServerConn::new(Arc::clone(limits), t0);
    let mut out = Vec::new();
    let mut ck = Checker {
        at: At::Idle,
        events: Vec::new(),
        owed: 0,
    };
    let mut x = u32::from(seed) | 0x300;
    for p in pieces {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        now += Duration::from_millis(u64::from(x % 16_000));
        conn.handle_timeout(now);
        pump_with(&mut conn, &mut ck, &mut out, now, reads);
        conn.handle_input(p, now);
        pump_with(&mut conn, &mut ck, &mut out, now, reads);
    }
    for _ in 0..16 {
        let done = match conn.shutdown() {
            Some(Shutdown::Abort) => true,
            Some(Shutdown::Graceful) => conn.output().is_empty(),
            None => false,
        };
        if done {
            break;
        }
        let Some(deadline) = conn.poll_timeout() else {
            break;
        };
        let before = conn.shutdown();
        now = now.max(deadline);
        conn.handle_timeout(now);
        pump_with(&mut conn, &mut ck, &mut out, now, reads);
        assert!(
            conn.poll_timeout() != Some(deadline) || conn.shutdown() != before,
            "deadline fired at +{:?} and nothing changed (shutdown {before:?}, events {:?})",
            deadline - t0,
            ck.events
        );
    }
    out.extend_from_slice(conn.output());
    if !out.is_empty() {
        assert!(out.starts_with(b"HTTP/1.1 "));
    }
}

fn small_limits() -> Limits {
    Limits {
        max_request_line: 64,
        max_header_bytes: 256,
        max_headers: 8,
        max_body: 1024,
        max_chunk_extension: 16,
        max_trailer_bytes: 64,
        max_pipelined: 2,
        max_requests_per_connection: 5,
        ..Limits::default()
    }
}

/// A right-bound event, with bodies merged so that splits compare equal.
#[derive(Debug, PartialEq)]
enum Ev {
    Request(Box<sigma_http::RequestHead>),
    Body(Vec<u8>),
    End(Vec<Header>),
    Upgraded,
    Ws,
    PeerEnd,
    Abort(Option<u16>),
}

struct Outcome {
    events: Vec<Ev>,
}

/// Where the event stream is.
#[derive(Clone, Copy, PartialEq, Debug)]
enum At {
    Idle,
    InMessage,
    Closed,
}

struct Checker {
    at: At,
    events: Vec<Ev>,
    /// Complete requests not answered yet.
    owed: usize,
}

impl Checker {
    fn push(&mut self, ev: Event) {
        assert_ne!(self.at, At::Closed, "event after End/Abort: {ev:?}");
        match ev {
            Event::Request(head) => {
                assert_eq!(self.at, At::Idle, "Request inside a message");
                check_head(&head);
                self.at = At::InMessage;
                self.events.push(Ev::Request(Box::new(head)));
            }
            Event::Body(b) => {
                assert_eq!(self.at, At::InMessage, "Body outside a message");
                assert!(!b.is_empty(), "empty Body event");
                match self.events.last_mut() {
                    Some(Ev::Body(acc)) => acc.extend_from_slice(&b),
                    _ => self.events.push(Ev::Body(b.to_vec())),
                }
            }
            Event::EndOfMessage { trailers } => {
                assert_eq!(self.at, At::InMessage, "EndOfMessage outside a message");
                for h in &trailers {
                    check_header(h);
                }
                self.at = At::Idle;
                self.owed += 1;
                self.events.push(Ev::End(trailers));
            }
            Event::Upgraded { .. } => self.events.push(Ev::Upgraded),
            Event::Ws(_) => self.events.push(Ev::Ws),
            Event::End => {
                assert_eq!(self.at, At::Idle, "End inside a message");
                self.at = At::Closed;
                self.events.push(Ev::PeerEnd);
            }
            Event::Abort(reason) => {
                if let Some(s) = reason.status {
                    assert!((400..600).contains(&s), "abort status {s}");
                }
                self.at = At::Closed;
                self.events.push(Ev::Abort(reason.status));
            }
        }
    }
}

fn check_head(head: &sigma_http::RequestHead) {
    let t = &head.target[..];
    assert!(
        t.first() == Some(&b'/') || (t == b"*" && head.method == Method::Options),
        "target {t:?}"
    );
    assert!(
        t.iter().all(|&b| (0x21..=0x7e).contains(&b)),
        "target bytes {t:?}"
    );
    for h in &head.headers {
        check_header(h);
    }
}

fn check_header(h: &Header) {
    assert!(!h.name.is_empty(), "empty header name");
    assert!(
        h.name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
        "header name {:?}",
        h.name
    );
    assert!(
        !h.value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
        "header value {:?}",
        h.value
    );
}

fn run(limits: &Arc<Limits>, pieces: &[&[u8]]) -> Outcome {
    let t0 = Instant::now();
    let now = t0 + Duration::from_millis(1);
    let mut conn = ServerConn::new(Arc::clone(limits), t0);
    let mut out = Vec::new();
    let mut ck = Checker {
        at: At::Idle,
        events: Vec::new(),
        owed: 0,
    };
    for p in pieces {
        conn.handle_input(p, now);
        pump(&mut conn, &mut ck, &mut out, now);
    }
    conn.handle_eof(now);
    pump(&mut conn, &mut ck, &mut out, now);

    if !out.is_empty() {
        assert!(
            out.starts_with(b"HTTP/1.1 "),
            "output {:?}",
            String::from_utf8_lossy(&out)
        );
    }
    if let Some(Ev::Abort(Some(s))) = ck.events.last() {
        let line = format!("HTTP/1.1 {s} ");
        assert!(
            out.windows(line.len()).any(|w| w == line.as_bytes()),
            "abort status {s} not in output"
        );
    }
    // After EOF and with every request answered, nothing may hang.
    if !conn.is_websocket() {
        assert!(
            conn.shutdown().is_some(),
            "no shutdown after EOF; events {:?}",
            ck.events
        );
        assert!(!conn.wants_read());
    }
    if conn.shutdown() == Some(Shutdown::Graceful) {
        // Closing on our own (Connection: close) needs no End, but a
        // message cut off half-way must have been reported.
        assert!(ck.at != At::InMessage, "graceful shutdown inside a message");
    }
    // A late timer must not panic either.
    conn.handle_timeout(t0 + Duration::from_secs(3600));
    let _ = conn.poll_timeout();
    Outcome { events: ck.events }
}

/// Drains events and answers every complete request, until nothing moves.
fn pump(conn: &mut ServerConn, ck: &mut Checker, out: &mut Vec<u8>, now: Instant) {
    pump_with(conn, ck, out, now, true);
}

/// `pump`; the client takes the output only when `reads`.
fn pump_with(
    conn: &mut ServerConn,
    ck: &mut Checker,
    out: &mut Vec<u8>,
    now: Instant,
    reads: bool,
) {
    loop {
        let mut moved = false;
        while let Some(ev) = conn.poll_event() {
            ck.push(ev);
            moved = true;
        }
        while ck.owed > 0 {
            ck.owed -= 1;
            let resp = Response::new(200, vec![Header::new("X-Fuzz", "1")], "ok");
            // A refused send is fine (e.g. after an upgrade or an abort);
            // a panic is not.
            if conn.send(Reply::Response(resp), now).is_ok() {
                moved = true;
            }
        }
        let n = conn.output().len();
        if reads && n > 0 {
            out.extend_from_slice(conn.output());
            conn.handle_written(n, now);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}
