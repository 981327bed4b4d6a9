//! Request body framing: `Content-Length` and chunked (RFC 9112 §6, §7.1).
//!
//! A byte-level machine in the style of hyper's `decode.rs`: one state per
//! grammar position, checked arithmetic for chunk sizes (overflow is an
//! error, never a wrap), bounded extensions and trailers. It takes bytes
//! from the front of the connection's input buffer and hands out body
//! pieces without copying. It never reads past the end of its message, so
//! a pipelined request that follows stays in the buffer.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ParseError;
use crate::event::Header;

use super::scan::{ScanLimits, Scanner};

/// Most hex digits (leading zeros included) on one chunk-size line.
/// RFC 9112 §7.1 allows leading zeros, so the *value* is bounded by
/// checked arithmetic and `max_body`; this only bounds the line, so a
/// megabyte of zeros is refused rather than scanned forever.
pub const MAX_CHUNK_SIZE_DIGITS: usize = 1024;

/// What one decoding step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A piece of body.
    Data(Bytes),
    /// The body is complete, with its trailers.
    Done(Vec<Header>),
    /// More input is needed.
    NeedMore,
}

/// Bounds the decoder enforces.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Most body bytes in total.
    pub max_body: u64,
    /// Most chunk-extension bytes on one chunk-size line.
    pub max_chunk_extension: usize,
    /// Most trailer-section bytes.
    pub max_trailer_bytes: usize,
    /// Most trailer fields.
    pub max_trailers: usize,
}

/// A body decoder for one message.
#[derive(Debug)]
pub enum Decoder {
    /// `Content-Length`: bytes still expected.
    Length(u64),
    /// Chunked.
    Chunked(Chunked),
}

/// Chunked decoding state.
#[derive(Debug)]
pub struct Chunked {
    state: ChunkedState,
    /// Size of the chunk being read (also the digits being accumulated).
    size: u64,
    digits: usize,
    ext_len: usize,
    /// Body bytes delivered so far.
    total: u64,
    trailer: Scanner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkedState {
    /// Reading hex digits.
    ExpectSize,
    /// Whitespace after the size, before `;` (BWS).
    ExpectExtensionStart,
    /// Inside a chunk extension, until CR.
    InExtension,
    /// The LF of the size line.
    ExpectSizeLf,
    /// Chunk data.
    InData,
    /// CR after chunk data.
    ExpectDataCr,
    /// LF after chunk data.
    ExpectDataLf,
    /// The trailer section (or the final empty line).
    InTrailers,
    /// Finished.
    Done,
}

impl Decoder {
    /// A decoder for `n` bytes.
    pub fn length(n: u64) -> Self {
        Self::Length(n)
    }

    /// A chunked decoder.
    pub fn chunked() -> Self {
        Self::Chunked(Chunked {
            state: ChunkedState::ExpectSize,
            size: 0,
            digits: 0,
            ext_len: 0,
            total: 0,
            trailer: Scanner::new(),
        })
    }

