//! A minimal WebSocket client (RFC 6455) for load generation.
//!
//! The opening handshake over a `TcpStream` (checking `101` and
//! `Sec-WebSocket-Accept`), a frame encoder that masks what it writes, and an
//! incremental decoder that turns the bytes read into messages, pings and
//! closes. It is written for throughput, not completeness: one extension
//! (permessage-deflate without context takeover, [`crate::deflate`], when
//! [`Target::deflate`] asks for it), no subprotocols, no TLS. The decoder
//! also unmasks, so the tests can use it as the server side.
//!
//! Every length and header the server sends is checked; a malformed stream is
//! an [`anyhow::Error`], never a panic.

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::deflate;

/// The GUID of RFC 6455 §1.3.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest response head we accept for the handshake.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message (or frame) we accept from the server.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Opcodes (RFC 6455 §5.2).
pub mod op {
    /// Continuation frame.
    pub const CONT: u8 = 0x0;
    /// Text message.
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Where to connect: `ws://HOST:PORT/PATH`.
#[derive(Clone, Debug)]
pub struct Target {
    /// `HOST:PORT`, for `connect`.
    pub addr: String,
    /// The request target, starting with `/`.
    pub path: String,
    /// Extra handshake header lines, each ending in CRLF (e.g. a session
    /// cookie or `Authorization` for authenticated endpoints).
    pub headers: String,
    /// Offer permessage-deflate ([`deflate::OFFER`]) and fail the handshake
    /// unless the server accepts it; then every data message is compressed.
    pub deflate: bool,
}

impl Target {
    /// Parses `ws://HOST[:PORT][/PATH]` (port 80 by default).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("only ws:// URLs are supported: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in {url}");
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority.ends_with(']') && i > authority.rfind(']').unwrap_or(0),
            None => false,
        };
        let addr = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            addr,
            path: path.to_string(),
            headers: String::new(),
            deflate: false,
        })
    }

    /// Adds a handshake header given as `Name: value`.
    pub fn with_header(mut self, line: &str) -> anyhow::Result<Self> {
        let Some((name, value)) = line.split_once(':') else {
            bail!("header {line:?} is not `Name: value`");
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            || value.bytes().any(|b| b == b'\r' || b == b'\n')
        {
            bail!("invalid header {line:?}");
        }
        self.headers
            .push_str(&format!("{name}: {}\r\n", value.trim()));
        Ok(self)
    }

    /// The `Host` header value.
    fn host(&self) -> &str {
        &self.addr
    }
}

/// A small, fast, non-cryptographic PRNG (xorshift64*) for masking keys and
/// handshake nonces. Masking only has to be unpredictable to intermediaries,
/// which a load generator on loopback does not have.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and `salt` (e.g. the connection number).
    pub fn new(salt: u64) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        let mut r = Self(t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Connects and performs the opening handshake. Returns the stream and a
/// decoder holding whatever the server sent after its `101` head (set for
/// permessage-deflate when it was negotiated).
pub async fn connect(target: &Target, rng: &mut Rng) -> anyhow::Result<(TcpStream, Decoder)> {
    let mut stream = TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("connect {}", target.addr))?;
    stream.set_nodelay(true)?;
    let nonce = [rng.next_u64().to_ne_bytes(), rng.next_u64().to_ne_bytes()].concat();
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let ext = if target.deflate {
        format!("Sec-WebSocket-Extensions: {}\r\n", deflate::OFFER)
    } else {
        String::new()
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}{}\r\n",
        target.path,
        target.host(),
        target.headers
    );
    stream.write_all(req.as_bytes()).await?;

    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_HEAD {
            bail!("handshake response head over {MAX_HEAD} bytes");
        }
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the handshake");
        }
    };
    let head = buf
        .get(..head_end)
        .ok_or_else(|| anyhow!("handshake head out of range"))?;
    let extensions = check_101(head, &accept_key(&key))?;
    let on = deflate::accepted(extensions.as_deref(), target.deflate)?;
    let rest = buf.get(head_end..).unwrap_or_default().to_vec();
    let mut dec = Decoder::with_bytes(rest);
    dec.set_deflate(on);
    Ok((stream, dec))
}

/// Checks a `101 Switching Protocols` head and its accept key; returns its
/// `Sec-WebSocket-Extensions` values (joined with commas), if any.
fn check_101(head: &[u8], expected_accept: &str) -> anyhow::Result<Option<String>> {
    let text = std::str::from_utf8(head).context("handshake response is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if code != "101" {
        bail!("handshake refused: {status:?}");
    }
    let header = |want: &str| -> Vec<&str> {
        text.split("\r\n")
            .skip(1)
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim().eq_ignore_ascii_case(want).then(|| value.trim())
            })
            .collect()
    };
    match header("sec-websocket-accept").first() {
        Some(a) if *a == expected_accept => {}
        Some(a) => bail!("wrong Sec-WebSocket-Accept {a:?}"),
        None => bail!("no Sec-WebSocket-Accept in the 101 response"),
    }
    let ext = header("sec-websocket-extensions");
    Ok((!ext.is_empty()).then(|| ext.join(", ")))
}

