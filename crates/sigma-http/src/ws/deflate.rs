//! permessage-deflate codec (RFC 7692 §7.2): raw DEFLATE per message,
//! without context takeover in either direction.
//!
//! Place in `T → H → A`: inside `H`, under [`super::conn::WsConn`].
//! [`Inflater`] faces the client: `WsConn` feeds it the unmasked payload
//! of a compressed message as it arrives, in any pieces, and takes the
//! inflated bytes out through a fixed buffer of [`INFLATE_CHUNK`] bytes, so
//! it can count them against `max_message` as they grow and stop a
//! compression bomb after at most that many bytes of output; at the end of
//! the message it feeds [`TAIL`] (§7.2.2). [`compress`] faces the client
//! too: it turns one outbound payload into the body of an RSV1 frame.
//!
//! Memory (measured with zlib-rs 0.6, the flate2 backend): a decompressor
//! is ~47 KiB ([`INFLATER_FOOTPRINT`]) whatever its window, and belongs to
//! a socket only while a compressed message is arriving; a compressor is
//! ~250 KiB (9-bit window) to ~380 KiB (15-bit) and is used only inside
//! [`compress`]. An idle socket therefore holds no zlib state. Since no
//! state is taken over between messages, zlib states are not allocated
//! per message either: each thread keeps one compressor and up to
//! [`POOLED_INFLATERS`] decompressors, reset between uses (allocating and
//! freeing ~380 KiB per message fragmented the heap: 800 idle sockets that
//! had each echoed one compressed message held ~140 KiB of RSS apiece).
//! The pool is invisible to the codec's behaviour (a reset state is a new
//! one), so the core stays deterministic. Not here: negotiation
//! (`extension.rs`) and frame handling (`conn.rs`).

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::error::ProtocolError;
use super::mask::apply_mask;

/// Compressed payload is unmasked through a scratch buffer of at most this.
pub const UNMASK_PIECE: usize = 4096;

/// The four bytes a sender strips from the end of each compressed message
/// and the receiver appends before inflating (RFC 7692 §7.2.1, §7.2.2).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Inflated output is taken out in pieces of at most this many bytes.
pub const INFLATE_CHUNK: usize = 16 * 1024;

/// What a live decompressor keeps allocated (zlib-rs inflate state and its
/// 32 KiB window, measured: 47 552 bytes), charged to the memory budget.
pub const INFLATER_FOOTPRINT: usize = 48 * 1024;

/// The largest compressed frame accepted where `max_frame` bounds a
/// plain one: DEFLATE expands incompressible data a little, ~5 bytes per
/// block, and a client compressing a fragment of exactly `max_frame` such
/// bytes is not at fault. Blocks are as small as zlib's `memLevel` makes
/// them, measured on 64 KiB of random bytes at level 6: memLevel 8 adds
/// 21 bytes, 5 (Python `websockets`) 162, 2 1 286, 1 2 581 (3.9 %); 1/16
/// covers them all.
pub fn max_compressed(max_frame: usize) -> usize {
    max_frame.saturating_add(max_frame / 16).saturating_add(64)
}

/// The compression level of outbound messages: zlib's default.
const LEVEL: u32 = 6;

/// Decompressors each thread keeps for reuse (~47 KiB each).
pub const POOLED_INFLATERS: usize = 4;

