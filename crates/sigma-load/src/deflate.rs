//! permessage-deflate (RFC 7692) for the client side of [`crate::ws`].
//!
//! `sigma-load --deflate` offers [`OFFER`]: no context takeover in either
//! direction, so every message is compressed and inflated on its own and
//! no zlib state belongs to a connection. Each load thread keeps one
//! compressor and one decompressor, reset before every message (the
//! threads run current-thread runtimes, so a thread-local is never shared
//! and never borrowed across an `await`); 10 000 idle `--deflate`
//! connections cost the load generator nothing extra.
//!
//! Sending (§7.2.1): raw DEFLATE of the whole payload, a sync flush, and
//! the trailing `00 00 ff ff` stripped. Receiving (§7.2.2): the tail
//! appended again, inflated into a buffer that may not grow past a limit
//! (a compression bomb is an error, not an allocation).

use std::cell::RefCell;

use anyhow::{anyhow, bail};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The `Sec-WebSocket-Extensions` offer of a `--deflate` client.
pub const OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// What a sender strips from each compressed message and a receiver
/// appends before inflating (RFC 7692 §7.2.1).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib's default level, which browsers use too.
const LEVEL: u32 = 6;

thread_local! {
    static COMPRESSOR: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's compressor, reset (a fresh one when the
/// thread's is in use, which only a re-entrant call could cause).
fn with_compressor<T>(f: impl FnOnce(&mut Compress) -> T) -> T {
    let cached = COMPRESSOR.with(|c| c.try_borrow_mut().ok().and_then(|mut c| c.take()));
    let mut z = match cached {
        Some(mut z) => {
            z.reset();
            z
        }
        None => Compress::new(Compression::new(LEVEL), false),
    };
    let r = f(&mut z);
    let _ = COMPRESSOR.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = Some(z);
        }
    });
    r
}

/// Like [`with_compressor`], for the decompressor.
fn with_decompressor<T>(f: impl FnOnce(&mut Decompress) -> T) -> T {
    let cached = DECOMPRESSOR.with(|c| c.try_borrow_mut().ok().and_then(|mut c| c.take()));
    let mut z = match cached {
        Some(mut z) => {
            z.reset(false);
            z
        }
        None => Decompress::new(false),
    };
    let r = f(&mut z);
    let _ = DECOMPRESSOR.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = Some(z);
        }
    });
    r
}

/// The body of an RSV1 frame carrying `payload`: raw DEFLATE, sync-flushed,
/// without the trailing `00 00 ff ff`.
pub fn compress(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    with_compressor(|z| {
        let mut out = Vec::with_capacity(payload.len() + payload.len() / 16 + 64);
        let mut fed = 0usize;
        loop {
            let (in0, out0) = (z.total_in(), out.len());
            let rest = payload.get(fed..).unwrap_or_default();
            z.compress_vec(rest, &mut out, FlushCompress::Sync)
                .map_err(|e| anyhow!("deflate: {e}"))?;
            fed += usize::try_from(z.total_in() - in0)?;
            // A sync flush is complete once zlib stops short of the end of
            // the room it was given with all the input taken.
            if fed == payload.len() && out.len() < out.capacity() {
                break;
            }
            if z.total_in() == in0 && out.len() == out0 && out.len() < out.capacity() {
                bail!("deflate made no progress");
            }
            out.reserve(out.capacity().max(64));
        }
        if !out.ends_with(&TAIL) {
            bail!("deflate: the sync flush did not end in 00 00 ff ff");
        }
        out.truncate(out.len() - TAIL.len());
        Ok(out)
    })
}

/// The payload of a compressed message whose frames carried `body`; an
/// error when it is not valid DEFLATE or would inflate past `limit` bytes.
pub fn decompress(body: &[u8], limit: usize) -> anyhow::Result<Vec<u8>> {
    with_decompressor(|z| {
        let cap = body.len().saturating_mul(4).saturating_add(64);
        let mut out = Vec::with_capacity(cap.min(limit.saturating_add(1)));
        for input in [body, &TAIL[..]] {
            let mut fed = 0usize;
            loop {
                if out.len() == out.capacity() {
                    // At least one byte, so that a message one past the
                    // limit is caught; `out.len() <= limit` here.
                    let left = limit.saturating_add(1).saturating_sub(out.len());
                    out.reserve(out.capacity().max(64).min(left).max(1));
                }
                let (in0, out0) = (z.total_in(), out.len());
                let rest = input.get(fed..).unwrap_or_default();
                let status = z
                    .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                    .map_err(|e| anyhow!("inflate: {e}"))?;
                fed += usize::try_from(z.total_in() - in0)?;
                if out.len() > limit {
                    bail!("compressed message inflates past {limit} bytes");
                }
                // A final block ends the stream: whatever follows (the
                // appended tail) is not DEFLATE any more.
                if status == Status::StreamEnd {
                    return Ok(out);
                }
                if fed == input.len() && out.len() < out.capacity() {
                    break;
                }
                if z.total_in() == in0 && out.len() == out0 && out.len() < out.capacity() {
                    bail!("inflate made no progress");
                }
            }
        }
        Ok(out)
    })
}

