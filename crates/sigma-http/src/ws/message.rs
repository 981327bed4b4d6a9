//! A data message being reassembled by [`super::conn::WsConn`], and how its
//! buffer grows (RFC 6455 §5.4 fragments, RFC 7692 inflated output).
//!
//! Place in `T → H → A`: inside `H`, on the client-facing side of an open
//! WebSocket. The buffer never grows past what the frames declared (plain
//! messages) or `max_message` (inflated ones), and every growth is charged
//! to the connection's memory account before it is allocated. Framing,
//! limits on frames and the event queue are `conn.rs`'s business.

use super::error::ProtocolError;
use super::utf8::Utf8Validator;
use crate::io::OutBuf;

/// A data message being reassembled.
#[derive(Debug)]
pub(super) enum Partial {
    /// Text, validated as it grows (the validator carries a split character).
    Text {
        /// The valid text so far.
        text: String,
        /// The incremental UTF-8 check.
        utf8: Utf8Validator,
    },
    /// Binary bytes.
    Binary(Vec<u8>),
}

impl Partial {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Text { text, utf8 } => text.len().saturating_add(utf8.pending()),
            Self::Binary(v) => v.len(),
        }
    }

    /// The bytes the buffer keeps allocated (what it charges to the budget).
    pub(super) fn capacity(&self) -> usize {
        match self {
            Self::Text { text, .. } => text.capacity(),
            Self::Binary(v) => v.capacity(),
        }
    }
}

/// The least a message buffer grows by (unless its frame ends sooner), so
/// that a message trickling in is not reallocated for every read.
const MIN_GROWTH: usize = 64 * 1024;

/// The capacity a message buffer needs so that `len + additional` bytes
/// fit: `cap` when they do; else doubling (at least [`MIN_GROWTH`]) but
/// never past `frame_end`, the end of the frame being read as its header
/// declared it (within `max_message`, checked by `open_sink`). A message
/// sent as one frame ends in a buffer of exactly its size, and no buffer
/// is ever larger than what its frames declared.
pub(super) fn message_capacity(
    len: usize,
    cap: usize,
    additional: usize,
    frame_end: usize,
) -> usize {
    let need = len.saturating_add(additional);
    if need <= cap {
        return cap;
    }
    cap.saturating_mul(2)
        .max(MIN_GROWTH)
        .min(frame_end)
        .max(need)
}

/// Appends inflated bytes to `message`: 1009 past `max`, the growth
/// charged to `out`'s account before it is allocated, text validated.
pub(super) fn append_inflated(
    message: &mut Partial,
    bytes: &[u8],
    max: usize,
    out: &mut OutBuf,
) -> Result<(), ProtocolError> {
    let (len, cap) = (message.len(), message.capacity());
    if len.checked_add(bytes.len()).is_none_or(|total| total > max) {
        return Err(ProtocolError::MessageTooBig);
    }
    let target = message_capacity(len, cap, bytes.len(), max);
    if !out.charge(target.saturating_sub(cap)) {
        return Err(ProtocolError::InboundBudget);
    }
    match message {
        Partial::Binary(data) => {
            data.reserve_exact(target.saturating_sub(data.len()));
            data.extend_from_slice(bytes);
            Ok(())
        }
        Partial::Text { text, utf8 } => {
            text.reserve_exact(target.saturating_sub(text.len()));
            utf8.push(bytes, text)
                .map_err(|_| ProtocolError::InvalidUtf8)
        }
    }
}