thread_local! {
    /// This thread's compressor and its window bits, reset before each use.
    static COMPRESSOR: RefCell<Option<(u8, Compress)>> = const { RefCell::new(None) };
    /// Reset decompressors (15-bit window) ready for the next message.
    static INFLATERS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

/// The smallest window zlib can compress or inflate raw DEFLATE with.
const MIN_ZLIB_WINDOW_BITS: u8 = 9;
/// The largest window (32 KiB).
const MAX_ZLIB_WINDOW_BITS: u8 = 15;

/// The decompressor of one compressed message; back to this thread's
/// pool when dropped.
#[derive(Debug)]
pub struct Inflater {
    /// Always `Some` until dropped (then it goes back to the pool).
    z: Option<Decompress>,
    /// The DEFLATE stream ended (a block with BFINAL): whatever follows in
    /// this message is ignored.
    ended: bool,
}

impl Inflater {
    /// A decompressor for a stream compressed with any window up to 2^15
    /// bytes (a window larger than the sender's always works, and costs
    /// zlib-rs the same memory), from this thread's pool if it has one.
    pub fn new() -> Self {
        let pooled = INFLATERS.with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()));
        Self {
            z: Some(
                pooled.unwrap_or_else(|| {
                    Decompress::new_with_window_bits(false, MAX_ZLIB_WINDOW_BITS)
                }),
            ),
            ended: false,
        }
    }

    /// Inflates from `input` into `out`; returns (input bytes used, bytes
    /// written). Both are 0 when no progress is possible (the stream ended,
    /// or there is no input and nothing pending). Malformed DEFLATE data
    /// is [`ProtocolError::InvalidCompressedData`].
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), ProtocolError> {
        let Some(z) = self.z.as_mut() else {
            return Ok((0, 0));
        };
        if self.ended || out.is_empty() {
            return Ok((0, 0));
        }
        let (in0, out0) = (z.total_in(), z.total_out());
        let status = z
            .decompress(input, out, FlushDecompress::Sync)
            .map_err(|_| ProtocolError::InvalidCompressedData)?;
        if status == Status::StreamEnd {
            self.ended = true;
        }
        let used = usize::try_from(z.total_in().saturating_sub(in0)).unwrap_or(input.len());
        let made = usize::try_from(z.total_out().saturating_sub(out0)).unwrap_or(out.len());
        Ok((used.min(input.len()), made.min(out.len())))
    }

    /// Unmasks `chunk` (payload bytes from mask phase `phase`) through
    /// `scratch`, at most [`UNMASK_PIECE`] bytes at a time, and inflates
    /// it as [`Self::inflate_all`] does.
    pub fn inflate_masked<F>(
        &mut self,
        chunk: &[u8],
        mask: Option<[u8; 4]>,
        mut phase: usize,
        scratch: &mut Vec<u8>,
        buf: &mut [u8],
        mut sink: F,
    ) -> Result<(), ProtocolError>
    where
        F: FnMut(&[u8]) -> Result<(), ProtocolError>,
    {
        for piece in chunk.chunks(UNMASK_PIECE) {
            scratch.clear();
            scratch.extend_from_slice(piece);
            if let Some(key) = mask {
                apply_mask(scratch, key, phase);
            }
            phase = (phase + piece.len()) % 4;
            self.inflate_all(scratch, buf, &mut sink)?;
        }
        Ok(())
    }

    /// Inflates all of `input`, handing the output to `sink` in pieces of
    /// at most `buf.len()` bytes; stops at the first error from either.
    pub fn inflate_all<F>(
        &mut self,
        mut input: &[u8],
        buf: &mut [u8],
        mut sink: F,
    ) -> Result<(), ProtocolError>
    where
        F: FnMut(&[u8]) -> Result<(), ProtocolError>,
    {
        loop {
            let (used, made) = self.inflate(input, buf)?;
            input = input.get(used..).unwrap_or_default();
            if made > 0 {
                sink(buf.get(..made).unwrap_or_default())?;
            }
            // Done once the input is used up and the output did not fill
            // the buffer (nothing more is pending), or nothing moved.
            if (input.is_empty() && made < buf.len()) || (used == 0 && made == 0) {
                return Ok(());
            }
        }
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        let Some(mut z) = self.z.take() else { return };
        let _ = INFLATERS.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if p.len() < POOLED_INFLATERS {
                    z.reset(false);
                    p.push(z);
                }
            }
        });
    }
}

