//! Parses one complete request head (found by [`super::scan`]) into a
//! [`RequestHead`] and its body framing, strictly per RFC 9112.
//!
//! The request line is parsed here (single spaces, known methods, origin-,
//! absolute- and asterisk-form targets, `HTTP/1.0` and `HTTP/1.1`); the
//! field lines go through `httparse`. Then the semantic checks that make
//! framing unambiguous: `Host` exactly once, `Content-Length` and
//! `Transfer-Encoding` never together, only one `chunked`, no guessing.

use bytes::Bytes;

use crate::error::ParseError;
use crate::event::{parse_content_length, Header, Method, RequestHead, Version};
use crate::limits::Limits;
use crate::token::{in_class, is_tchar, HOST_CHAR};
use crate::ws;

use super::scan::HeadSpan;

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes (`Content-Length`, > 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed head with what the connection needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHead {
    /// The head handed right.
    pub head: RequestHead,
    /// Body framing.
    pub body: BodyKind,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// The HTTP/2 connection preface's first line (RFC 9113 §3.4).
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// Parses the head `head` (exactly `span.len` bytes, ending in CRLF CRLF).
pub fn parse(head: Bytes, span: &HeadSpan, limits: &Limits) -> Result<ParsedHead, ParseError> {
    let line = head
        .get(span.skip..span.request_line_end)
        .ok_or(ParseError::BadRequestLine)?;
    let (method, target, version) = parse_request_line(line)?;
    let fields_start = span.request_line_end.saturating_add(2);
    let fields = head.get(fields_start..).ok_or(ParseError::BadHeader)?;
    let headers = parse_fields(&head, fields, span.fields, limits.max_headers)?;
    let target = head.slice_ref(target);
    finish(method, target, version, headers, limits)
}

/// Splits and checks the request line.
fn parse_request_line(line: &[u8]) -> Result<(Method, &[u8], Version), ParseError> {
    if line == H2_PREFACE_LINE {
        return Err(ParseError::Http2Preface);
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadRequestLine);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(ParseError::BadRequestLine);
    }
    let version = parse_version(version)?;
    let method = Method::from_token(method).ok_or(ParseError::UnknownMethod)?;
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(ParseError::BadTarget);
    }
    Ok((method, target, version))
}

fn parse_version(v: &[u8]) -> Result<Version, ParseError> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(ParseError::UnsupportedVersion)
        }
        _ => Err(ParseError::BadRequestLine),
    }
}

/// Room left in a parsed head's field list for the fields a proxy adds
/// (sigma's `X-Request-Id`, a trusted proxy's `Host`), so that adding them
/// does not move the list.
const SPARE_FIELDS: usize = 2;

/// Parses field lines with httparse, slicing names and values out of `head`.
fn parse_fields(
    head: &Bytes,
    fields: &[u8],
    count: usize,
    max: usize,
) -> Result<Vec<Header>, ParseError> {
    if count > max {
        return Err(ParseError::TooManyHeaders);
    }
    let mut stack = [httparse::EMPTY_HEADER; 32];
    let mut heap;
    let slots: &mut [httparse::Header<'_>] = if count <= stack.len() {
        &mut stack
    } else {
        heap = vec![httparse::EMPTY_HEADER; count];
        &mut heap
    };
    match httparse::parse_headers(fields, slots) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            let mut headers = Vec::with_capacity(parsed.len().saturating_add(SPARE_FIELDS));
            headers.extend(parsed.iter().map(|h| Header {
                name: head.slice_ref(h.name.as_bytes()),
                value: head.slice_ref(h.value),
            }));
            Ok(headers)
        }
        Ok(httparse::Status::Partial) => Err(ParseError::BadHeader),
        Err(httparse::Error::TooManyHeaders) => Err(ParseError::TooManyHeaders),
        Err(_) => Err(ParseError::BadHeader),
    }
}

/// The semantic checks on a syntactically valid head.
fn finish(
    method: Method,
    target: Bytes,
    version: Version,
    headers: Vec<Header>,
    limits: &Limits,
) -> Result<ParsedHead, ParseError> {
    let mut host: Option<&Bytes> = None;
    let mut hosts = 0usize;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&Bytes> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect: Option<&Bytes> = None;

    for h in &headers {
        let name = &h.name[..];
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(&h.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(ParseError::BadContentLength);
            }
            content_length = Some(parse_content_length(&h.value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(ParseError::BadTransferEncoding);
            }
            transfer_encoding = Some(&h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in list_items(&h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if expect.is_some() {
                return Err(ParseError::BadExpect);
            }
            expect = Some(&h.value);
        }
    }

    // Host: exactly once on HTTP/1.1, at most once on HTTP/1.0.
    match (version, hosts) {
        (Version::Http11, 1) | (Version::Http10, 0 | 1) => {}
        _ => return Err(ParseError::BadHost),
    }
    if let Some(h) = host {
        if !is_valid_host(h) {
            return Err(ParseError::BadHost);
        }
    }

    let target = reduce_target(method, target, host)?;

    let body = match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => return Err(ParseError::ConflictingFraming),
        (None, Some(te)) => {
            if version == Version::Http10 {
                return Err(ParseError::BadTransferEncoding);
            }
            parse_transfer_encoding(te)?;
            BodyKind::Chunked
        }
        (Some(0), None) | (None, None) => BodyKind::Empty,
        (Some(n), None) => {
            if n > limits.max_body {
                return Err(ParseError::BodyTooLarge);
            }
            BodyKind::Length(n)
        }
    };

    let expect_continue = match expect {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"100-continue") => body != BodyKind::Empty,
        Some(_) => return Err(ParseError::BadExpect),
    };

    let keep_alive = match version {
        Version::Http11 => !conn_close,
        Version::Http10 => conn_keep_alive && !conn_close,
    };

    let websocket = ws::parse_upgrade(method, version, &headers)?.map(Box::new);
    if websocket.is_some() && body != BodyKind::Empty {
        return Err(ParseError::BadWebSocketHandshake);
    }

    Ok(ParsedHead {
        head: RequestHead {
            method,
            target,
            version,
            headers,
            keep_alive,
            websocket,
        },
        body,
        expect_continue,
    })
}