/// Whether the server's `Sec-WebSocket-Extensions` (all of its values,
/// `None` when it sent none) accepts our offer when `offered`: `Ok(true)`
/// for an accepted [`OFFER`], `Ok(false)` for no extension when none was
/// offered, an error for anything else (RFC 6455 §9.1: a client fails the
/// connection on an extension it did not offer; RFC 7692 §7.1: the response
/// must keep `server_no_context_takeover`, and may not name
/// `client_max_window_bits`, which we did not offer).
pub fn accepted(response: Option<&str>, offered: bool) -> anyhow::Result<bool> {
    let Some(value) = response.map(str::trim).filter(|v| !v.is_empty()) else {
        if offered {
            bail!("the server did not accept permessage-deflate (no Sec-WebSocket-Extensions)");
        }
        return Ok(false);
    };
    if !offered {
        bail!("the server negotiated an extension we did not offer: {value:?}");
    }
    if value.contains(',') {
        bail!("the server accepted more than one extension: {value:?}");
    }
    let mut parts = value.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        bail!("the server answered another extension: {value:?}");
    }
    let mut server_nct = false;
    for p in parts {
        let (key, val) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        match (key.to_ascii_lowercase().as_str(), val) {
            ("server_no_context_takeover", None) => server_nct = true,
            ("client_no_context_takeover", None) => {}
            // Our inflater's 32 KiB window reads any smaller window.
            ("server_max_window_bits", Some(v))
                if v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)) => {}
            _ => bail!("unexpected permessage-deflate parameter {p:?} in {value:?}"),
        }
    }
    if !server_nct {
        bail!("the server dropped server_no_context_takeover: {value:?}");
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_compresses() {
        let json =
            br#"{"type":"message","channel":"public:lobby","data":"hello hello hello hello"}"#;
        let noise: Vec<u8> = (0u32..5000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for payload in [&b""[..], b"x", &json[..], &noise, &[b'a'; 100_000][..]] {
            let body = compress(payload).unwrap();
            assert_eq!(decompress(&body, 1 << 20).unwrap(), payload);
            // Twice: the thread's reset states are as good as new ones.
            let again = compress(payload).unwrap();
            assert_eq!(again, body);
            assert_eq!(decompress(&again, 1 << 20).unwrap(), payload);
        }
        assert!(compress(json).unwrap().len() < json.len());
    }

    #[test]
    fn inflates_rfc_7692_examples() {
        // §7.2.3.1 ("Hello", one compressed block) and §7.2.3.3 (no
        // compression, BTYPE 00).
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(decompress(&hello, 100).unwrap(), b"Hello");
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(decompress(&stored, 100).unwrap(), b"Hello");
        // A final block (BFINAL set) followed by the appended tail.
        let final_block = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(decompress(&final_block, 100).unwrap(), b"Hello");
    }

    #[test]
    fn stops_bombs_and_garbage() {
        let bomb = compress(&vec![0u8; 1 << 20]).unwrap();
        assert!(bomb.len() < 2048);
        assert!(decompress(&bomb, 64 * 1024).is_err());
        assert_eq!(decompress(&bomb, 1 << 20).unwrap().len(), 1 << 20);
        assert!(decompress(&[0xff, 0xff, 0xff, 0xff], 1024).is_err());
    }

    #[test]
    fn checks_the_negotiation() {
        let ok = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        assert!(accepted(Some(ok), true).unwrap());
        assert!(accepted(
            Some("Permessage-Deflate;server_no_context_takeover; server_max_window_bits=10"),
            true
        )
        .unwrap());
        assert!(!accepted(None, false).unwrap());
        assert!(accepted(None, true).is_err());
        assert!(accepted(Some(ok), false).is_err());
        for bad in [
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover, x-other",
            "x-webkit-deflate-frame",
        ] {
            assert!(accepted(Some(bad), true).is_err(), "{bad}");
        }
    }
}