/// The body of an RSV1 frame carrying `payload`, compressed with a reset
/// compressor of `window_bits` (no context takeover), the [`TAIL`]
/// stripped, at most [`max_compressed`] of its length; `None` (send it
/// uncompressed) only when `window_bits` is below what zlib can produce
/// (8) or zlib fails.
///
/// Every message is compressed, even tiny or incompressible ones (16
/// bytes of JSON become 18, random data grows by ~5 bytes per 16 KiB):
/// sending some messages uncompressed is allowed (RSV1 is per message)
/// but the Autobahn client (kosoku) then mishandles them (12.1.1, 12.5.x
/// and 13.x.1–2 error), and the pooled compressor makes a tiny message
/// cheap (a reset, no allocation).
pub fn compress(payload: &[u8], window_bits: u8) -> Option<Vec<u8>> {
    if !(MIN_ZLIB_WINDOW_BITS..=MAX_ZLIB_WINDOW_BITS).contains(&window_bits) {
        return None;
    }
    let cached = COMPRESSOR.with(|c| c.try_borrow_mut().ok().and_then(|mut c| c.take()));
    let mut z = match cached {
        Some((bits, mut z)) if bits == window_bits => {
            z.reset();
            z
        }
        _ => Compress::new_with_window_bits(Compression::new(LEVEL), false, window_bits),
    };
    let body = compress_with(&mut z, payload);
    let _ = COMPRESSOR.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = Some((window_bits, z));
        }
    });
    body
}

