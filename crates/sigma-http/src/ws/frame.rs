//! WebSocket frame headers: opcodes, incremental header decoding, and
//! server frame encoding (RFC 6455 §5.2).
//!
//! Place in `T → H → A`: inside `H`. [`HeaderDecoder`] faces the client:
//! it takes header bytes as they arrive (one at a time if need be, keeping
//! at most 14 of them), rejects a bad header as soon as its first two bytes
//! show it (RSV bits, reserved opcode, missing mask, fragmented or oversized
//! control frame) and yields a [`FrameHeader`] once complete. [`encode_header`]
//! faces the client too: it writes the unmasked headers of our frames.
//! Payloads, message reassembly, fragmentation rules and limits are
//! [`super::conn::WsConn`]'s business, not this file's.

use super::error::ProtocolError;

/// A frame opcode with a defined meaning (§5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: first frame of a text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The opcode for a 4-bit value; `None` for the reserved 0x3–0x7 and 0xB–0xF.
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The 4-bit value.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// The longest control frame payload (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The longest frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// A decoded client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: last frame of a message.
    pub fin: bool,
    /// RSV1: a compressed message (only when permessage-deflate is on).
    pub rsv1: bool,
    /// The opcode; `None` only from a lenient decode of a reserved opcode.
    pub opcode: Option<OpCode>,
    /// The masking key (present in every valid client frame).
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub len: u64,
}

/// Checks the first two header bytes of a client frame. With `rsv1`
/// (permessage-deflate negotiated), RSV1 may mark the first frame of a
/// data message as compressed (RFC 7692 §6.1); never a control or
/// continuation frame.
fn check_start(b0: u8, b1: u8, rsv1: bool) -> Result<(), ProtocolError> {
    let reserved = if rsv1 { 0x30 } else { 0x70 };
    if b0 & reserved != 0 {
        return Err(ProtocolError::NonZeroReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0f).ok_or(ProtocolError::ReservedOpcode)?;
    if b0 & 0x40 != 0 && !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(ProtocolError::NonZeroReservedBits);
    }
    if opcode.is_control() {
        if b0 & 0x80 == 0 {
            return Err(ProtocolError::FragmentedControlFrame);
        }
        if usize::from(b1 & 0x7f) > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlFrameTooBig);
        }
    }
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::UnmaskedFrameFromClient);
    }
    Ok(())
}

/// Header bytes in `b1` order: how many follow the first two.
fn rest_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    ext + mask
}

/// Decodes one frame header from bytes that may arrive in any pieces.
#[derive(Debug, Clone, Default)]
pub struct HeaderDecoder {
    buf: [u8; MAX_HEADER],
    have: usize,
    /// Set after a rejected header, to skip that frame without checks.
    lenient: bool,
    /// RSV1 is allowed on the first frame of a data message.
    rsv1: bool,
}

impl HeaderDecoder {
    /// A decoder at the start of a frame that allows RSV1 on the first
    /// frame of a data message (permessage-deflate negotiated) when `rsv1`.
    pub fn with_rsv1(rsv1: bool) -> Self {
        Self {
            rsv1,
            ..Self::default()
        }
    }

    /// Stops checking the header being decoded: after it was rejected, the
    /// connection decodes it anyway so it can skip the payload and stay in
    /// step with the client until the client's close frame.
    pub fn make_lenient(&mut self) {
        self.lenient = true;
    }

    /// Takes header bytes from `input`. Returns how many bytes were used and
    /// the header once complete. An error is reported as soon as the bytes
    /// seen show it, without consuming further input.
    pub fn decode(&mut self, input: &[u8]) -> (usize, Result<Option<FrameHeader>, ProtocolError>) {
        let mut used = 0;
        loop {
            let want = match self.buf.get(1) {
                Some(&b1) if self.have >= 2 => 2 + rest_len(b1),
                _ => 2,
            };
            if self.have >= want {
                return (used, Ok(Some(self.finish())));
            }
            let Some(&byte) = input.get(used) else {
                return (used, Ok(None));
            };
            if let Some(slot) = self.buf.get_mut(self.have) {
                *slot = byte;
            }
            self.have += 1;
            used += 1;
            if self.have == 2 && !self.lenient {
                let [b0, b1, ..] = self.buf;
                if let Err(e) = check_start(b0, b1, self.rsv1) {
                    return (used, Err(e));
                }
            }
            if self.have == 3 && !self.lenient {
                if let Err(e) = self.check_length() {
                    return (used, Err(e));
                }
            }
        }
    }

    /// Rejects a 64-bit length with the most significant bit set.
    fn check_length(&self) -> Result<(), ProtocolError> {
        match self.buf {
            [_, b1, hi, ..] if b1 & 0x7f == 127 && hi & 0x80 != 0 => {
                Err(ProtocolError::PayloadLengthMsbSet)
            }
            _ => Ok(()),
        }
    }

