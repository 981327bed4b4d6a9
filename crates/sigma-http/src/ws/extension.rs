//! permessage-deflate negotiation (RFC 7692 §5, §7.1): which offer in a
//! client's `Sec-WebSocket-Extensions` we accept, and what the 101 says.
//!
//! Place in `T → H → A`: inside `H`, part of the opening handshake.
//! [`negotiate`] reads the request's extension offers (all
//! `Sec-WebSocket-Extensions` headers, one comma-separated list) strictly:
//! an offer with an unknown, duplicate or malformed parameter is declined,
//! as is the rest of a header whose syntax breaks (an unterminated quoted
//! string); nothing here can fail the handshake or panic. The first
//! acceptable `permessage-deflate` offer wins. Whether compression is on at
//! all is the caller's decision (`[websocket] compression`), and the codec
//! itself is `deflate.rs`.
//!
//! What sigma answers, and why (memory per idle connection, DESIGN §3):
//! always `server_no_context_takeover` and `client_no_context_takeover`
//! (RFC 7692 §7.1.1: a server may include both whatever the offer says),
//! so no compressor or decompressor state outlives a message; an idle
//! compressed socket holds no zlib state at all. `server_max_window_bits`
//! is honoured (our compressor uses that window; 8, which zlib cannot
//! produce raw, is accepted and then we simply never compress, as RSV1 is
//! per message); `client_max_window_bits` is accepted with or without a
//! value, and our decompressor uses that window (at least 9).

use crate::event::{DeflateParams, Header};

/// The name of the extension (RFC 7692 §6).
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// The smallest LZ77 window an offer may name (2^8 bytes, §7.1.2).
pub const MIN_WINDOW_BITS: u8 = 8;
/// The largest LZ77 window (2^15 bytes), the default of both directions.
pub const MAX_WINDOW_BITS: u8 = 15;

/// The `Sec-WebSocket-Extensions` value of the 101 response that accepts
/// `params`.
pub fn response_value(params: &DeflateParams) -> String {
    let mut v =
        format!("{PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover");
    if params.server_window_requested {
        v.push_str(&format!(
            "; server_max_window_bits={}",
            params.server_max_window_bits
        ));
    }
    v
}

/// The first acceptable permessage-deflate offer among the request's
/// `Sec-WebSocket-Extensions` headers, as the parameters we agree to.
pub fn negotiate(headers: &[Header]) -> Option<DeflateParams> {
    headers
        .iter()
        .filter(|h| h.is("sec-websocket-extensions"))
        .flat_map(|h| Elements { rest: &h.value })
        .find_map(|offer| offer.and_then(accept_offer))
}

/// One parameter of an offer: its name and its value (unquoted), if any.
type Param<'a> = (&'a [u8], Option<Vec<u8>>);

/// Parses one list element `name *( ";" param )`; `None` when malformed.
fn parse_element(element: &[u8]) -> Option<(&[u8], Vec<Param<'_>>)> {
    let mut parts = split_outside_quotes(element, b';').into_iter();
    let name = parts.next()?.trim_ascii();
    if !is_token(name) {
        return None;
    }
    let mut params = Vec::new();
    for part in parts {
        let (key, value) = match part.iter().position(|&b| b == b'=') {
            Some(at) => {
                let (k, v) = part.split_at(at);
                (k, Some(v.get(1..)?))
            }
            None => (part, None),
        };
        let key = key.trim_ascii();
        if !is_token(key) {
            return None;
        }
        let value = match value.map(<[u8]>::trim_ascii) {
            None => None,
            Some(v) if is_token(v) => Some(v.to_vec()),
            Some(v) => Some(unquote(v)?),
        };
        params.push((key, value));
    }
    Some((name, params))
}

/// Accepts a permessage-deflate offer we can honour; `None` for any other
/// extension, or an offer with an unknown, repeated or invalid parameter.
fn accept_offer((name, params): (&[u8], Vec<Param<'_>>)) -> Option<DeflateParams> {
    if !name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE.as_bytes()) {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_bits = None;
    let mut client_bits = None;
    for (key, value) in &params {
        const KEYS: [&str; 4] = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ];
        let i = KEYS
            .iter()
            .position(|k| key.eq_ignore_ascii_case(k.as_bytes()))?;
        let slot = seen.get_mut(i)?;
        if std::mem::replace(slot, true) {
            return None;
        }
        match (i, value) {
            // The no_context_takeover parameters have no value (§7.1.1).
            (0 | 1, None) => {}
            (2, Some(v)) => server_bits = Some(window_bits(v)?),
            (3, None) => {}
            (3, Some(v)) => client_bits = Some(window_bits(v)?),
            _ => return None,
        }
    }
    Some(DeflateParams {
        server_max_window_bits: server_bits.unwrap_or(MAX_WINDOW_BITS),
        server_window_requested: server_bits.is_some(),
        client_max_window_bits: client_bits.unwrap_or(MAX_WINDOW_BITS),
    })
}

/// A window-bits value: a decimal 8–15 without leading zeros (§7.1.2).
fn window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + (d - b'0')),
        _ => None,
    }
}

