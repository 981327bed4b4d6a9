//! The WebSocket opening handshake, server side (RFC 6455 §4.2).
//!
//! Place in `T → H → A`: inside `H`, between the HTTP/1 request parser and
//! the WebSocket codec. [`parse_upgrade`] looks at a parsed request head and
//! says whether it is an upgrade attempt and whether that attempt is valid;
//! the result travels right to `A` on the request (`Origin` for the
//! cross-site check, the offered subprotocols for the destination).
//! [`accept_key`] computes `Sec-WebSocket-Accept` for the 101 response. This
//! file does not write responses or choose a subprotocol; the
//! permessage-deflate offer is read by `extension.rs`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::error::ParseError;
use crate::event::{Header, Method, Version, WsHandshake};
use crate::token::is_tchar;

/// The GUID appended to the key (§1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Comma-separated list elements of every header named `name`, trimmed of
/// optional whitespace; empty elements are skipped (RFC 9110 §5.6.1).
fn list_tokens<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.is(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn has_token(headers: &[Header], name: &str, token: &str) -> bool {
    list_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The single header named `name`: `Ok(None)` if absent, `Err` if repeated.
fn single<'a>(headers: &'a [Header], name: &str) -> Result<Option<&'a Header>, ParseError> {
    let mut found = headers.iter().filter(|h| h.is(name));
    let first = found.next();
    if found.next().is_some() {
        return Err(ParseError::BadWebSocketHandshake);
    }
    Ok(first)
}