    /// Builds the header from the complete bytes and resets the decoder.
    fn finish(&mut self) -> FrameHeader {
        let [b0, b1, e0, e1, e2, e3, e4, e5, e6, e7, ..] = self.buf;
        let (len, ext) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([e0, e1])), 2),
            127 => (u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]), 8),
            n => (u64::from(n), 0),
        };
        let mask = if b1 & 0x80 != 0 {
            let at = 2 + ext;
            match self.buf.get(at..at + 4) {
                Some(&[m0, m1, m2, m3]) => Some([m0, m1, m2, m3]),
                _ => None,
            }
        } else {
            None
        };
        *self = Self::with_rsv1(self.rsv1);
        FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            opcode: OpCode::from_bits(b0 & 0x0f),
            mask,
            len,
        }
    }
}

/// Encodes an unmasked server frame header; returns the bytes and how many
/// of them are used (2, 4 or 10).
pub fn encode_header(fin: bool, opcode: OpCode, len: usize) -> ([u8; 10], usize) {
    let b0 = if fin { 0x80 } else { 0 } | opcode.bits();
    match (u8::try_from(len), u16::try_from(len)) {
        (Ok(n @ 0..=125), _) => ([b0, n, 0, 0, 0, 0, 0, 0, 0, 0], 2),
        (_, Ok(n)) => {
            let [h, l] = n.to_be_bytes();
            ([b0, 126, h, l, 0, 0, 0, 0, 0, 0], 4)
        }
        _ => {
            let [a, b, c, d, e, f, g, h] = u64::try_from(len).unwrap_or(u64::MAX).to_be_bytes();
            ([b0, 127, a, b, c, d, e, f, g, h], 10)
        }
    }
}

/// A test-only client: masked frames with any bits the test wants.
#[cfg(test)]
pub(crate) mod client {
    use super::super::mask::apply_mask;

    /// Encodes a client frame. `opcode` and `rsv` are raw bits so tests can
    /// send reserved values; `mask: None` sends an unmasked frame.
    pub(crate) fn frame(
        fin: bool,
        rsv: u8,
        opcode: u8,
        mask: Option<[u8; 4]>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => v.push(m | n as u8),
            n @ 126..=0xffff => {
                v.push(m | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let start = v.len();
        v.extend_from_slice(payload);
        if let Some(key) = mask {
            v.splice(start..start, key);
            apply_mask(&mut v[start + 4..], key, 0);
        }
        v
    }

    /// A valid masked frame with a fixed key.
    pub(crate) fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(fin, 0, opcode, Some([0x37, 0xfa, 0x21, 0x3d]), payload)
    }
}

#[cfg(test)]
mod tests {
    use super::client::{frame, masked};
    use super::*;

    /// Decodes one header from `bytes` fed in pieces of `step` bytes.
    fn decode_in(bytes: &[u8], step: usize) -> (usize, Result<Option<FrameHeader>, ProtocolError>) {
        let mut d = HeaderDecoder::default();
        let mut used = 0;
        for piece in bytes.chunks(step.max(1)) {
            let (n, r) = d.decode(piece);
            used += n;
            match r {
                Ok(None) => assert_eq!(n, piece.len()),
                other => return (used, other),
            }
        }
        (used, Ok(None))
    }