/// The comma-separated elements of one header value; an element is `None`
/// when it is malformed, and an unterminated quote ends the list with one.
struct Elements<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Elements<'a> {
    type Item = Option<(&'a [u8], Vec<Param<'a>>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let Some(end) = find_outside_quotes(self.rest, b',') else {
                // Unbalanced quotes: the rest cannot be read.
                self.rest = &[];
                return Some(None);
            };
            let (element, rest) = self.rest.split_at(end);
            self.rest = rest.get(1..).unwrap_or_default();
            let element = element.trim_ascii();
            if element.is_empty() {
                continue; // empty list elements are allowed (RFC 9110 §5.6.1)
            }
            return Some(parse_element(element));
        }
    }
}

/// The index of the first `sep` outside a quoted string, the length if
/// there is none, or `None` when a quoted string is not closed.
fn find_outside_quotes(s: &[u8], sep: u8) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
        } else if b == b'"' {
            quoted = true;
        } else if b == sep {
            return Some(i);
        }
    }
    (!quoted).then_some(s.len())
}

/// `s` split at every `sep` outside quoted strings (quotes are balanced:
/// [`Elements`] only yields elements [`find_outside_quotes`] could end).
fn split_outside_quotes(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(at) = find_outside_quotes(rest, sep) {
        let (part, tail) = rest.split_at(at);
        parts.push(part);
        match tail.get(1..) {
            Some(t) => rest = t,
            None => return parts,
        }
    }
    parts.push(rest);
    parts
}

/// The content of a quoted string (RFC 9110 §5.6.4); `None` if `v` is not
/// exactly one. RFC 7692 §7.1: the unquoted value must be a token.
fn unquote(v: &[u8]) -> Option<Vec<u8>> {
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(inner.len());
    let mut escaped = false;
    for &b in inner {
        if escaped {
            out.push(b);
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return None;
        } else {
            out.push(b);
        }
    }
    (!escaped && is_token(&out)).then_some(out)
}

/// A non-empty RFC 9110 token.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer(values: &[&'static str]) -> Option<DeflateParams> {
        let headers: Vec<Header> = values
            .iter()
            .map(|v| Header::new("Sec-WebSocket-Extensions", *v))
            .collect();
        negotiate(&headers)
    }

    fn params(server: u8, requested: bool, client: u8) -> Option<DeflateParams> {
        Some(DeflateParams {
            server_max_window_bits: server,
            server_window_requested: requested,
            client_max_window_bits: client,
        })
    }

    #[test]
    fn accepts_the_usual_offers() {
        assert_eq!(offer(&["permessage-deflate"]), params(15, false, 15));
        // Python websockets' and browsers' default offer.
        assert_eq!(
            offer(&["permessage-deflate; client_max_window_bits"]),
            params(15, false, 15)
        );
        assert_eq!(
            offer(&["permessage-deflate; client_no_context_takeover; client_max_window_bits; server_max_window_bits=9"]),
            params(9, true, 15)
        );
        assert_eq!(
            offer(&[
                "PerMessage-Deflate ;Server_No_Context_Takeover ; client_max_window_bits = \"10\""
            ]),
            params(15, false, 10)
        );
        assert_eq!(
            offer(&["permessage-deflate; server_max_window_bits=8"]),
            params(8, true, 15)
        );
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
    }

    #[test]
    fn the_first_acceptable_offer_wins_across_headers() {
        assert_eq!(
            offer(&[
                "foo, permessage-deflate; server_max_window_bits=7",
                ",, permessage-deflate; server_max_window_bits=10, permessage-deflate"
            ]),
            params(10, true, 15)
        );
        // A malformed extension elsewhere does not hide a good offer.
        assert_eq!(
            offer(&["a b; c, permessage-deflate"]),
            params(15, false, 15)
        );
        // A quoted comma stays in its element.
        assert_eq!(
            offer(&["foo; bar=\"x,y\", permessage-deflate"]),
            params(15, false, 15)
        );
        // An unterminated quote ends what can be read of that header only.
        assert_eq!(
            offer(&["foo; bar=\"x, permessage-deflate", "permessage-deflate"]),
            params(15, false, 15)
        );
        assert_eq!(offer(&["foo; bar=\"x, permessage-deflate"]), None);
    }

    #[test]
    fn declines_malformed_or_duplicate_parameters() {
        for bad in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=1O",
            "permessage-deflate; client_max_window_bits=\"16\"",
            "permessage-deflate; client_max_window_bits=\"1\\0\"x",
            "permessage-deflate; client_max_window_bits=\"\"",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"\"",
            "permessage-deflate; mystery",
            "permessage-deflate; ",
            "permessage-deflate;;",
            "permessage-deflate; a=b=c",
            "permessage-deflate; =10",
            "permessage deflate",
            "permessage-deflate; client_max_window_bits=1 0",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
        }
    }

    #[test]
    fn response_names_what_we_do() {
        assert_eq!(
            response_value(&params(15, false, 15).unwrap()),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            response_value(&params(9, true, 12).unwrap()),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9"
        );
    }

    proptest! {
        /// Any header bytes: no panic, and whatever is accepted is in range.
        #[test]
        fn arbitrary_offers_never_panic(value in proptest::collection::vec(any::<u8>(), 0..80), prefix in any::<bool>()) {
            let mut v = if prefix { b"permessage-deflate;".to_vec() } else { Vec::new() };
            v.extend(value);
            let h = [Header::new("Sec-WebSocket-Extensions", bytes::Bytes::from(v))];
            if let Some(p) = negotiate(&h) {
                prop_assert!((MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&p.server_max_window_bits));
                prop_assert!((MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&p.client_max_window_bits));
            }
        }
    }
}