/// Exactly one coding, `chunked`. A list is refused (400), a lone other
/// coding is not implemented (501).
fn parse_transfer_encoding(v: &[u8]) -> Result<(), ParseError> {
    let mut items = v.split(|&b| b == b',').map(trim_ows);
    let first = items.next().unwrap_or_default();
    if items.next().is_some() || first.is_empty() {
        return Err(ParseError::BadTransferEncoding);
    }
    if first.eq_ignore_ascii_case(b"chunked") {
        Ok(())
    } else if first.iter().all(|&b| is_tchar(b)) {
        Err(ParseError::UnsupportedTransferEncoding)
    } else {
        Err(ParseError::BadTransferEncoding)
    }
}

/// The non-empty items of a comma-separated list, trimmed.
pub fn list_items(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|s| !s.is_empty())
}

/// Trims optional whitespace (SP, HTAB) on both ends.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `Host = uri-host [ ":" port ]`, loosely: the characters of an authority
/// without userinfo, path, query or fragment.
fn is_valid_host(h: &[u8]) -> bool {
    !h.is_empty() && h.iter().all(|&b| in_class(&HOST_CHAR, b))
}

/// Checks the target form against the method and reduces an absolute-form
/// target to origin-form (RFC 9112 §3.2).
fn reduce_target(method: Method, target: Bytes, host: Option<&Bytes>) -> Result<Bytes, ParseError> {
    match target.first() {
        Some(b'/') => Ok(target),
        Some(b'*') if target.len() == 1 => {
            if method == Method::Options {
                Ok(target)
            } else {
                Err(ParseError::BadTarget)
            }
        }
        _ => {
            // absolute-form: scheme "://" authority [path-abempty] [ "?" query ]
            let rest = strip_scheme(&target).ok_or(ParseError::BadTarget)?;
            let auth_end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let (authority, path) = rest.split_at(auth_end);
            if authority.is_empty() || authority.contains(&b'@') || !is_valid_host(authority) {
                return Err(ParseError::BadTarget);
            }
            // The authority must agree with Host (RFC 9112 §3.2.2).
            match host {
                Some(h) if h.eq_ignore_ascii_case(authority) => {}
                _ => return Err(ParseError::BadHost),
            }
            if path.is_empty() {
                Ok(Bytes::from_static(b"/"))
            } else if path.first() == Some(&b'?') {
                let mut t = Vec::with_capacity(path.len() + 1);
                t.push(b'/');
                t.extend_from_slice(path);
                Ok(Bytes::from(t))
            } else {
                Ok(target.slice_ref(path))
            }
        }
    }
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if t.len() >= scheme.len() {
            let (s, rest) = t.split_at(scheme.len());
            if s.eq_ignore_ascii_case(scheme) {
                return Some(rest);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::scan::{ScanLimits, Scanner};

    fn parse_str(s: &str) -> Result<ParsedHead, ParseError> {
        let limits = Limits::default();
        let scan = ScanLimits {
            max_request_line: Some(limits.max_request_line),
            max_field_bytes: limits.max_header_bytes,
            max_fields: limits.max_headers,
            too_large: ParseError::HeadersTooLarge,
        };
        let bytes = Bytes::copy_from_slice(s.as_bytes());
        let span = Scanner::new().scan(&bytes, &scan)?.expect("complete");
        parse(bytes.slice(..span.len), &span, &limits)
    }

    #[test]
    fn simple_get() {
        let p = parse_str("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n").unwrap();
        assert_eq!(p.head.method, Method::Get);
        assert_eq!(&p.head.target[..], b"/a?b=1");
        assert_eq!(p.head.path(), b"/a");
        assert_eq!(p.head.headers.len(), 3);
        assert_eq!(&p.head.headers[1].name[..], b"X-A");
        assert_eq!(&p.head.headers[2].value[..], b"2");
        assert!(p.head.keep_alive);
        assert_eq!(p.body, BodyKind::Empty);
    }

    #[test]
    fn absolute_form_reduced() {
        let p = parse_str("GET http://x:80/p?q HTTP/1.1\r\nHost: x:80\r\n\r\n").unwrap();
        assert_eq!(&p.head.target[..], b"/p?q");
        let p = parse_str("GET http://x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(&p.head.target[..], b"/");
        let p = parse_str("GET http://x?y HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(&p.head.target[..], b"/?y");
        assert_eq!(
            parse_str("GET http://y/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err(),
            ParseError::BadHost
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!parse_str("GET / HTTP/1.0\r\n\r\n").unwrap().head.keep_alive);
        assert!(
            parse_str("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .head
                .keep_alive
        );
        assert!(
            !parse_str("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap()
                .head
                .keep_alive
        );
    }

    #[test]
    fn framing() {
        let p = parse_str("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(p.body, BodyKind::Length(5));
        let p =
            parse_str("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(p.body, BodyKind::Chunked);
        assert_eq!(
            parse_str("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err(),
            ParseError::UnsupportedTransferEncoding
        );
    }
}