/// The big-endian `u16` at the start of `b`.
fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(<[u8; 2]>::try_from(b.get(..2)?).ok()?))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Appends one frame (FIN set) to `out`; masked when `mask` is given, as a
/// client must. For control frames, and data messages on a connection
/// without permessage-deflate (see [`encode_message`]).
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    encode_frame(out, 0x80 | (opcode & 0x0f), payload, mask);
}

/// Appends one data message (a single frame) to `out`: compressed with
/// RSV1 set when `deflate` (permessage-deflate was negotiated), plain
/// otherwise, and also plain should compression fail (RSV1 is per message,
/// RFC 7692 §6.1), which it does not for any input the tool sends.
pub fn encode_message(
    out: &mut Vec<u8>,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    deflate: bool,
) {
    if deflate {
        if let Ok(body) = deflate::compress(payload) {
            encode_frame(out, 0x80 | RSV1 | (opcode & 0x0f), &body, mask);
            return;
        }
    }
    encode(out, opcode, payload, mask);
}

/// RSV1, the "per-message compressed" bit of permessage-deflate.
const RSV1: u8 = 0x40;

/// Appends one frame whose first byte (FIN, RSV, opcode) is `b0`.
fn encode_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(b0);
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(m | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            let start = out.len();
            out.extend_from_slice(payload);
            if let Some(p) = out.get_mut(start..) {
                apply_mask(p, key);
            }
        }
        None => out.extend_from_slice(payload),
    }
}

/// XORs `data` with the masking key (RFC 6455 §5.3).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let mut w = [0u8; 4];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u32::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// A message's bytes: in the decoder's buffer (one frame) or assembled from
/// fragments.
#[derive(Debug)]
pub enum Data {
    /// A range of [`Decoder`]'s buffer, valid until the next read.
    InBuf(Range<usize>),
    /// A fragmented message, reassembled.
    Owned(Vec<u8>),
}

/// What the decoder found.
#[derive(Debug)]
pub enum Event {
    /// A complete message; `text` for opcode 1.
    Message {
        /// Text (opcode 1) or binary (opcode 2).
        text: bool,
        /// Its payload; read it with [`Decoder::data`].
        data: Data,
    },
    /// A ping; answer with a pong carrying the same payload.
    Ping(Vec<u8>),
    /// A pong (ignored by the load generator).
    Pong,
    /// A close frame, with its status code if any.
    Close(Option<u16>),
}

/// One decoded frame's header and where its payload is.
struct Frame {
    fin: bool,
    /// Compressed message (permessage-deflate), on a message's first frame.
    rsv1: bool,
    opcode: u8,
    /// The payload, unmasked, in [`Decoder`]'s buffer.
    range: Range<usize>,
}

/// Incremental frame decoder over a growable read buffer.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    /// Fragments of a message in progress: opcode, compressed (RSV1 on its
    /// first frame) and bytes.
    frag: Option<(u8, bool, Vec<u8>)>,
    /// permessage-deflate was negotiated: RSV1 marks compressed messages.
    deflate: bool,
}

impl Decoder {
    /// A decoder that starts with bytes already read.
    pub fn with_bytes(buf: Vec<u8>) -> Self {
        Self {
            buf,
            pos: 0,
            frag: None,
            deflate: false,
        }
    }

    /// Accepts RSV1 (compressed messages, inflated as they complete) when
    /// permessage-deflate was negotiated.
    pub fn set_deflate(&mut self, on: bool) {
        self.deflate = on;
    }

