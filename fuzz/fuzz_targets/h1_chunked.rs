//! Invariant: the chunked body `Decoder` never panics, never hands out more than `max_body` bytes or an empty piece, never consumes a byte past the end of its message, and gives the same body, trailers, error and end position whether the input comes whole or split.
//!
//! Where it sits: inside `H`, between the head parser and the events; this
//! target drives `sigma_http::h1::decode` directly, without a connection.
//!
//! Input layout: byte 0 picks the limits (bit 0: tiny limits) and the
//! split mode (bits 1–2); byte 1 seeds the split lengths; the rest is the
//! bytes after a `Transfer-Encoding: chunked` head.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sigma_fuzz::Input;
use sigma_http::h1::decode::{DecodeLimits, Decoded, Decoder};
use sigma_http::{Header, ParseError};

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let data = input.data;
    let limits = if input.small_limits() {
        DecodeLimits {
            max_body: 64,
            max_chunk_extension: 8,
            max_trailer_bytes: 32,
            max_trailers: 2,
        }
    } else {
        DecodeLimits {
            max_body: 8 * 1024 * 1024,
            max_chunk_extension: 1024,
            max_trailer_bytes: 16 * 1024,
            max_trailers: 100,
        }
    };

    let whole = decode(&[data], &limits);
    let pieces = input.pieces();
    let by_pieces = decode(&pieces, &limits);
    assert_eq!(whole, by_pieces, "whole vs {} pieces", pieces.len());

    if let End::Done { consumed, .. } = &whole.end {
        // The message is exactly data[..consumed]: alone it decodes the
        // same, and what follows it is never looked at.
        let prefix = data.get(..*consumed).unwrap_or_default();
        let alone = decode(&[prefix], &limits);
        assert_eq!(whole, alone, "the message alone decodes differently");
        let mut tail = prefix.to_vec();
        tail.extend_from_slice(b"\0\r\nGARBAGE");
        let with_garbage = decode(&[&tail], &limits);
        assert_eq!(
            whole, with_garbage,
            "bytes after the message changed the result"
        );
    }
});

#[derive(Debug, PartialEq)]
enum End {
    /// The body ended after `consumed` input bytes.
    Done {
        consumed: usize,
        trailers: Vec<Header>,
    },
    /// The input ran out first.
    NeedMore,
    Error(ParseError),
}

#[derive(Debug, PartialEq)]
struct Result {
    body: Vec<u8>,
    end: End,
}

fn decode(pieces: &[&[u8]], limits: &DecodeLimits) -> Result {
    let mut d = Decoder::chunked();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0usize;
    let mut next = pieces.iter();
    let end = loop {
        match d.decode(&mut buf, limits) {
            Ok(Decoded::Data(b)) => {
                assert!(!b.is_empty(), "empty Data");
                body.extend_from_slice(&b);
                assert!(body.len() as u64 <= limits.max_body, "body over max_body");
            }
            Ok(Decoded::Done(trailers)) => {
                let consumed = fed - buf.len();
                // Done is sticky and consumes nothing more.
                let before = buf.len();
                assert!(matches!(d.decode(&mut buf, limits), Ok(Decoded::Done(_))));
                assert_eq!(buf.len(), before);
                break End::Done { consumed, trailers };
            }
            Ok(Decoded::NeedMore) => match next.next() {
                Some(p) => {
                    buf.extend_from_slice(p);
                    fed += p.len();
                }
                None => break End::NeedMore,
            },
            Err(e) => break End::Error(e),
        }
    };
    Result { body, end }
}