/// Validates a WebSocket upgrade request (§4.2.1).
///
/// `Ok(None)`: no `Upgrade` header names `websocket`; not an upgrade attempt.
/// `Ok(Some)`: a valid handshake. `Err(UnsupportedWebSocketVersion)`: the
/// version is missing or not 13 (answer 426 with `Sec-WebSocket-Version:
/// 13`). `Err(BadWebSocketHandshake)`: anything else malformed (400).
pub fn parse_upgrade(
    method: Method,
    version: Version,
    headers: &[Header],
) -> Result<Option<WsHandshake>, ParseError> {
    if !has_token(headers, "upgrade", "websocket") {
        return Ok(None);
    }
    if method != Method::Get
        || version != Version::Http11
        || !has_token(headers, "connection", "upgrade")
    {
        return Err(ParseError::BadWebSocketHandshake);
    }
    let key = single(headers, "sec-websocket-key")?.ok_or(ParseError::BadWebSocketHandshake)?;
    let key_bytes = key.value.trim_ascii();
    let decoded_len = STANDARD.decode(key_bytes).map(|k| k.len());
    if key_bytes.len() != 24 || decoded_len != Ok(16) {
        return Err(ParseError::BadWebSocketHandshake);
    }
    let mut versions = list_tokens(headers, "sec-websocket-version");
    if versions.next() != Some(b"13".as_slice()) || versions.next().is_some() {
        return Err(ParseError::UnsupportedWebSocketVersion);
    }
    let mut protocols = Vec::new();
    for p in list_tokens(headers, "sec-websocket-protocol") {
        if !p.iter().all(|&b| is_tchar(b)) {
            return Err(ParseError::BadWebSocketHandshake);
        }
        // Tokens are ASCII, so this cannot fail.
        protocols.push(String::from_utf8_lossy(p).into_owned());
    }
    let origin = single(headers, "origin")?.map(|h| h.value.clone());
    Ok(Some(WsHandshake {
        key: Bytes::copy_from_slice(key_bytes),
        protocols,
        origin,
        deflate: super::extension::negotiate(headers),
    }))
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`:
/// base64(SHA-1(key ++ GUID)) (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn h(name: &'static str, value: &'static str) -> Header {
        Header::new(name, value)
    }

    fn valid() -> Vec<Header> {
        vec![
            h("Host", "server.example.com"),
            h("Upgrade", "websocket"),
            h("Connection", "Upgrade"),
            h("Sec-WebSocket-Key", KEY),
            h("Origin", "http://example.com"),
            h("Sec-WebSocket-Protocol", "chat, superchat"),
            h("Sec-WebSocket-Version", "13"),
        ]
    }

    fn parse(headers: &[Header]) -> Result<Option<WsHandshake>, ParseError> {
        parse_upgrade(Method::Get, Version::Http11, headers)
    }

    fn with(mut headers: Vec<Header>, name: &str, value: Option<&'static str>) -> Vec<Header> {
        headers.retain(|x| !x.is(name));
        if let Some(v) = value {
            headers.push(Header::new(Bytes::copy_from_slice(name.as_bytes()), v));
        }
        headers
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_handshake() {
        let hs = parse(&valid()).unwrap().unwrap();
        assert_eq!(hs.key, KEY);
        assert_eq!(hs.protocols, ["chat", "superchat"]);
        assert_eq!(hs.origin.as_deref(), Some(&b"http://example.com"[..]));
    }

    #[test]
    fn extension_offers_ride_on_the_handshake() {
        assert_eq!(parse(&valid()).unwrap().unwrap().deflate, None);
        let mut hs = valid();
        hs.push(h(
            "Sec-WebSocket-Extensions",
            "foo, permessage-deflate; bad",
        ));
        assert_eq!(
            parse(&hs).unwrap().unwrap().deflate,
            None,
            "declined, not a 400"
        );
        hs.push(h(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; server_max_window_bits=12",
        ));
        let d = parse(&hs).unwrap().unwrap().deflate.unwrap();
        assert_eq!(
            (d.server_max_window_bits, d.server_window_requested),
            (12, true)
        );
    }

    #[test]
    fn token_lists_are_case_insensitive_and_span_headers() {
        let mut hs = with(valid(), "connection", Some("keep-alive, UPGRADE"));
        hs = with(hs, "upgrade", Some("h2c, WebSocket"));
        hs.push(h("sec-websocket-protocol", " v2.x ,, v3 "));
        let got = parse(&hs).unwrap().unwrap();
        assert_eq!(got.protocols, ["chat", "superchat", "v2.x", "v3"]);
        let mut hs = with(valid(), "connection", Some("keep-alive"));
        hs.push(h("Connection", "upgrade"));
        assert!(parse(&hs).unwrap().is_some());
        let hs = with(valid(), "origin", None);
        assert_eq!(parse(&hs).unwrap().unwrap().origin, None);
        let hs = with(valid(), "sec-websocket-protocol", None);
        assert!(parse(&hs).unwrap().unwrap().protocols.is_empty());
    }

    #[test]
    fn not_an_upgrade() {
        assert_eq!(parse(&with(valid(), "upgrade", None)), Ok(None));
        assert_eq!(parse(&with(valid(), "upgrade", Some("h2c"))), Ok(None));
        assert_eq!(parse(&[h("Host", "x")]), Ok(None));
        // Not an attempt even when other WebSocket headers are there.
        assert_eq!(
            parse_upgrade(
                Method::Post,
                Version::Http10,
                &with(valid(), "upgrade", None)
            ),
            Ok(None)
        );
    }

    #[test]
    fn bad_handshakes() {
        use ParseError::BadWebSocketHandshake as Bad;
        assert_eq!(
            parse_upgrade(Method::Post, Version::Http11, &valid()),
            Err(Bad)
        );
        assert_eq!(
            parse_upgrade(Method::Head, Version::Http11, &valid()),
            Err(Bad)
        );
        assert_eq!(
            parse_upgrade(Method::Get, Version::Http10, &valid()),
            Err(Bad)
        );
        assert_eq!(parse(&with(valid(), "connection", None)), Err(Bad));
        assert_eq!(
            parse(&with(valid(), "connection", Some("keep-alive"))),
            Err(Bad)
        );
        assert_eq!(
            parse(&with(valid(), "connection", Some("upgraded"))),
            Err(Bad)
        );
        assert_eq!(parse(&with(valid(), "sec-websocket-key", None)), Err(Bad));
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",       // no padding
            "dGhlIHNhbXBsZSBub25jZQ==dGhl", // too long
            "dGhlIHNhbXBsZSBub25j",         // 15 bytes
            "dGhlIHNhbXBsZSBub25jZQ!=",     // not base64
            "AAAAAAAAAAAAAAAAAAAAAAAA",     // 24 characters, 18 bytes
            "AAAAAAAAAAAAAAAAAAAAAAA=",     // 24 characters, 17 bytes
        ] {
            assert_eq!(
                parse(&with(valid(), "sec-websocket-key", Some(key))),
                Err(Bad),
                "{key}"
            );
        }
        let mut dup = valid();
        dup.push(h("Sec-WebSocket-Key", KEY));
        assert_eq!(parse(&dup), Err(Bad));
        let mut dup = valid();
        dup.push(h("Origin", "http://evil.example"));
        assert_eq!(parse(&dup), Err(Bad));
        assert_eq!(
            parse(&with(valid(), "sec-websocket-protocol", Some("chat, a b"))),
            Err(Bad)
        );
        assert_eq!(
            parse(&with(valid(), "sec-websocket-protocol", Some("ch\"at"))),
            Err(Bad)
        );
    }

    #[test]
    fn unsupported_versions() {
        use ParseError::UnsupportedWebSocketVersion as V;
        assert_eq!(parse(&with(valid(), "sec-websocket-version", None)), Err(V));
        for v in ["8", "12", "14", "13, 8", "", "thirteen"] {
            assert_eq!(
                parse(&with(valid(), "sec-websocket-version", Some(v))),
                Err(V),
                "{v}"
            );
        }
        let mut two = valid();
        two.push(h("Sec-WebSocket-Version", "13"));
        assert_eq!(parse(&two), Err(V));
        assert_eq!(ParseError::UnsupportedWebSocketVersion.status(), 426);
        assert_eq!(ParseError::BadWebSocketHandshake.status(), 400);
    }
}