    /// Whether permessage-deflate was negotiated: data messages sent on
    /// this connection are to be compressed ([`encode_message`]).
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// Drops consumed bytes and makes room for at least `min` more; returns
    /// the buffer to read into (append only).
    pub fn buf_mut(&mut self, min: usize) -> &mut Vec<u8> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < min {
            self.buf.reserve(min);
        }
        &mut self.buf
    }

    /// Frees the read buffer when nothing is pending (idle connections).
    pub fn shrink(&mut self) {
        if self.pos >= self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// The bytes of a message returned by [`Self::next_event`].
    pub fn data<'a>(&'a self, data: &'a Data) -> &'a [u8] {
        match data {
            Data::InBuf(r) => self.buf.get(r.clone()).unwrap_or_default(),
            Data::Owned(v) => v,
        }
    }

    /// The next complete message or control frame, `None` when more bytes
    /// are needed. A compressed message comes inflated (at most
    /// [`MAX_MESSAGE`] bytes).
    pub fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            let Some(Frame {
                fin,
                rsv1,
                opcode,
                range,
            }) = self.next_frame()?
            else {
                return Ok(None);
            };
            let payload = || self.buf.get(range.clone()).unwrap_or_default();
            if rsv1 && !matches!(opcode, op::TEXT | op::BINARY) {
                bail!("RSV1 on a frame other than a message's first (opcode {opcode:#x})");
            }
            match opcode {
                op::TEXT | op::BINARY => {
                    if self.frag.is_some() {
                        bail!("new message inside a fragmented one");
                    }
                    let text = opcode == op::TEXT;
                    if fin {
                        let data = if rsv1 {
                            Data::Owned(deflate::decompress(payload(), MAX_MESSAGE)?)
                        } else {
                            Data::InBuf(range)
                        };
                        return Ok(Some(Event::Message { text, data }));
                    }
                    self.frag = Some((opcode, rsv1, payload().to_vec()));
                }
                op::CONT => {
                    let part = payload().to_vec();
                    let Some((first, compressed, mut acc)) = self.frag.take() else {
                        bail!("continuation frame without a message");
                    };
                    if acc.len() + part.len() > MAX_MESSAGE {
                        bail!("message over {MAX_MESSAGE} bytes");
                    }
                    acc.extend_from_slice(&part);
                    if fin {
                        if compressed {
                            acc = deflate::decompress(&acc, MAX_MESSAGE)?;
                        }
                        return Ok(Some(Event::Message {
                            text: first == op::TEXT,
                            data: Data::Owned(acc),
                        }));
                    }
                    self.frag = Some((first, compressed, acc));
                }
                op::PING => return Ok(Some(Event::Ping(payload().to_vec()))),
                op::PONG => return Ok(Some(Event::Pong)),
                op::CLOSE => {
                    let p = payload();
                    let code = be16(p);
                    return Ok(Some(Event::Close(code)));
                }
                other => bail!("reserved opcode {other:#x}"),
            }
        }
    }

    /// One frame, its payload unmasked in the buffer.
    fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        let b = self.buf.get(self.pos..).unwrap_or_default();
        let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
            return Ok(None);
        };
        let reserved = if self.deflate { 0x30 } else { 0x70 };
        if b0 & reserved != 0 {
            bail!("reserved bits set ({b0:#04x})");
        }
        let rsv1 = b0 & RSV1 != 0;
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let (len, mut hdr) = match b1 & 0x7f {
            126 => match b.get(2..).and_then(be16) {
                Some(l) => (u64::from(l), 4),
                None => return Ok(None),
            },
            127 => match b.get(2..10).and_then(|l| <[u8; 8]>::try_from(l).ok()) {
                Some(l) => (u64::from_be_bytes(l), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_MESSAGE)
            .ok_or_else(|| anyhow!("frame of {len} bytes is over {MAX_MESSAGE}"))?;
        if opcode >= 0x8 && (len > 125 || !fin) {
            bail!("bad control frame (len {len}, fin {fin})");
        }
        let key = if masked {
            let Some(k) = b
                .get(hdr..hdr + 4)
                .and_then(|k| <[u8; 4]>::try_from(k).ok())
            else {
                return Ok(None);
            };
            hdr += 4;
            Some(k)
        } else {
            None
        };
        if b.len() < hdr + len {
            return Ok(None);
        }
        let range = self.pos + hdr..self.pos + hdr + len;
        if let (Some(k), Some(p)) = (key, self.buf.get_mut(range.clone())) {
            apply_mask(p, k);
        }
        self.pos = range.end;
        Ok(Some(Frame {
            fin,
            rsv1,
            opcode,
            range,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:3000/echo").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.path.as_str()),
            ("127.0.0.1:3000", "/echo")
        );
        let t = Target::parse("ws://localhost").unwrap();
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("localhost:80", "/"));
        let t = Target::parse("ws://[::1]:9/x?y").unwrap();
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("[::1]:9", "/x?y"));
        let t = Target::parse("ws://[::1]/").unwrap();
        assert_eq!(t.addr, "[::1]:80");
        assert!(Target::parse("http://x/").is_err());
        let t = t.with_header("Cookie: a=b").unwrap();
        assert_eq!(t.headers, "Cookie: a=b\r\n");
        assert!(t.clone().with_header("X: a\r\nEvil: 1").is_err());
        assert!(t.clone().with_header("Bad Name: 1").is_err());
        assert!(t.with_header("no colon").is_err());
    }

    #[test]
    fn round_trips_every_length_class_split_anywhere() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            encode(&mut wire, op::BINARY, &payload, Some([1, 2, 3, 4]));
            encode(&mut wire, op::PING, b"hi", None);
            for split in [1, 2, 7, wire.len() / 2, wire.len()] {
                let mut d = Decoder::default();
                let mut got = Vec::new();
                for chunk in wire.chunks(split) {
                    d.buf_mut(0).extend_from_slice(chunk);
                    while let Some(ev) = d.next_event().unwrap() {
                        match ev {
                            Event::Message { text, data } => {
                                assert!(!text);
                                got.push(d.data(&data).to_vec());
                            }
                            Event::Ping(p) => got.push(p),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                assert_eq!(got, vec![payload.clone(), b"hi".to_vec()], "len {len}");
            }
        }
    }

    #[test]
    fn reassembles_fragments_and_rejects_garbage() {
        let mut d = Decoder::default();
        d.buf_mut(0)
            .extend_from_slice(&[0x01, 2, b'a', b'b', 0x80, 1, b'c', 0x88, 2, 0x03, 0xe8]);
        match d.next_event().unwrap() {
            Some(Event::Message { text: true, data }) => assert_eq!(d.data(&data), b"abc"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            d.next_event().unwrap(),
            Some(Event::Close(Some(1000)))
        ));
        assert!(d.next_event().unwrap().is_none());

        for bad in [
            &[0xC2u8, 0][..],                        // RSV1 without an extension
            &[0x83, 0],                              // reserved opcode
            &[0x09, 0],                              // fragmented ping
            &[0x80, 0],                              // continuation with no message
            &[0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 0], // absurd length
        ] {
            let mut d = Decoder::with_bytes(bad.to_vec());
            assert!(d.next_event().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checks_the_101() {
        let ok = accept_key("k");
        let head =
            format!("HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: {ok}\r\n\r\n");
        assert_eq!(check_101(head.as_bytes(), &ok).unwrap(), None);
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: {ok}\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        );
        assert_eq!(
            check_101(head.as_bytes(), &ok).unwrap().as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert!(check_101(b"HTTP/1.1 404 Not Found\r\n\r\n", &ok).is_err());
        assert!(check_101(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x\r\n\r\n", &ok).is_err());
        assert!(check_101(b"HTTP/1.1 101 OK\r\n\r\n", &ok).is_err());
    }

    #[test]
    fn compressed_messages_round_trip_whole_and_fragmented() {
        let payload = br#"{"type":"message","data":"hello hello hello hello hello"}"#;
        let mut wire = Vec::new();
        encode_message(&mut wire, op::TEXT, payload, Some([9, 8, 7, 6]), true);
        assert_eq!(wire.first().map(|b| b & 0xf0), Some(0xc0), "FIN + RSV1");
        assert!(wire.len() < payload.len(), "compressed");
        // The same message in three frames: RSV1 on the first only.
        let body = deflate::compress(payload).unwrap();
        let (a, rest) = body.split_at(3);
        let (b, c) = rest.split_at(rest.len() / 2);
        encode_frame(&mut wire, RSV1 | op::TEXT, a, None);
        encode_frame(&mut wire, op::CONT, b, None);
        encode(&mut wire, op::PING, b"p", None);
        encode_frame(&mut wire, 0x80 | op::CONT, c, None);
        // And a plain message: compression is per message.
        encode(&mut wire, op::BINARY, b"plain", None);
        let mut d = Decoder::with_bytes(wire.clone());
        d.set_deflate(true);
        let mut got = Vec::new();
        while let Some(ev) = d.next_event().unwrap() {
            match ev {
                Event::Message { data, .. } => got.push(d.data(&data).to_vec()),
                Event::Ping(p) => got.push(p),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            got,
            vec![
                payload.to_vec(),
                b"p".to_vec(),
                payload.to_vec(),
                b"plain".to_vec()
            ]
        );
        // Without the extension, RSV1 is a protocol error.
        assert!(Decoder::with_bytes(wire).next_event().is_err());
        // RSV1 on a continuation or a control frame, and RSV2, are errors.
        for bad in [&[0x01u8, 0, 0xc0, 0][..], &[0xc9, 0], &[0xa1, 0]] {
            let mut d = Decoder::with_bytes(bad.to_vec());
            d.set_deflate(true);
            assert!(d.next_event().is_err(), "{bad:?}");
        }
        let mut plain = Vec::new();
        encode_message(&mut plain, op::TEXT, b"abc", None, false);
        assert_eq!(plain, [0x81, 3, b'a', b'b', b'c']);
    }
}
