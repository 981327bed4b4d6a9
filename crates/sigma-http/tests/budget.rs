//! Invariant: whatever the order of events on connections that share one
//! `MemoryBudget` (inputs in random splits, replies, shared sends, partial
//! writes, timeouts, aborts, drops), the budget's counter never exceeds
//! its cap, always equals what the live connections hold, covers what
//! they keep allocated (capacities, not lengths), and returns to 0 once
//! every connection is dropped.
//!
//! Place in `T → H`: drives `ServerConn` in memory, as the shell would,
//! with time advanced by hand. Also: a WebSocket message that would pass
//! the budget closes 1009, an outbound one 1008, a request 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use sigma_http::{Event, Limits, MemoryBudget, Reply, Response, ServerConn, WsEvent, WsMessage};

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// One masked client frame.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let key = [1u8, 2, 3, 4];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The bytes one client sends: HTTP requests with bodies, or an upgrade
/// followed by (possibly fragmented) messages.
fn script(ws: bool, sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    if ws {
        out.extend_from_slice(UPGRADE);
        for (i, &n) in sizes.iter().enumerate() {
            let payload = vec![b'a' + (i % 26) as u8; n];
            let half = n / 2;
            out.extend(frame(0x2, false, &payload[..half]));
            out.extend(frame(0x0, true, &payload[half..]));
        }
    } else {
        for &n in sizes {
            out.extend_from_slice(
                format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n").as_bytes(),
            );
            out.extend(std::iter::repeat_n(b'x', n));
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Step {
    /// Feed the next `n` bytes of connection `c`'s script.
    Input(usize, usize),
    /// Answer what connection `c` produced (responses, accepts, echoes).
    Reply(usize),
    /// Queue a shared message of this size on connection `c` (if WebSocket).
    Send(usize, usize),
    /// The client takes `n` bytes of connection `c`'s output.
    Written(usize, usize),
    /// Time passes (seconds), deadlines fire.
    Timeout(usize, u64),
    /// The destination aborts connection `c`.
    Abort(usize),
    /// Connection `c` is dropped (the socket went away).
    Drop(usize),
    /// The client's EOF.
    Eof(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let c = 0..2usize;
    prop_oneof![
        6 => (c.clone(), 1..3000usize).prop_map(|(c, n)| Step::Input(c, n)),
        4 => c.clone().prop_map(Step::Reply),
        2 => (c.clone(), 0..20_000usize).prop_map(|(c, n)| Step::Send(c, n)),
        4 => (c.clone(), 0..30_000usize).prop_map(|(c, n)| Step::Written(c, n)),
        1 => (c.clone(), 0..40u64).prop_map(|(c, s)| Step::Timeout(c, s)),
        1 => c.clone().prop_map(Step::Abort),
        1 => c.clone().prop_map(Step::Drop),
        1 => c.prop_map(Step::Eof),
    ]
}

struct Side {
    conn: Option<ServerConn>,
    script: Vec<u8>,
    at: usize,
}

fn reply_all(conn: &mut ServerConn, now: Instant, body: usize) {
    while let Some(ev) = conn.poll_event() {
        match ev {
            Event::Request(head) if head.websocket.is_some() => {
                let _ = conn.send(
                    Reply::Accept {
                        protocol: None,
                        headers: vec![],
                    },
                    now,
                );
            }
            Event::EndOfMessage { .. } if !conn.is_websocket() => {
                let _ = conn.send(
                    Reply::Response(Response::new(200, vec![], vec![b'r'; body])),
                    now,
                );
            }
            Event::Ws(WsEvent::Message(m)) => {
                let _ = conn.send(Reply::Ws(m), now);
            }
            _ => {}
        }
    }
}

/// How far a connection's reservation may trail its allocations.
const SLACK: usize = 1024;

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn reserved_is_always_released(
        cap in 1_000usize..120_000,
        ws in any::<[bool; 2]>(),
        sizes in prop::collection::vec(0..12_000usize, 1..6),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let budget = MemoryBudget::new(cap);
        let limits = Arc::new(Limits::default());
        let mut now = Instant::now();
        let shared = Bytes::from(vec![b's'; 20_000]);
        let mut sides: Vec<Side> = (0..2)
            .map(|i| Side {
                conn: Some(ServerConn::with_budget(Arc::clone(&limits), Arc::clone(&budget), now)),
                script: script(ws[i], &sizes),
                at: 0,
            })
            .collect();
        for s in steps {
            let c = match &s {
                Step::Input(c, _) | Step::Reply(c) | Step::Send(c, _) | Step::Written(c, _)
                | Step::Timeout(c, _) | Step::Abort(c) | Step::Drop(c) | Step::Eof(c) => *c,
            };
            let side = &mut sides[c];
            let Some(conn) = side.conn.as_mut() else { continue };
            match s {
                Step::Input(_, n) => {
                    let end = (side.at + n).min(side.script.len());
                    conn.handle_input(&side.script[side.at..end], now);
                    side.at = end;
                }
                Step::Reply(_) => reply_all(conn, now, sizes[0]),
                Step::Send(_, n) => {
                    if conn.is_websocket() {
                        let _ = conn.send(Reply::Ws(WsMessage::Binary(shared.slice(..n))), now);
                    }
                }
                Step::Written(_, n) => conn.handle_written(n, now),
                Step::Timeout(_, secs) => {
                    now += Duration::from_secs(secs);
                    conn.handle_timeout(now);
                }
                Step::Abort(_) => { let _ = conn.send(Reply::Abort, now); }
                Step::Drop(_) => side.conn = None,
                Step::Eof(_) => conn.handle_eof(now),
            }
            let held: usize = sides.iter().filter_map(|s| s.conn.as_ref()).map(ServerConn::budget_held).sum();
            prop_assert!(budget.used() <= cap, "used {} > cap {cap}", budget.used());
            prop_assert_eq!(budget.used(), held);
            // What is allocated is charged: the reservation trails the
            // buffers' capacities by at most one small control frame or
            // head queued after a refusal.
            for conn in sides.iter().filter_map(|s| s.conn.as_ref()) {
                prop_assert!(
                    conn.footprint() <= conn.budget_held() + SLACK,
                    "footprint {} > held {}", conn.footprint(), conn.budget_held()
                );
            }
        }
        drop(sides);
        prop_assert_eq!(budget.used(), 0);
    }
}

/// Drains all output into a byte vector.
fn take_output(conn: &mut ServerConn, now: Instant) -> Vec<u8> {
    let mut wire = Vec::new();
    while conn.output_len() > 0 {
        let front = conn.output().to_vec();
        conn.handle_written(front.len(), now);
        wire.extend(front);
    }
    wire
}

/// The close code of the last close frame in `wire` (server frames are unmasked).
fn close_code(wire: &[u8]) -> Option<u16> {
    let mut rest = wire;
    let mut code = None;
    while rest.len() >= 2 {
        let (op, len7) = (rest[0] & 0x0f, (rest[1] & 0x7f) as usize);
        let (len, hdr) = match len7 {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n, 2),
        };
        if op == 0x8 && len >= 2 {
            code = Some(u16::from_be_bytes([rest[hdr], rest[hdr + 1]]));
        }
        rest = &rest[(hdr + len).min(rest.len())..];
    }
    code
}

fn open_ws(budget: &Arc<MemoryBudget>, now: Instant) -> ServerConn {
    let mut c = ServerConn::with_budget(Arc::new(Limits::default()), Arc::clone(budget), now);
    c.handle_input(UPGRADE, now);
    reply_all(&mut c, now, 0);
    let head = take_output(&mut c, now);
    assert!(head.starts_with(b"HTTP/1.1 101"));
    c
}

#[test]
fn a_message_at_the_budget_fits_and_one_past_closes_1009() {
    let now = Instant::now();
    // What an open socket keeps allocated while idle (its output buffer's
    // kept capacity) is charged too.
    let probe = MemoryBudget::new(1 << 20);
    let idle = open_ws(&probe, now).budget_held();
    // The message buffer is charged by its capacity before it is
    // allocated; a message sent as one frame takes exactly its size.
    let msg = frame(0x2, true, &[7u8; 1000]);
    let budget = MemoryBudget::new(idle + 1000);
    let mut c = open_ws(&budget, now);
    c.handle_input(&msg, now);
    assert_eq!(budget.used(), idle + 1000, "exactly the message's size");
    assert!(matches!(
        c.poll_event(),
        Some(Event::Ws(WsEvent::Message(WsMessage::Binary(b)))) if b.len() == 1000
    ));
    assert_eq!(budget.used(), idle, "a polled message is released");
    drop(c);
    assert_eq!(budget.used(), 0);

    let budget = MemoryBudget::new(idle + 999);
    let mut c = open_ws(&budget, now);
    c.handle_input(&msg, now);
    let mut reasons = vec![];
    while let Some(ev) = c.poll_event() {
        if let Event::Abort(a) = ev {
            reasons.push(a.reason);
        }
    }
    assert_eq!(reasons, ["memory_budget"]);
    c.handle_timeout(now);
    assert_eq!(close_code(&take_output(&mut c, now)), Some(1009));
    drop(c);
    assert_eq!(budget.used(), 0);
}

#[test]
fn an_outbound_message_past_the_budget_closes_1008_and_others_go_on() {
    let now = Instant::now();
    let budget = MemoryBudget::new(50_000);
    let mut slow = open_ws(&budget, now);
    let mut other = open_ws(&budget, now);
    let big = Bytes::from(vec![1u8; 30_000]);
    slow.send(Reply::Ws(WsMessage::Binary(big.clone())), now)
        .unwrap();
    assert!(budget.used() >= 30_000);
    // The second copy would pass the cap: that socket is closed 1008, alone.
    other
        .send(Reply::Ws(WsMessage::Binary(big.clone())), now)
        .unwrap();
    assert!(budget.used() <= 50_000);
    assert_eq!(close_code(&take_output(&mut other, now)), Some(1008));
    let wire = take_output(&mut slow, now);
    assert_eq!(wire.len(), 30_000 + 4);
    assert_eq!(close_code(&wire), None);
    drop((slow, other));
    assert_eq!(budget.used(), 0);
}

/// The opcodes of the frames in `wire` (server frames are unmasked).
fn opcodes(wire: &[u8]) -> Vec<u8> {
    let mut rest = wire;
    let mut ops = vec![];
    while rest.len() >= 2 {
        let (op, len7) = (rest[0] & 0x0f, (rest[1] & 0x7f) as usize);
        let (len, hdr) = match len7 {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n, 2),
        };
        ops.push(op);
        rest = &rest[(hdr + len).min(rest.len())..];
    }
    ops
}

#[test]
fn a_pong_the_budget_cannot_hold_closes_1008_without_doubling_the_queue() {
    // A client that sends a message, never reads the echo, then pings:
    // the pong would double the queue's buffer. It is refused (1008) and
    // only the close frame trails the reservation.
    let now = Instant::now();
    let probe = MemoryBudget::new(1 << 20);
    let idle = open_ws(&probe, now).budget_held();
    let budget = MemoryBudget::new(idle + 3_200);
    let mut c = open_ws(&budget, now);
    c.handle_input(&frame(0x2, true, &[7u8; 3_000]), now);
    reply_all(&mut c, now, 0);
    let queued = c.budget_held();
    assert!(c.output_len() >= 3_000, "the echo waits");
    c.handle_input(&frame(0x9, true, b"hi"), now);
    let mut reasons = vec![];
    while let Some(ev) = c.poll_event() {
        if let Event::Abort(a) = ev {
            reasons.push(a.reason);
        }
    }
    assert_eq!(reasons, ["memory_budget"]);
    assert!(
        c.footprint() <= c.budget_held() + 127,
        "footprint {} > held {}",
        c.footprint(),
        c.budget_held()
    );
    assert!(c.budget_held() >= queued);
    let wire = take_output(&mut c, now);
    assert_eq!(opcodes(&wire), [0x2, 0x8], "the echo, no pong, the close");
    assert_eq!(close_code(&wire), Some(1008));
    drop(c);
    assert_eq!(budget.used(), 0);
}

#[test]
fn a_503_behind_an_unread_response_does_not_double_the_queue() {
    // The client pipelines a second request past the budget without
    // reading the first response: the 503 goes out, and only its own
    // bytes trail the reservation (not a doubled output buffer).
    let now = Instant::now();
    let budget = MemoryBudget::new(1 << 20);
    let mut c = ServerConn::with_budget(Arc::new(Limits::default()), Arc::clone(&budget), now);
    c.handle_input(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", now);
    while c.poll_event().is_some() {}
    c.send(
        Reply::Response(Response::new(200, vec![], vec![b'r'; 6_000])),
        now,
    )
    .unwrap();
    let held = c.budget_held();
    assert!(held >= 6_000 && c.footprint() <= held);
    // A budget that holds this and little more.
    let tight = MemoryBudget::new(held + 1_500);
    let mut d = ServerConn::with_budget(Arc::new(Limits::default()), Arc::clone(&tight), now);
    d.handle_input(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", now);
    while d.poll_event().is_some() {}
    d.send(
        Reply::Response(Response::new(200, vec![], vec![b'r'; 6_000])),
        now,
    )
    .unwrap();
    assert_eq!(d.budget_held(), held);
    let mut big = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n".to_vec();
    big.extend_from_slice(&[b'x'; 5_000]);
    d.handle_input(&big, now);
    assert!(
        d.footprint() <= d.budget_held() + 400,
        "footprint {} > held {}",
        d.footprint(),
        d.budget_held()
    );
    let wire = String::from_utf8_lossy(&take_output(&mut d, now)).into_owned();
    assert!(wire.starts_with("HTTP/1.1 200 "), "{wire}");
    assert!(wire.contains("HTTP/1.1 503 "), "{wire}");
    drop((c, d));
    assert_eq!((budget.used(), tight.used()), (0, 0));
}

#[test]
fn a_request_past_the_budget_is_503() {
    let now = Instant::now();
    let budget = MemoryBudget::new(100);
    let mut c = ServerConn::with_budget(Arc::new(Limits::default()), Arc::clone(&budget), now);
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n";
    let mut big = req.to_vec();
    big.extend_from_slice(&[b'x'; 500]);
    c.handle_input(&big, now);
    let wire = take_output(&mut c, now);
    assert!(
        wire.starts_with(b"HTTP/1.1 503 "),
        "{}",
        String::from_utf8_lossy(&wire)
    );
    drop(c);
    assert_eq!(budget.used(), 0);
}
