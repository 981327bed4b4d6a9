//! Response helpers: the small answers every stage gives in the same shape.
//!
//! ```text
//!  A (401, 403) · dispatch (404, 413, 502) · destinations ──▶ Response ──▶ H
//! ```
//!
//! One definition each of the plain-text and the JSON answer, so that a
//! 502 from dispatch and a 502 from the proxy are the same bytes. Nothing
//! here decides *which* answer to give; the stages do.

use bytes::Bytes;
use sigma_http::{Header, Response};

/// The `Content-Type` of [`plain`].
pub const TEXT_PLAIN: &[u8] = b"text/plain; charset=utf-8";

/// A small text response: `status`, `Content-Type: text/plain;
/// charset=utf-8`, and `body` (which never carries a cause: those are
/// logged, not sent).
pub fn plain(status: u16, body: &'static str) -> Response {
    Response::new(
        status,
        vec![Header::new(&b"Content-Type"[..], TEXT_PLAIN)],
        Bytes::from_static(body.as_bytes()),
    )
}

/// `Cache-Control: no-store`: for answers about one client (sessions,
/// tokens, errors) that no cache may keep.
pub fn no_store() -> Header {
    Header::new(&b"Cache-Control"[..], &b"no-store"[..])
}

/// A JSON response (never cached).
pub fn json_response(status: u16, body: serde_json::Value) -> Response {
    Response::new(
        status,
        vec![
            Header::new(&b"Content-Type"[..], &b"application/json"[..]),
            no_store(),
        ],
        body.to_string(),
    )
}

/// `{"error": error}` as a [`json_response`].
pub fn json_error(status: u16, error: &str) -> Response {
    json_response(status, serde_json::json!({ "error": error }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_text_with_the_body() {
        let r = plain(502, "bad gateway\n");
        assert_eq!(r.status, 502);
        assert_eq!(&r.body[..], b"bad gateway\n");
        assert_eq!(r.headers.len(), 1);
        assert_eq!(&r.headers[0].value[..], TEXT_PLAIN);
    }

    #[test]
    fn json_is_never_cached() {
        let r = json_error(404, "not_found");
        assert_eq!(&r.body[..], br#"{"error":"not_found"}"#);
        assert!(r
            .headers
            .iter()
            .any(|h| h.is("cache-control") && &h.value[..] == b"no-store"));
        assert!(r
            .headers
            .iter()
            .any(|h| h.is("content-type") && &h.value[..] == b"application/json"));
    }
}
