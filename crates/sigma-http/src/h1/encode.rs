//! Response encoding (RFC 9112 §4, §6): status line, `Date`, framing
//! headers chosen by `H`, validated destination headers, body.
//!
//! Framing belongs to `H`: a destination's `Content-Length`,
//! `Transfer-Encoding`, `Connection`, `Keep-Alive` and `Date` are dropped
//! and replaced. Header names must be tokens and values must not contain
//! CR, LF or NUL, so a destination cannot inject a header or a response.

use crate::error::SendError;
use crate::event::{Header, Response};

use crate::token::is_tchar;

/// How the response ends the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnHeader {
    /// HTTP/1.1 keep-alive (default, no header).
    None,
    /// `Connection: keep-alive` (an HTTP/1.0 client asked for it).
    KeepAlive,
    /// `Connection: close`.
    Close,
}

/// Checks a destination's headers before anything is written.
pub fn validate_headers(headers: &[Header]) -> Result<(), SendError> {
    for h in headers {
        if h.name.is_empty() || !h.name.iter().all(|&b| is_tchar(b)) {
            return Err(SendError::InvalidHeader);
        }
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(SendError::InvalidHeader);
        }
    }
    Ok(())
}

/// True for the statuses that never carry a body (RFC 9110 §6.4.1).
pub fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

fn is_framing_header(h: &Header) -> bool {
    h.is("content-length")
        || h.is("transfer-encoding")
        || h.is("connection")
        || h.is("keep-alive")
        || h.is("date")
}

/// Appends the encoded response to `out`. `head_only` is true for a
/// response to HEAD (the `Content-Length` of the body is kept, the body is
/// not sent). Headers must have been validated.
pub fn encode_response(
    out: &mut Vec<u8>,
    resp: &Response,
    date: &[u8],
    conn: ConnHeader,
    head_only: bool,
) {
    let status = resp.status;
    let no_body = status_has_no_body(status);
    out.reserve(128 + resp.body.len());
    push_head_start(out, status, &resp.headers, date, conn);
    if !no_body {
        push_content_length(out, resp.body.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    if !no_body && !head_only {
        out.extend_from_slice(&resp.body);
    }
}

/// How a streamed response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFraming {
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No framing header: the body ends with the connection (HTTP/1.0), or
    /// there is no body (HEAD with an unknown length, 204, 304).
    None,
}

/// Appends the head of a streamed response (its body follows through
/// [`encode_chunk`]). Headers must have been validated.
pub fn encode_stream_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[Header],
    date: &[u8],
    conn: ConnHeader,
    framing: StreamFraming,
) {
    push_head_start(out, status, headers, date, conn);
    match framing {
        StreamFraming::Length(n) => push_content_length(out, n),
        StreamFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        StreamFraming::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// The part of a final response's head that does not depend on how its
/// body is framed: status line, `Date`, `Connection`, and the
/// destination's own (non-framing) headers. The framing header and the
/// blank line follow.
fn push_head_start(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[Header],
    date: &[u8],
    conn: ConnHeader,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, status);
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    match conn {
        ConnHeader::None => {}
        ConnHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    for h in headers.iter().filter(|h| !is_framing_header(h)) {
        push_header(out, &h.name, &h.value);
    }
}

/// Appends one chunk of a chunked body (`data` must not be empty: an empty
/// chunk is the end).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let mut size = [0u8; 16];
    let mut n = data.len();
    let mut i = size.len();
    loop {
        i = i.saturating_sub(1);
        if let Some(d) = size.get_mut(i) {
            *d = b"0123456789abcdef".get(n % 16).copied().unwrap_or(b'0');
        }
        n /= 16;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(size.get(i..).unwrap_or_default());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends an interim (1xx) response head, such as `100 Continue`.
pub fn encode_interim(out: &mut Vec<u8>, status: u16, headers: &[Header]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, status);
    out.extend_from_slice(b"\r\n");
    for h in headers.iter().filter(|h| !is_framing_header(h)) {
        push_header(out, &h.name, &h.value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one `name: value` line.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

fn push_status(out: &mut Vec<u8>, status: u16) {
    if (100..=999).contains(&status) {
        // Three digits and the space in one append (the digit loop
        // showed in the per-request profile).
        let digit = |n: u16| b'0' + (n % 10) as u8;
        out.extend_from_slice(&[digit(status / 100), digit(status / 10), digit(status), b' ']);
    } else {
        push_decimal(out, u64::from(status));
        out.push(b' ');
    }
    out.extend_from_slice(reason_phrase(status).as_bytes());
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// The reason phrase of a status ("" for unknown codes).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    fn enc(resp: &Response, conn: ConnHeader, head: bool) -> String {
        let mut out = Vec::new();
        encode_response(&mut out, resp, DATE, conn, head);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn framing_rules() {
        let r = Response::new(
            200,
            vec![Header::new("Content-Length", "99"), Header::new("X-A", "b")],
            "hi",
        );
        assert_eq!(
            enc(&r, ConnHeader::None, false),
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-A: b\r\nContent-Length: 2\r\n\r\nhi"
        );
        assert!(enc(&r, ConnHeader::Close, true).ends_with("Content-Length: 2\r\n\r\n"));
        assert!(enc(&r, ConnHeader::Close, true).contains("Connection: close\r\n"));
        let r = Response::new(204, vec![], "ignored");
        assert!(enc(&r, ConnHeader::None, false).ends_with("GMT\r\n\r\n"));
        let r = Response::new(304, vec![], "");
        assert!(!enc(&r, ConnHeader::None, false).contains("Content-Length"));
    }

    #[test]
    fn header_injection_refused() {
        assert!(validate_headers(&[Header::new("X", "a\r\nSet-Cookie: x")]).is_err());
        assert!(validate_headers(&[Header::new("X Y", "a")]).is_err());
        assert!(validate_headers(&[Header::new("X", "a\0")]).is_err());
        assert!(validate_headers(&[Header::new("X", "a\tb")]).is_ok());
    }

    #[test]
    fn status_lines() {
        for status in [
            0u16,
            7,
            42,
            99,
            100,
            101,
            200,
            204,
            404,
            599,
            999,
            1000,
            u16::MAX,
        ] {
            let mut v = Vec::new();
            push_status(&mut v, status);
            let want = format!("{status} {}", reason_phrase(status));
            assert_eq!(String::from_utf8(v).unwrap(), want);
        }
    }

    #[test]
    fn decimal() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(String::from_utf8(v).unwrap(), n.to_string());
        }
    }
}
