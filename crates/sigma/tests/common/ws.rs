//! One small WebSocket client for the integration tests (the upgrade by
//! hand, masked frames out, frames in), instead of one copy per test file.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{lossy, IO_TIMEOUT};

/// A raw WebSocket client.
pub struct Ws {
    pub t: TcpStream,
}

/// A frame from the server (pings and pongs are skipped).
#[derive(Debug)]
pub enum Frame {
    Text(Value),
    Close(Option<u16>),
}

impl Ws {
    /// Upgrades `path` with `extra` header lines (each ending in CRLF).
    pub fn open(addr: SocketAddr, path: &str, extra: &str) -> Ws {
        match Self::try_open(addr, path, extra) {
            Ok(ws) => ws,
            Err(head) => panic!("upgrade of {path} refused: {head}"),
        }
    }

    /// The socket, or the response head of a refused upgrade.
    pub fn try_open(addr: SocketAddr, path: &str, extra: &str) -> Result<Ws, String> {
        let mut t = TcpStream::connect(addr).expect("connect");
        t.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        t.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        t.write_all(req.as_bytes()).expect("handshake");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(t.read(&mut b).expect("read handshake"), 1, "closed");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if head.starts_with("HTTP/1.1 101 ") {
            Ok(Ws { t })
        } else {
            Err(head)
        }
    }

    /// One masked frame (payloads up to 64 KiB).
    pub fn send_raw(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = vec![0x80 | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else {
            assert!(n <= 0xffff, "small frames only");
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.t.write_all(&f)
    }

    /// A JSON text message.
    pub fn send(&mut self, v: &Value) {
        self.send_raw(0x1, v.to_string().as_bytes())
            .expect("ws write");
    }

    /// The next text or close frame before `deadline`; `None` on EOF, an
    /// error or the deadline.
    pub fn next(&mut self, deadline: Instant) -> Option<Frame> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.t.set_read_timeout(Some(left)).ok()?;
            let mut h = [0u8; 2];
            self.t.read_exact(&mut h).ok()?;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.t.read_exact(&mut l).ok()?;
                    u64::from(u16::from_be_bytes(l))
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.t.read_exact(&mut l).ok()?;
                    u64::from_be_bytes(l)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).expect("frame length")];
            self.t.read_exact(&mut payload).ok()?;
            match h[0] & 0x0f {
                0x1 => {
                    let v = serde_json::from_slice(&payload)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", lossy(&payload)));
                    return Some(Frame::Text(v));
                }
                0x8 => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Some(Frame::Close(code));
                }
                0x9 | 0xa => continue,
                op => panic!("unexpected opcode {op:#x}: {}", lossy(&payload)),
            }
        }
    }

    /// The next text message (within the I/O timeout).
    pub fn recv(&mut self) -> Value {
        match self.next(Instant::now() + IO_TIMEOUT) {
            Some(Frame::Text(v)) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Sends a request with an `id` and returns its reply (which must come
    /// next, with the same `id`).
    pub fn call(&mut self, v: Value) -> Value {
        let id = v["id"].clone();
        self.send(&v);
        let r = self.recv();
        assert_eq!(r["id"], id, "reply out of order: {r}");
        r
    }

    /// The code of the next close frame (messages before it are skipped),
    /// within the I/O timeout.
    pub fn close_code(&mut self) -> Option<u16> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            match self.next(deadline) {
                Some(Frame::Text(_)) => continue,
                Some(Frame::Close(code)) => return code,
                None => panic!("no close frame within {IO_TIMEOUT:?}"),
            }
        }
    }

    /// Waits for the close frame until `deadline`: its code, and the data
    /// messages that came before it. Answers the close, then reads to EOF
    /// (asserting nothing more arrives).
    pub fn closed_by(&mut self, deadline: Instant) -> (Option<u16>, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            match self.next(deadline) {
                Some(Frame::Text(v)) => before.push(v),
                Some(Frame::Close(code)) => {
                    let _ = self.send_raw(0x8, &code.unwrap_or(1000).to_be_bytes());
                    assert!(
                        self.next(Instant::now() + Duration::from_secs(5)).is_none(),
                        "a frame after the close"
                    );
                    return (code, before);
                }
                None => panic!("no close frame by the deadline; messages: {before:?}"),
            }
        }
    }

    /// The socket is still open and serves: a Ping gets its Pong.
    pub fn assert_open(&mut self, what: &str) {
        self.send_raw(0x9, b"alive?").expect("ping");
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: no pong");
            self.t.set_read_timeout(Some(left)).expect("timeout");
            let mut h = [0u8; 2];
            self.t
                .read_exact(&mut h)
                .unwrap_or_else(|e| panic!("{what}: closed ({e})"));
            let len = usize::from(h[1] & 0x7f);
            assert!(len < 126, "{what}: large frame");
            let mut payload = vec![0u8; len];
            self.t.read_exact(&mut payload).expect("payload");
            match h[0] & 0x0f {
                0xa if payload == b"alive?" => return,
                0x8 => panic!("{what}: closed with {payload:?}"),
                _ => continue,
            }
        }
    }
}