    fn all_splits(bytes: &[u8]) -> (usize, Result<Option<FrameHeader>, ProtocolError>) {
        let whole = decode_in(bytes, bytes.len());
        for step in 1..=bytes.len() {
            assert_eq!(decode_in(bytes, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn lengths_and_masks() {
        let key = [1, 2, 3, 4];
        for len in [0usize, 1, 125, 126, 127, 0xffff, 0x10000] {
            let f = frame(true, 0, 2, Some(key), &vec![0; len]);
            let hlen = f.len() - len;
            let (used, h) = all_splits(&f[..hlen]);
            assert_eq!(used, hlen);
            assert_eq!(
                h,
                Ok(Some(FrameHeader {
                    fin: true,
                    rsv1: false,
                    opcode: Some(OpCode::Binary),
                    mask: Some(key),
                    len: len as u64
                }))
            );
        }
        // The decoder stops at the end of the header.
        let f = masked(false, 1, b"abc");
        let (used, h) = decode_in(&f, f.len());
        assert_eq!(used, 6);
        assert!(!h.unwrap().unwrap().fin);
    }

    #[test]
    fn rejects_on_the_second_byte() {
        let cases: [(Vec<u8>, ProtocolError); 7] = [
            (
                frame(true, 1, 1, Some([0; 4]), b""),
                ProtocolError::NonZeroReservedBits,
            ),
            (
                frame(true, 4, 1, Some([0; 4]), b""),
                ProtocolError::NonZeroReservedBits,
            ),
            (
                frame(true, 0, 3, Some([0; 4]), b""),
                ProtocolError::ReservedOpcode,
            ),
            (
                frame(true, 0, 0xb, Some([0; 4]), b""),
                ProtocolError::ReservedOpcode,
            ),
            (
                frame(false, 0, 9, Some([0; 4]), b""),
                ProtocolError::FragmentedControlFrame,
            ),
            (
                frame(true, 0, 9, Some([0; 4]), &[0; 126]),
                ProtocolError::ControlFrameTooBig,
            ),
            (
                frame(true, 0, 1, None, b"hi"),
                ProtocolError::UnmaskedFrameFromClient,
            ),
        ];
        for (f, e) in cases {
            assert_eq!(all_splits(&f), (2, Err(e)), "{f:?}");
        }
        for op in (3..=7).chain(0xb..=0xf) {
            assert_eq!(
                all_splits(&frame(true, 0, op, Some([0; 4]), b"")).1,
                Err(ProtocolError::ReservedOpcode)
            );
        }
        // A control frame of exactly 125 bytes is fine.
        assert!(matches!(
            all_splits(&masked(true, 9, &[0; 125])).1,
            Ok(Some(_))
        ));
    }

    #[test]
    fn rsv1_only_on_a_first_data_frame_when_negotiated() {
        let decode = |rsv1: bool, f: &[u8]| {
            let mut d = HeaderDecoder::with_rsv1(rsv1);
            d.decode(f).1.map(|h| h.map(|h| h.rsv1))
        };
        let key = Some([0; 4]);
        for op in [1, 2] {
            assert_eq!(
                decode(true, &frame(false, 4, op, key, b"x")),
                Ok(Some(true))
            );
            assert_eq!(
                decode(false, &frame(true, 4, op, key, b"x")),
                Err(ProtocolError::NonZeroReservedBits)
            );
        }
        for op in [0, 8, 9, 10] {
            assert_eq!(
                decode(true, &frame(true, 4, op, key, b"")),
                Err(ProtocolError::NonZeroReservedBits),
                "opcode {op}"
            );
        }
        // RSV2 and RSV3 stay reserved.
        for rsv in [1, 2, 5, 6] {
            assert_eq!(
                decode(true, &frame(true, rsv, 1, key, b"")),
                Err(ProtocolError::NonZeroReservedBits)
            );
        }
        // The setting survives from one header to the next.
        let mut d = HeaderDecoder::with_rsv1(true);
        let two = [frame(true, 4, 1, key, b""), frame(true, 4, 2, key, b"")].concat();
        let (n, r) = d.decode(&two);
        assert!(matches!(r, Ok(Some(FrameHeader { rsv1: true, .. }))));
        assert!(matches!(
            d.decode(&two[n..]).1,
            Ok(Some(FrameHeader { rsv1: true, .. }))
        ));
    }

    #[test]
    fn rejects_64_bit_length_with_msb() {
        let mut f = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(all_splits(&f), (3, Err(ProtocolError::PayloadLengthMsbSet)));
        f[2] = 0x7f;
        assert!(
            matches!(all_splits(&f), (14, Ok(Some(FrameHeader { len, .. }))) if len == 0x7f00_0000_0000_0001)
        );
    }

    #[test]
    fn lenient_decode_skips_a_rejected_header() {
        let f = frame(true, 2, 5, None, b"xyz");
        let mut d = HeaderDecoder::default();
        let (n, r) = d.decode(&f);
        assert_eq!((n, r), (2, Err(ProtocolError::NonZeroReservedBits)));
        d.make_lenient();
        let (n, r) = d.decode(&f[2..]);
        assert_eq!(n, 0);
        assert_eq!(
            r,
            Ok(Some(FrameHeader {
                fin: true,
                rsv1: false,
                opcode: None,
                mask: None,
                len: 3
            }))
        );
        assert_eq!(d.decode(&[]), (0, Ok(None)));
    }

    #[test]
    fn encodes_server_headers() {
        let cases: [(usize, &[u8]); 5] = [
            (0, &[0x81, 0]),
            (125, &[0x81, 125]),
            (126, &[0x81, 126, 0, 126]),
            (0xffff, &[0x81, 126, 0xff, 0xff]),
            (0x10000, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ];
        for (len, want) in cases {
            let (buf, n) = encode_header(true, OpCode::Text, len);
            assert_eq!(&buf[..n], want);
        }
        let (buf, n) = encode_header(false, OpCode::Continuation, 3);
        assert_eq!(&buf[..n], &[0x00, 3]);
        for op in [
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ] {
            assert_eq!(OpCode::from_bits(op.bits()), Some(op));
        }
    }
}