    /// Takes what it can from the front of `buf`.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        limits: &DecodeLimits,
    ) -> Result<Decoded, ParseError> {
        match self {
            Self::Length(0) => Ok(Decoded::Done(Vec::new())),
            Self::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                *remaining -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Self::Chunked(c) => c.decode(buf, limits),
        }
    }
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut, limits: &DecodeLimits) -> Result<Decoded, ParseError> {
        use ChunkedState::*;
        loop {
            match self.state {
                InData => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ExpectDataCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                InTrailers => return self.decode_trailers(buf, limits),
                Done => return Ok(Decoded::Done(Vec::new())),
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = match (self.state, b) {
                (ExpectSize, b) if b.is_ascii_hexdigit() => {
                    self.digits = self.digits.saturating_add(1);
                    if self.digits > MAX_CHUNK_SIZE_DIGITS {
                        return Err(ParseError::ChunkSizeOverflow);
                    }
                    let d = u64::from(hex_value(b));
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(d))
                        .ok_or(ParseError::ChunkSizeOverflow)?;
                    ExpectSize
                }
                (ExpectSize, _) if self.digits == 0 => return Err(ParseError::InvalidChunkSize),
                (ExpectSize | ExpectExtensionStart, b' ' | b'\t') => ExpectExtensionStart,
                (ExpectSize | ExpectExtensionStart, b';') => {
                    self.ext_len = 0;
                    InExtension
                }
                (ExpectSize | InExtension, b'\r') => ExpectSizeLf,
                (InExtension, b'\n' | 0) => return Err(ParseError::InvalidChunkSize),
                (InExtension, _) => {
                    self.ext_len += 1;
                    if self.ext_len > limits.max_chunk_extension {
                        return Err(ParseError::ChunkExtensionTooLong);
                    }
                    InExtension
                }
                (ExpectSize | ExpectExtensionStart, _) => return Err(ParseError::InvalidChunkSize),
                (ExpectSizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        InTrailers
                    } else {
                        self.total = self
                            .total
                            .checked_add(self.size)
                            .ok_or(ParseError::BodyTooLarge)?;
                        if self.total > limits.max_body {
                            return Err(ParseError::BodyTooLarge);
                        }
                        InData
                    }
                }
                (ExpectSizeLf, _) => return Err(ParseError::InvalidChunkSize),
                (ExpectDataCr, b'\r') => ExpectDataLf,
                (ExpectDataLf, b'\n') => {
                    self.size = 0;
                    ExpectSize
                }
                (ExpectDataCr | ExpectDataLf, _) => return Err(ParseError::BadChunkTerminator),
                (InData | InTrailers | Done, _) => return Err(ParseError::InvalidChunkSize),
            };
        }
    }

    fn decode_trailers(
        &mut self,
        buf: &mut BytesMut,
        limits: &DecodeLimits,
    ) -> Result<Decoded, ParseError> {
        let scan = ScanLimits {
            max_request_line: None,
            max_field_bytes: limits.max_trailer_bytes,
            max_fields: limits.max_trailers,
            too_large: ParseError::TrailersTooLarge,
        };
        let span = match self.trailer.scan(buf, &scan) {
            Ok(Some(span)) => span,
            Ok(None) => return Ok(Decoded::NeedMore),
            Err(ParseError::TooManyHeaders) => return Err(ParseError::TrailersTooLarge),
            Err(ParseError::TrailersTooLarge) => return Err(ParseError::TrailersTooLarge),
            Err(_) => return Err(ParseError::BadTrailers),
        };
        let section = buf.split_to(span.len).freeze();
        self.state = ChunkedState::Done;
        if span.fields == 0 {
            return Ok(Decoded::Done(Vec::new()));
        }
        let mut slots = vec![httparse::EMPTY_HEADER; span.fields];
        match httparse::parse_headers(&section, &mut slots) {
            Ok(httparse::Status::Complete((_, parsed))) => Ok(Decoded::Done(
                parsed
                    .iter()
                    .map(|h| Header {
                        name: section.slice_ref(h.name.as_bytes()),
                        value: section.slice_ref(h.value),
                    })
                    .collect(),
            )),
            _ => Err(ParseError::BadTrailers),
        }
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_body: 1000,
        max_chunk_extension: 16,
        max_trailer_bytes: 64,
        max_trailers: 4,
    };

    /// Body, trailers, and the bytes left after the message.
    type Decodedmessage = (Vec<u8>, Vec<Header>, Vec<u8>);

    /// Decodes `input` fed in pieces of `step` bytes.
    fn run(input: &[u8], step: usize) -> Result<Decodedmessage, ParseError> {
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut rest = input;
        loop {
            match d.decode(&mut buf, &LIMITS)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Done(t) => return Ok((body, t, buf.to_vec())),
                Decoded::NeedMore => {
                    if rest.is_empty() {
                        return Err(ParseError::BadChunkTerminator);
                    }
                    let n = step.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
            }
        }
    }

    #[test]
    fn chunked_with_trailers_any_split() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET";
        for step in 1..=input.len() {
            let (body, trailers, rest) = run(input, step).unwrap();
            assert_eq!(body, b"hello world");
            assert_eq!(trailers.len(), 1);
            assert_eq!(&trailers[0].value[..], b"1");
            // The decoder never reads past its message.
            assert!(b"GET".starts_with(&rest));
        }
    }

    #[test]
    fn rejects() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"+5\r\nhello\r\n0\r\n\r\n", ParseError::InvalidChunkSize),
            (b"-5\r\nhello\r\n0\r\n\r\n", ParseError::InvalidChunkSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ParseError::InvalidChunkSize),
            (b"5_0\r\nhello\r\n0\r\n\r\n", ParseError::InvalidChunkSize),
            (b"\r\n", ParseError::InvalidChunkSize),
            (b"10000000000000000\r\n", ParseError::ChunkSizeOverflow),
            (
                b"0000000000000000010000000000000000\r\n",
                ParseError::ChunkSizeOverflow,
            ),
            (b"5\nhello\r\n0\r\n\r\n", ParseError::InvalidChunkSize),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ParseError::BadChunkTerminator),
            (b"5 \r\nhello\r\n0\r\n\r\n", ParseError::InvalidChunkSize),
            (
                b"5;aaaaaaaaaaaaaaaaaaaaaaaa\r\nhello\r\n0\r\n\r\n",
                ParseError::ChunkExtensionTooLong,
            ),
            (b"3e9\r\n", ParseError::BodyTooLarge),
            (b"0\r\nX: 1\nY: 2\r\n\r\n", ParseError::BadTrailers),
            (b"0\r\n X: 1\r\n\r\n", ParseError::BadTrailers),
            (
                b"0\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n",
                ParseError::TrailersTooLarge,
            ),
        ];
        for (input, want) in cases {
            for step in [1, input.len()] {
                assert_eq!(
                    run(input, step).map(|_| ()),
                    Err(*want),
                    "{:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn leading_zeros_are_allowed_up_to_the_line_bound() {
        // RFC 9112 §7.1: the value is bounded, not the digit count.
        let (body, _, _) = run(b"000000000000000005\r\nhello\r\n00\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"hello");
        let mut at_limit = vec![b'0'; MAX_CHUNK_SIZE_DIGITS - 1];
        at_limit.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        let (body, _, _) = run(&at_limit, 7).unwrap();
        assert_eq!(body, b"hello");
        let mut past = vec![b'0'; MAX_CHUNK_SIZE_DIGITS];
        past.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(
            run(&past, 7).map(|_| ()),
            Err(ParseError::ChunkSizeOverflow)
        );
        // Sixteen significant digits after zeros parse; the value meets max_body.
        assert_eq!(
            run(b"0000ffffffffffffffff\r\n", 1).map(|_| ()),
            Err(ParseError::BodyTooLarge)
        );
    }

    #[test]
    fn bws_before_extension_is_allowed() {
        let (body, _, _) = run(b"5 ;a=b\r\nhello\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"hello");
    }

    #[test]
    fn length_decoder_stops_at_its_end() {
        let mut d = Decoder::length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            d.decode(&mut buf, &LIMITS).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(d.decode(&mut buf, &LIMITS).unwrap(), Decoded::Done(vec![]));
        assert_eq!(&buf[..], b"def");
    }
}
