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

/// `{"error": CODE, "message": TEXT}` as a [`json_response`], with the
/// code's [`error_message`]: the one shape of a JSON error over HTTP
/// (DESIGN §6).
pub fn json_error(status: u16, code: &str) -> Response {
    json_error_message(status, code, error_message(code))
}

/// [`json_error`] with a message of the caller's (more precise than the
/// code's usual one).
pub fn json_error_message(status: u16, code: &str, message: &str) -> Response {
    json_response(status, error_body(code, message))
}

/// [`json_error`] with more fields (`retry_after`, `max_message`, …) from
/// the object `extra`; `error` and `message` are always the code's.
pub fn json_error_with(status: u16, code: &str, extra: serde_json::Value) -> Response {
    let mut body = error_body(code, error_message(code));
    if let (serde_json::Value::Object(fields), serde_json::Value::Object(more)) = (&mut body, extra)
    {
        for (k, v) in more {
            fields.entry(k).or_insert(v);
        }
    }
    json_response(status, body)
}

/// `{"error": code, "message": message}`.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": code, "message": message })
}

/// The human message of an error code sent by sigma's own HTTP answers
/// (for people reading it, not for programs: clients branch on the code).
/// An unknown code gets a generic message.
pub fn error_message(code: &str) -> &'static str {
    match code {
        "bad_request" => "the request is malformed",
        "bad_json" => "the body is not valid JSON",
        "bad_channel" => "the channel name is not valid",
        "busy" => "the server is busy; retry later",
        "cross_site" => "cross-site requests are refused",
        "forbidden" => "you may not do this",
        "internal" => "internal error",
        "invalid_credentials" => "wrong user name or password",
        "invalid_path" => "the request path is ambiguous",
        "invalid_token" => "the bearer token is not valid",
        "message_too_large" => "the message is larger than the server accepts",
        "method_not_allowed" => "this method is not allowed here",
        "not_acceptable" => "GET here streams server-sent events: send Accept: text/event-stream",
        "not_found" => "not found",
        "slow_consumer" => "the connection is not keeping up",
        "store_unavailable" | "unavailable" => {
            "a service sigma needs cannot be reached; retry later"
        }
        "too_many_attempts" => "too many failed attempts; retry later",
        "too_many_requests" => "too many requests; retry later",
        "too_many_subscriptions" => "too many subscriptions on this connection",
        "unauthenticated" => "log in first",
        _ => "the request was refused",
    }
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
        assert_eq!(
            &r.body[..],
            br#"{"error":"not_found","message":"not found"}"#
        );
        assert!(r
            .headers
            .iter()
            .any(|h| h.is("cache-control") && &h.value[..] == b"no-store"));
        assert!(r
            .headers
            .iter()
            .any(|h| h.is("content-type") && &h.value[..] == b"application/json"));
    }

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn every_error_has_a_message() {
        for code in [
            "bad_request",
            "bad_json",
            "bad_channel",
            "busy",
            "cross_site",
            "forbidden",
            "internal",
            "invalid_credentials",
            "invalid_path",
            "invalid_token",
            "message_too_large",
            "method_not_allowed",
            "not_found",
            "slow_consumer",
            "store_unavailable",
            "too_many_attempts",
            "too_many_requests",
            "too_many_subscriptions",
            "unauthenticated",
            "unavailable",
        ] {
            assert_ne!(error_message(code), error_message("?"), "{code}");
            let b = body(&json_error(400, code));
            assert_eq!(b["error"], code);
            assert_eq!(b["message"], error_message(code));
        }
    }

    #[test]
    fn extra_fields_are_kept() {
        let r = json_error_with(
            429,
            "too_many_attempts",
            serde_json::json!({"retry_after": 3, "error": "x", "message": "y"}),
        );
        assert_eq!(r.status, 429);
        assert_eq!(
            body(&r),
            serde_json::json!({"error": "too_many_attempts", "retry_after": 3,
                               "message": error_message("too_many_attempts")})
        );
        let r = json_error_message(400, "bad_request", "expected a form");
        assert_eq!(
            body(&r),
            serde_json::json!({"error": "bad_request", "message": "expected a form"})
        );
    }
}
