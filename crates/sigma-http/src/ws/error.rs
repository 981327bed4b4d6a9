//! What a WebSocket client can do wrong, one variant per RFC 6455 rule.
//!
//! Place in `T → H → A`: inside `H`, on the client-facing side of an open
//! WebSocket. [`super::conn::WsConn`] turns each [`ProtocolError`] into one
//! wire outcome, a close frame with [`ProtocolError::close_code`], and one
//! `Event::Abort` labelled [`ProtocolError::reason`] for metrics. This file
//! does not decide *when* an error is raised (that is `frame.rs`, `close.rs`
//! and `conn.rs`) and says nothing about caller mistakes, which are
//! [`crate::SendError`].

use std::fmt;

use super::close;

/// A WebSocket protocol violation by the client (RFC 6455 §5, §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame without the MASK bit (§5.1).
    UnmaskedFrameFromClient,
    /// RSV1–3 set with no extension negotiated (§5.2), or RSV1 where
    /// permessage-deflate does not allow it: on a control or continuation
    /// frame (RFC 7692 §6.1).
    NonZeroReservedBits,
    /// Opcode 0x3–0x7 or 0xB–0xF (§5.2).
    ReservedOpcode,
    /// A control frame without FIN (§5.5).
    FragmentedControlFrame,
    /// A control frame payload over 125 bytes (§5.5).
    ControlFrameTooBig,
    /// A continuation frame with no fragmented message open (§5.4).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is open (§5.4).
    ExpectedContinuation,
    /// A 64-bit payload length with the most significant bit set (§5.2).
    PayloadLengthMsbSet,
    /// A close frame with a one-byte payload (§5.5.1).
    CloseFrameTooShort,
    /// A close code that may not appear on the wire (§7.4).
    InvalidCloseCode,
    /// A text message that is not valid UTF-8 (§8.1).
    InvalidUtf8,
    /// A compressed message that is not valid DEFLATE data (RFC 7692 §6.2).
    InvalidCompressedData,
    /// A close reason that is not valid UTF-8 (§5.5.1).
    InvalidUtf8CloseReason,
    /// A frame payload over `max_frame` (§7.4.1, 1009).
    FrameTooBig,
    /// A reassembled message over `max_message` (§7.4.1, 1009).
    MessageTooBig,
    /// The client does not read what we send: the outbound queue would
    /// exceed `max_outbound` (1008, policy).
    SlowConsumer,
    /// Assembling this message would pass `server.memory_budget` (1009).
    InboundBudget,
    /// Queuing this message would pass `server.memory_budget` (1008).
    OutboundBudget,
}

impl ProtocolError {
    /// The status code of the close frame we send (§7.4.1).
    pub fn close_code(&self) -> u16 {
        use ProtocolError::*;
        match self {
            UnmaskedFrameFromClient
            | NonZeroReservedBits
            | ReservedOpcode
            | FragmentedControlFrame
            | ControlFrameTooBig
            | UnexpectedContinuation
            | ExpectedContinuation
            | PayloadLengthMsbSet
            | CloseFrameTooShort
            | InvalidCloseCode => close::PROTOCOL_ERROR,
            InvalidUtf8 | InvalidUtf8CloseReason | InvalidCompressedData => close::INVALID_PAYLOAD,
            SlowConsumer | OutboundBudget => close::POLICY_VIOLATION,
            FrameTooBig | MessageTooBig | InboundBudget => close::MESSAGE_TOO_BIG,
        }
    }

    /// A stable, low-cardinality label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        use ProtocolError::*;
        match self {
            UnmaskedFrameFromClient => "ws_unmasked_frame",
            NonZeroReservedBits => "ws_reserved_bits",
            ReservedOpcode => "ws_reserved_opcode",
            FragmentedControlFrame => "ws_fragmented_control_frame",
            ControlFrameTooBig => "ws_control_frame_too_big",
            UnexpectedContinuation => "ws_unexpected_continuation",
            ExpectedContinuation => "ws_expected_continuation",
            PayloadLengthMsbSet => "ws_payload_length_msb_set",
            CloseFrameTooShort => "ws_close_frame_too_short",
            InvalidCloseCode => "ws_invalid_close_code",
            InvalidUtf8 => "ws_invalid_utf8",
            InvalidCompressedData => "ws_invalid_deflate",
            InvalidUtf8CloseReason => "ws_invalid_utf8_close_reason",
            FrameTooBig => "ws_frame_too_big",
            MessageTooBig => "ws_message_too_big",
            SlowConsumer => "ws_slow_consumer",
            InboundBudget | OutboundBudget => "memory_budget",
        }
    }

    /// The reason text of our close frame (short, ASCII, ≤ 123 bytes).
    pub fn close_reason(&self) -> &'static str {
        use ProtocolError::*;
        match self {
            UnmaskedFrameFromClient => "unmasked frame",
            NonZeroReservedBits => "reserved bits set",
            ReservedOpcode => "reserved opcode",
            FragmentedControlFrame => "fragmented control frame",
            ControlFrameTooBig => "control frame too big",
            UnexpectedContinuation => "unexpected continuation frame",
            ExpectedContinuation => "expected continuation frame",
            PayloadLengthMsbSet => "invalid payload length",
            CloseFrameTooShort => "invalid close frame",
            InvalidCloseCode => "invalid close code",
            InvalidUtf8 => "invalid UTF-8 in text message",
            InvalidCompressedData => "invalid compressed data",
            InvalidUtf8CloseReason => "invalid UTF-8 in close reason",
            FrameTooBig => "frame too big",
            MessageTooBig => "message too big",
            SlowConsumer => "slow consumer",
            InboundBudget | OutboundBudget => "memory budget",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.close_reason())
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolError::*;

    const ALL: [ProtocolError; 16] = [
        UnmaskedFrameFromClient,
        NonZeroReservedBits,
        ReservedOpcode,
        FragmentedControlFrame,
        ControlFrameTooBig,
        UnexpectedContinuation,
        ExpectedContinuation,
        PayloadLengthMsbSet,
        CloseFrameTooShort,
        InvalidCloseCode,
        InvalidUtf8,
        InvalidCompressedData,
        InvalidUtf8CloseReason,
        FrameTooBig,
        MessageTooBig,
        SlowConsumer,
    ];

    #[test]
    fn codes_are_the_four_allowed() {
        for e in ALL {
            assert!(matches!(e.close_code(), 1002 | 1007 | 1008 | 1009), "{e:?}");
            assert!(close::may_send(e.close_code()), "{e:?}");
        }
        assert_eq!(InvalidUtf8.close_code(), 1007);
        assert_eq!(FrameTooBig.close_code(), 1009);
        assert_eq!(MessageTooBig.close_code(), 1009);
        assert_eq!(SlowConsumer.close_code(), 1008);
        assert_eq!(ReservedOpcode.close_code(), 1002);
    }

    #[test]
    fn labels_are_distinct_and_reasons_fit_a_close_frame() {
        let mut labels: Vec<_> = ALL.iter().map(|e| e.reason()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ALL.len());
        for e in ALL {
            assert!(e.reason().starts_with("ws_"));
            assert!(e.close_reason().len() <= close::MAX_REASON);
            assert_eq!(e.to_string(), e.close_reason());
        }
    }
}