/// [`compress`] with a reset compressor.
fn compress_with(z: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    // Room for DEFLATE's worst-case expansion and the tail: the buffer
    // never grows (past it, zlib stops and the message goes uncompressed).
    let room = max_compressed(payload.len()).saturating_add(TAIL.len());
    let mut out = Vec::with_capacity(room);
    let status = z
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .ok()?;
    let all_in = usize::try_from(z.total_in()).ok() == Some(payload.len());
    if status != Status::Ok || !all_in || !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len().saturating_sub(TAIL.len()));
    out.shrink_to_fit();
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `n` incompressible bytes (xorshift64 from `seed`).
    pub(crate) fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// Inflates one message given as pieces, the tail appended.
    fn inflate_pieces(pieces: &[&[u8]], limit: usize) -> Result<Vec<u8>, ProtocolError> {
        let mut inf = Inflater::new();
        let mut out = Vec::new();
        let mut buf = vec![0; 1000];
        let mut sink = |b: &[u8]| {
            if out.len() + b.len() > limit {
                return Err(ProtocolError::MessageTooBig);
            }
            out.extend_from_slice(b);
            Ok(())
        };
        for p in pieces {
            inf.inflate_all(p, &mut buf, &mut sink)?;
        }
        inf.inflate_all(&TAIL, &mut buf, &mut sink)?;
        Ok(out)
    }

    #[test]
    fn rfc_7692_examples() {
        // §7.2.3.1: "Hello" compressed, as one piece and split.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_pieces(&[&hello], 100).unwrap(), b"Hello");
        assert_eq!(
            inflate_pieces(&[&hello[..3], &hello[3..]], 100).unwrap(),
            b"Hello"
        );
        // §7.2.3.3: no compression (a stored block).
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate_pieces(&[&stored], 100).unwrap(), b"Hello");
        // §7.2.3.4: BFINAL set; what the tail adds after it is ignored.
        let fin = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_pieces(&[&fin], 100).unwrap(), b"Hello");
        // Not DEFLATE.
        assert_eq!(
            inflate_pieces(&[&[0xff, 0xff, 0xff]], 100),
            Err(ProtocolError::InvalidCompressedData)
        );
    }

    #[test]
    fn compress_always_compresses_within_the_bound() {
        let tiny = compress(b"tiny", 15).unwrap();
        assert!(tiny.len() <= max_compressed(4));
        assert_eq!(inflate_pieces(&[&tiny], 100).unwrap(), b"tiny");
        assert_eq!(
            inflate_pieces(&[&compress(b"", 15).unwrap()], 100).unwrap(),
            b""
        );
        let random = noise(0x9e37_79b9_7f4a_7c15u64, 4096);
        let c = compress(&random, 15).unwrap();
        assert!(c.len() <= max_compressed(random.len()));
        assert_eq!(inflate_pieces(&[&c], 10_000).unwrap(), random);
        let text = "the quick brown fox ".repeat(100);
        let c = compress(text.as_bytes(), 15).unwrap();
        assert!(c.len() < text.len() / 5);
        assert_eq!(inflate_pieces(&[&c], 10_000).unwrap(), text.as_bytes());
        assert_eq!(compress(text.as_bytes(), 8), None, "zlib cannot do 8");
        let c9 = compress(text.as_bytes(), 9).unwrap();
        assert_eq!(inflate_pieces(&[&c9], 10_000).unwrap(), text.as_bytes());
    }

    #[test]
    fn small_blocks_of_incompressible_data_fit_the_frame_bound() {
        // Python websockets compresses with memLevel 5 (2 KiB blocks); a
        // client's max_frame fragment of random bytes grows by ~0.25 %.
        let noise = noise(0x1234_5678_9abc_def1u64, 65536);
        let c = compress(&noise, 15).unwrap();
        assert!(c.len() > noise.len() && c.len() <= max_compressed(noise.len()));
        // zlib's worst measured growth (memLevel 1): 65 536 -> 68 117.
        assert!(68_117 <= max_compressed(noise.len()));
    }

    #[test]
    fn pooled_states_are_as_good_as_new() {
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        for _ in 0..POOLED_INFLATERS + 2 {
            // Left mid-stream, or failed: the next one starts clean.
            let mut half = Inflater::new();
            let mut buf = [0; 64];
            half.inflate(&hello[..4], &mut buf).unwrap();
            let mut bad = Inflater::new();
            assert!(bad.inflate(&[0xff; 8], &mut buf).is_err());
            drop((half, bad));
            assert_eq!(inflate_pieces(&[&hello], 100).unwrap(), b"Hello");
        }
        assert!(INFLATERS.with(|p| p.borrow().len()) <= POOLED_INFLATERS);
        // The compressor is reset between messages and windows.
        let text = "reuse reuse reuse reuse reuse ".repeat(20);
        let first = compress(text.as_bytes(), 15).unwrap();
        for bits in [15, 9, 15, 12, 12] {
            let again = compress(text.as_bytes(), bits).unwrap();
            assert_eq!(inflate_pieces(&[&again], 10_000).unwrap(), text.as_bytes());
            if bits == 15 {
                assert_eq!(again, first, "no context carried over");
            }
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 64 MiB of zeros in ~64 KiB; stopped after at most 1 MiB of output.
        let zeros = vec![0u8; 64 << 20];
        let mut z = Compress::new(Compression::best(), false);
        let mut c = Vec::with_capacity(1 << 20);
        z.compress_vec(&zeros, &mut c, FlushCompress::Sync).unwrap();
        drop(zeros);
        let mut inf = Inflater::new();
        let mut buf = vec![0; INFLATE_CHUNK];
        let mut total = 0usize;
        let r = inf.inflate_all(&c, &mut buf, |b| {
            total += b.len();
            if total > 1 << 20 {
                Err(ProtocolError::MessageTooBig)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(ProtocolError::MessageTooBig));
        assert!(total <= (1 << 20) + INFLATE_CHUNK);
    }

    proptest! {
        /// compress → inflate in arbitrary pieces is the identity, for
        /// every window, within the expansion bound.
        #[test]
        fn round_trip(
            words in proptest::collection::vec(prop_oneof![Just("abc"), Just("sigma "), Just("{\"k\":1}"), Just("\u{e9}t\u{e9}")], 0..400),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
            bits in 9u8..=15,
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let noise_free = noise.is_empty();
            let mut msg = words.concat().into_bytes();
            msg.extend(noise);
            match compress(&msg, bits) {
                None => prop_assert!(false, "not compressed"),
                Some(c) => {
                    prop_assert!(c.len() <= max_compressed(msg.len()));
                    if noise_free && msg.len() > 400 {
                        prop_assert!(c.len() < msg.len());
                    }
                    let mut at: Vec<usize> = cuts.iter().map(|x| x % (c.len() + 1)).collect();
                    at.sort_unstable();
                    let mut pieces = Vec::new();
                    let mut last = 0;
                    for a in at {
                        pieces.push(&c[last..a]);
                        last = a;
                    }
                    pieces.push(&c[last..]);
                    prop_assert_eq!(inflate_pieces(&pieces, usize::MAX).unwrap(), msg);
                }
            }
        }

        /// Arbitrary bytes: an error or some output, never a panic.
        #[test]
        fn arbitrary_input_is_survived(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = inflate_pieces(&[&input], 10_000);
        }
    }
}
