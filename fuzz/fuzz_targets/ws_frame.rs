//! Invariant: any bytes a client sends on an open WebSocket, whole or split anywhere, never panic `WsConn`; the events are the same for every split; at most one terminal event (`End`/`Abort`) and nothing after it; every text message is valid UTF-8 within `max_message`; every frame sigma writes is an unmasked, well-formed server frame (control frames ≤ 125 bytes, a close code sigma may send).
//!
//! Where it sits: `T → [H (ws)] → A`. This target plays `T` (bytes in,
//! EOF) and an echo `A` that sends every message back, so the send path
//! and the outbound bound are exercised too.
//!
//! Input layout: byte 0 picks the limits (bit 0: small limits so 1009 and
//! 1008 are reachable) and the split mode (bits 1–2); byte 1 seeds the
//! split lengths; the rest is what the client sends after the handshake.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sigma_fuzz::Input;
use sigma_http::io::OutBuf;
use sigma_http::ws::WsConn;
use sigma_http::{Event, WsEvent, WsLimits, WsMessage};

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let data = input.data;
    let limits = if input.small_limits() {
        WsLimits {
            max_frame: 64,
            max_message: 256,
            max_outbound: 512,
            ..WsLimits::default()
        }
    } else {
        WsLimits::default()
    };
    let whole = run(&limits, &[data]);
    let pieces = input.pieces();
    let parts = run(&limits, &pieces);
    // With small limits the slow-consumer decision depends on how pongs
    // and echoes interleave in the output, which depends on the split; with
    // the default limits the outbound bound is never reached here.
    if !input.small_limits() {
        assert_eq!(
            whole,
            parts,
            "events differ by split ({} pieces)",
            pieces.len()
        );
    }
});

fn run(limits: &WsLimits, pieces: &[&[u8]]) -> Vec<Event> {
    let t0 = Instant::now();
    let mut conn = WsConn::new(limits.clone(), t0);
    let mut out = OutBuf::new();
    let mut events = Vec::new();
    let mut wire = Vec::new();
    let mut terminal = false;
    for piece in pieces {
        conn.handle_input(piece, t0, &mut out);
        pump(&mut conn, &mut out, &mut events, &mut terminal, limits, t0);
        wire.extend_from_slice(out.as_slice());
        out.consume(out.len(), t0);
    }
    conn.handle_eof(t0, &mut out);
    pump(&mut conn, &mut out, &mut events, &mut terminal, limits, t0);
    // Let every deadline fire (close handshake, keepalive).
    let mut now = t0;
    for _ in 0..8 {
        let Some(d) = conn.poll_timeout() else { break };
        now = now.max(d) + Duration::from_millis(1);
        conn.handle_timeout(now, &mut out);
        pump(&mut conn, &mut out, &mut events, &mut terminal, limits, now);
    }
    wire.extend_from_slice(out.as_slice());
    check_server_frames(&wire);
    events
}

fn pump(
    conn: &mut WsConn,
    out: &mut OutBuf,
    events: &mut Vec<Event>,
    terminal: &mut bool,
    limits: &WsLimits,
    now: Instant,
) {
    while let Some(ev) = conn.poll_event() {
        assert!(!*terminal, "event after a terminal event: {ev:?}");
        match &ev {
            Event::End | Event::Abort(_) => *terminal = true,
            Event::Ws(WsEvent::Message(m)) => {
                let len = match m {
                    WsMessage::Text(t) => t.len(),
                    WsMessage::Binary(b) => b.len(),
                };
                assert!(
                    len <= limits.max_message,
                    "message of {len} bytes passed the limit"
                );
                let _ = conn.send_message(m.clone(), now, out);
            }
            Event::Ws(WsEvent::Ping(p)) => assert!(p.len() <= 125),
            Event::Ws(WsEvent::Close { reason, .. }) => assert!(reason.len() <= 123),
            other => panic!("unexpected event from WsConn: {other:?}"),
        }
        events.push(ev);
    }
}

/// Every frame sigma wrote: FIN/opcode sane, unmasked, control ≤ 125.
fn check_server_frames(mut w: &[u8]) {
    while !w.is_empty() {
        let [b0, b1, rest @ ..] = w else {
            panic!("truncated frame header")
        };
        assert_eq!(b1 & 0x80, 0, "server frames are never masked");
        assert_eq!(b0 & 0x70, 0, "no RSV bits");
        let opcode = b0 & 0x0F;
        let (len, rest) = match b1 & 0x7F {
            126 => {
                let [a, b, r @ ..] = rest else {
                    panic!("truncated length")
                };
                (u64::from(u16::from_be_bytes([*a, *b])), r)
            }
            127 => {
                let (l, r) = rest.split_at(8);
                (u64::from_be_bytes(l.try_into().unwrap()), r)
            }
            n => (u64::from(n), rest),
        };
        let len = usize::try_from(len).unwrap();
        assert!(rest.len() >= len, "truncated payload");
        let (payload, tail) = rest.split_at(len);
        match opcode {
            0x1 | 0x2 | 0x0 => {}
            0x8 => {
                assert!(len <= 125 && len != 1, "bad close frame length {len}");
                if len >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(
                        sigma_http::ws::close::may_send(code),
                        "sent close code {code}"
                    );
                    assert!(std::str::from_utf8(&payload[2..]).is_ok());
                }
            }
            0x9 | 0xA => assert!(len <= 125, "control frame of {len} bytes"),
            other => panic!("server wrote opcode {other}"),
        }
        w = tail;
    }
}
