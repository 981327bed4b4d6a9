//! Invariant: on a WebSocket with permessage-deflate negotiated, any bytes a client sends, whole or split anywhere, never panic `WsConn`; the events are the same for every split; no message passes `max_message` however far its payload inflates; messages a client compressed come out as the bytes it compressed; every frame sigma writes is well-formed, with RSV1 only on data frames whose body inflates within `max_message`.
//!
//! Where it sits: `T → [H (ws, permessage-deflate)] → A`, with an echo `A`.
//!
//! Input layout (`sigma_fuzz::Input`): byte 0 bit 0 small limits, bits 1–2
//! split mode, bit 3 raw mode; byte 1 the split seed. Raw mode feeds the
//! data as client bytes (mostly invalid DEFLATE). Otherwise the data is
//! cut at 0xff bytes into messages; each is compressed (or not, by its
//! length's parity) with a fresh raw DEFLATE stream, its tail stripped,
//! and sent masked as one or two frames, RSV1 on the first.

#![no_main]

use std::time::Instant;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use libfuzzer_sys::fuzz_target;
use sigma_fuzz::Input;
use sigma_http::io::OutBuf;
use sigma_http::ws::WsConn;
use sigma_http::{DeflateParams, Event, WsEvent, WsLimits, WsMessage};

const PARAMS: DeflateParams = DeflateParams {
    server_max_window_bits: 15,
    server_window_requested: false,
    client_max_window_bits: 15,
};

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let limits = if input.small_limits() {
        WsLimits {
            max_frame: 256,
            max_message: 1024,
            ..WsLimits::default()
        }
    } else {
        WsLimits::default()
    };
    let (wire, expect) = if input.flags & 8 != 0 {
        (input.data.to_vec(), None)
    } else {
        let (w, e) = client_messages(input.data);
        (w, Some(e))
    };
    let pieces = sigma_fuzz::split(&wire, input.flags >> 1, input.seed);
    let whole = run(&limits, &[&wire]);
    assert_eq!(whole, run(&limits, &pieces), "events differ by split");
    if let Some(expect) = expect {
        let got: Vec<&[u8]> = whole
            .iter()
            .filter_map(|e| match e {
                Event::Ws(WsEvent::Message(WsMessage::Binary(b))) => Some(&b[..]),
                _ => None,
            })
            .collect();
        let fits: Vec<&[u8]> = expect
            .iter()
            .map(Vec::as_slice)
            .take_while(|m| m.len() <= limits.max_message)
            .collect();
        assert!(got.len() <= expect.len());
        assert_eq!(
            got[..],
            fits[..got.len().min(fits.len())],
            "messages differ"
        );
    }
});

/// Client frames for the messages cut from `data`, and the messages.
fn client_messages(data: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut wire = Vec::new();
    let mut messages = Vec::new();
    for m in data.split(|&b| b == 0xff) {
        let body = if m.len() % 2 == 0 {
            deflate(m)
        } else {
            m.to_vec()
        };
        let rsv1 = m.len() % 2 == 0;
        let cut = body.len() / 2;
        if m.len() % 3 == 0 {
            frame(&mut wire, false, rsv1, 2, &body[..cut]);
            frame(&mut wire, true, false, 0, &body[cut..]);
        } else {
            frame(&mut wire, true, rsv1, 2, &body);
        }
        messages.push(m.to_vec());
    }
    (wire, messages)
}

fn deflate(m: &[u8]) -> Vec<u8> {
    let mut z = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(m.len() * 2 + 64);
    z.compress_vec(m, &mut out, FlushCompress::Sync).unwrap();
    out.truncate(out.len() - 4);
    out
}

fn frame(wire: &mut Vec<u8>, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) {
    wire.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode);
    match payload.len() {
        n @ 0..=125 => wire.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            wire.push(0x80 | 126);
            wire.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            wire.push(0x80 | 127);
            wire.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    wire.extend_from_slice(&[0; 4]); // a zero mask: payload as is
    wire.extend_from_slice(payload);
}

fn run(limits: &WsLimits, pieces: &[&[u8]]) -> Vec<Event> {
    let now = Instant::now();
    let mut conn = WsConn::with_deflate(limits.clone(), Some(PARAMS), now);
    let mut out = OutBuf::new();
    let mut events = Vec::new();
    let mut wire = Vec::new();
    for piece in pieces {
        conn.handle_input(piece, now, &mut out);
        while let Some(ev) = conn.poll_event() {
            if let Event::Ws(WsEvent::Message(m)) = &ev {
                let len = sigma_http::ws::payload_len(m);
                assert!(len <= limits.max_message, "message of {len} bytes");
                let _ = conn.send_message(m.clone(), now, &mut out);
            }
            events.push(ev);
        }
        wire.extend_from_slice(out.as_slice());
        out.consume(out.len(), now);
    }
    check_server_frames(&wire, limits.max_message);
    events
}

/// Server frames: unmasked, RSV2/3 clear, RSV1 only on data frames whose
/// body inflates within `max`.
fn check_server_frames(mut w: &[u8], max: usize) {
    while let [b0, b1, rest @ ..] = w {
        assert_eq!(b1 & 0x80, 0, "server frames are never masked");
        assert_eq!(b0 & 0x30, 0, "no RSV2/RSV3");
        let (len, rest) = match b1 & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([rest[0], rest[1]])),
                &rest[2..],
            ),
            127 => (
                u64::from_be_bytes(rest[..8].try_into().unwrap()) as usize,
                &rest[8..],
            ),
            n => (usize::from(n), rest),
        };
        let (payload, tail) = rest.split_at(len);
        if b0 & 0x40 != 0 {
            assert!(matches!(b0 & 0x0f, 1 | 2), "RSV1 on opcode {}", b0 & 0x0f);
            let mut z = Decompress::new(false);
            let mut out = Vec::with_capacity(max + 1);
            let body = [payload, &[0, 0, 0xff, 0xff]].concat();
            z.decompress_vec(&body, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert!(out.len() <= max);
        }
        w = tail;
    }
}
