//! Close codes and close-frame payloads (RFC 6455 §5.5.1, §7.4; IANA
//! "WebSocket Close Code Number Registry").
//!
//! Place in `T → H → A`: inside `H`, on the client-facing side. It answers
//! two questions: may this code arrive from the client ([`may_receive`]),
//! and may we put this code on the wire ([`may_send`])? It also splits a
//! received close payload into code and reason and builds ours. It does not
//! decide when to close; that is [`super::conn::WsConn`].

use super::error::ProtocolError;

/// 1000: normal closure.
pub const NORMAL: u16 = 1000;
/// 1001: going away (server shutdown, idle timeout).
pub const GOING_AWAY: u16 = 1001;
/// 1002: protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: unsupported data.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1005: no status received. Never on the wire.
pub const NO_STATUS: u16 = 1005;
/// 1006: abnormal closure. Never on the wire.
pub const ABNORMAL: u16 = 1006;
/// 1007: invalid payload data (e.g. bad UTF-8).
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: policy violation.
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: message too big.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1010: mandatory extension. Only a client may send it.
pub const MANDATORY_EXTENSION: u16 = 1010;
/// 1011: internal error.
pub const INTERNAL_ERROR: u16 = 1011;
/// 1012: service restart (IANA).
pub const SERVICE_RESTART: u16 = 1012;
/// 1013: try again later (IANA).
pub const TRY_AGAIN_LATER: u16 = 1013;
/// 1014: bad gateway (IANA).
pub const BAD_GATEWAY: u16 = 1014;
/// 1015: TLS handshake failure. Never on the wire.
pub const TLS_HANDSHAKE: u16 = 1015;

/// The longest close reason: 125 bytes of control payload minus the code.
pub const MAX_REASON: usize = 123;

/// True when `code` may appear in a close frame from the client.
///
/// 1000–1003 and 1007–1011 are defined by RFC 6455 §7.4.1, 1012–1014 are
/// registered with IANA, 3000–3999 are registered for libraries and
/// 4000–4999 are private use. Everything else (below 1000, 1004 reserved,
/// 1005/1006/1015 which must never be sent, 1016–2999 unassigned, 5000 and
/// up) fails the connection with 1002.
pub fn may_receive(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// True when the server may send `code`: [`may_receive`] minus 1010, which
/// only a client sends (it names extensions the server failed to negotiate).
pub fn may_send(code: u16) -> bool {
    may_receive(code) && code != MANDATORY_EXTENSION
}

/// The code and reason of a received close frame (payload already unmasked).
///
/// An empty payload has no code. A one-byte payload, a code that may not be
/// received, or a reason that is not UTF-8 is a protocol error.
pub fn parse_payload(payload: &[u8]) -> Result<(Option<u16>, String), ProtocolError> {
    match payload {
        [] => Ok((None, String::new())),
        [_] => Err(ProtocolError::CloseFrameTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !may_receive(code) {
                return Err(ProtocolError::InvalidCloseCode);
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8CloseReason)?;
            Ok((Some(code), reason.to_owned()))
        }
    }
}

/// Appends the payload of our close frame: nothing, or the code then the reason.
/// The caller has checked `reason.len() <= MAX_REASON`.
pub fn encode_payload(code: Option<u16>, reason: &str, out: &mut Vec<u8>) {
    if let Some(code) = code {
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(reason.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Autobahn 7.7.x sends these and expects a clean close.
    const AUTOBAHN_VALID: [u16; 13] = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ];
    /// Autobahn 7.9.x sends these and expects 1002.
    const AUTOBAHN_INVALID: [u16; 9] = [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999];

    #[test]
    fn autobahn_close_code_tables() {
        for code in AUTOBAHN_VALID {
            assert!(may_receive(code), "{code}");
        }
        for code in AUTOBAHN_INVALID {
            assert!(!may_receive(code), "{code}");
        }
        // 7.13.x (informational): out of range.
        assert!(!may_receive(5000));
        assert!(!may_receive(65535));
    }

    #[test]
    fn every_code_classified() {
        for code in 0..=u16::MAX {
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(may_receive(code), expected, "{code}");
            assert_eq!(may_send(code), expected && code != 1010, "{code}");
        }
        for never in [NO_STATUS, ABNORMAL, TLS_HANDSHAKE, 1004] {
            assert!(!may_receive(never) && !may_send(never));
        }
        for iana in [SERVICE_RESTART, TRY_AGAIN_LATER, BAD_GATEWAY] {
            assert!(may_receive(iana) && may_send(iana));
        }
        assert!(may_receive(MANDATORY_EXTENSION) && !may_send(MANDATORY_EXTENSION));
        assert!(may_send(NORMAL) && may_send(GOING_AWAY) && may_send(INTERNAL_ERROR));
        assert!(may_send(UNSUPPORTED_DATA));
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(parse_payload(b""), Ok((None, String::new())));
        assert_eq!(
            parse_payload(&[0x03]),
            Err(ProtocolError::CloseFrameTooShort)
        );
        assert_eq!(
            parse_payload(&[0x03, 0xe8]),
            Ok((Some(1000), String::new()))
        );
        assert_eq!(
            parse_payload(b"\x03\xe8bye \xce\xba"),
            Ok((Some(1000), "bye κ".to_owned()))
        );
        assert_eq!(
            parse_payload(&[0x03, 0xed]),
            Err(ProtocolError::InvalidCloseCode)
        );
        assert_eq!(
            parse_payload(b"\x03\xe8\xed\xa0\x80"),
            Err(ProtocolError::InvalidUtf8CloseReason)
        );
        // A valid close code is checked before the reason.
        assert_eq!(
            parse_payload(b"\x00\x00\xff"),
            Err(ProtocolError::InvalidCloseCode)
        );
    }

    #[test]
    fn encode_payloads() {
        let mut v = Vec::new();
        encode_payload(None, "ignored", &mut v);
        assert!(v.is_empty());
        encode_payload(Some(1001), "idle", &mut v);
        assert_eq!(v, b"\x03\xe9idle");
        assert_eq!(parse_payload(&v), Ok((Some(1001), "idle".to_owned())));
    }
}
