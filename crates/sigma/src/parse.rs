//! `sigma parse`: raw HTTP bytes on stdin → `H`'s events as JSON lines.
//!
//! Any capture can be inspected and turned into a regression test: the
//! bytes go through the very codec the server uses (fed whole, or in
//! pieces of `--chunk` bytes), with pipelining unbounded and WebSocket
//! upgrades accepted so that frames after a handshake are shown too. The
//! bytes `H` would have written back are not printed; an error shows as
//! an `abort` event with its status.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use sigma_http::{Event, Header, Limits, Reply, Response, ServerConn, WsEvent, WsMessage};

/// Reads stdin, writes JSON lines to stdout.
pub fn run(chunk: Option<usize>) -> anyhow::Result<()> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let mut out = std::io::stdout().lock();
    for line in events(&input, chunk) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The events `H` produces for `input`, as JSON values.
pub fn events(input: &[u8], chunk: Option<usize>) -> Vec<Value> {
    let limits = Limits {
        max_pipelined: usize::MAX,
        ..Limits::default()
    };
    let now = Instant::now();
    let mut h = ServerConn::new(Arc::new(limits), now);
    let mut lines = Vec::new();
    let step = chunk.unwrap_or(input.len()).max(1);
    for piece in input.chunks(step) {
        h.handle_input(piece, now);
        drain(&mut h, &mut lines, now);
    }
    h.handle_eof(now);
    drain(&mut h, &mut lines, now);
    lines
}

fn drain(h: &mut ServerConn, lines: &mut Vec<Value>, now: Instant) {
    while let Some(ev) = h.poll_event() {
        if let Event::Request(head) = &ev {
            if head.websocket.is_some() {
                let _ = h.send(
                    Reply::Accept {
                        protocol: None,
                        headers: vec![],
                    },
                    now,
                );
            }
        }
        if let Event::EndOfMessage { .. } = &ev {
            // Answer so that pipelined requests keep flowing.
            let _ = h.send(Reply::Response(Response::new(204, vec![], "")), now);
        }
        lines.push(to_json(&ev));
    }
}

fn text(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => json!({ "hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>() }),
    }
}

fn headers(hs: &[Header]) -> Value {
    Value::Array(
        hs.iter()
            .map(|h| json!([text(&h.name), text(&h.value)]))
            .collect(),
    )
}

/// One event as JSON.
pub fn to_json(ev: &Event) -> Value {
    match ev {
        Event::Request(h) => json!({
            "event": "request",
            "method": h.method.as_str(),
            "target": text(&h.target),
            "version": h.version.as_str(),
            "headers": headers(&h.headers),
            "keep_alive": h.keep_alive,
            "websocket": h.websocket.as_ref().map(|w| json!({
                "protocols": w.protocols,
                "origin": w.origin.as_ref().map(|o| text(o)),
            })),
        }),
        Event::Body(b) => json!({ "event": "body", "data": text(b) }),
        Event::EndOfMessage { trailers } => {
            json!({ "event": "end_of_message", "trailers": headers(trailers) })
        }
        Event::Upgraded { protocol } => json!({ "event": "upgraded", "protocol": protocol }),
        Event::Ws(WsEvent::Message(WsMessage::Text(t))) => {
            json!({ "event": "ws_text", "data": t.as_str() })
        }
        Event::Ws(WsEvent::Message(WsMessage::Binary(b))) => {
            json!({ "event": "ws_binary", "data": text(b) })
        }
        Event::Ws(WsEvent::Ping(b)) => json!({ "event": "ws_ping", "data": text(b) }),
        Event::Ws(WsEvent::Close { code, reason }) => {
            json!({ "event": "ws_close", "code": code, "reason": reason })
        }
        Event::End => json!({ "event": "end" }),
        Event::Abort(r) => json!({ "event": "abort", "reason": r.reason, "status": r.status }),
    }
}
