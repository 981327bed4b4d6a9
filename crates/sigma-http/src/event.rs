//! What `H` hands right (events) and takes from the right (replies).
//!
//! This is the data format the seed left as "TODO" (DESIGN §3). Everything
//! in an [`Event`] is already validated and bounded: names are tokens, the
//! target is origin-form (or `*` for OPTIONS), framing is unambiguous, and a
//! text message is valid UTF-8. Replies are validated again on the way out
//! (no CR/LF injection from a destination).

use bytes::Bytes;

use crate::error::ParseError;

/// A request method `H` accepts; any other token is answered with 501.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// `OPTIONS`
    Options,
}

impl Method {
    /// Parses an exact (case-sensitive) method token.
    pub fn from_token(token: &[u8]) -> Option<Self> {
        Some(match token {
            b"GET" => Self::Get,
            b"HEAD" => Self::Head,
            b"POST" => Self::Post,
            b"PUT" => Self::Put,
            b"DELETE" => Self::Delete,
            b"PATCH" => Self::Patch,
            b"OPTIONS" => Self::Options,
            _ => return None,
        })
    }

    /// The method token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Options => "OPTIONS",
        }
    }
}

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`
    Http10,
    /// `HTTP/1.1`
    Http11,
}

impl Version {
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
        }
    }
}

/// One header field, with the name's original case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name (a token; original case).
    pub name: Bytes,
    /// Field value, without surrounding whitespace (may hold obs-text).
    pub value: Bytes,
}

impl Header {
    /// Builds a header from static or owned parts.
    pub fn new(name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    /// True when the name equals `name`, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The name as text (names are tokens, so always ASCII).
    pub fn name_str(&self) -> &str {
        std::str::from_utf8(&self.name).unwrap_or("")
    }
}

/// Finds the first header named `name` (ASCII case-insensitive).
pub fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a Header> {
    headers.iter().find(|h| h.is(name))
}

/// A validated WebSocket opening handshake found on a request (RFC 6455 §4.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsHandshake {
    /// The `Sec-WebSocket-Key` (base64 of 16 bytes).
    pub key: Bytes,
    /// Offered subprotocols, in the client's order.
    pub protocols: Vec<String>,
    /// The `Origin` header, handed to `A` for the cross-site check.
    pub origin: Option<Bytes>,
    /// The first acceptable permessage-deflate offer (RFC 7692), as the
    /// parameters sigma agrees to; used only when `[websocket] compression`
    /// is on.
    pub deflate: Option<DeflateParams>,
}

/// The permessage-deflate parameters agreed for one WebSocket. Both
/// directions are always without context takeover (`ws/extension.rs`
/// says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The window of our compressor (8–15); at 8 we never compress.
    pub server_max_window_bits: u8,
    /// Whether the client's offer named `server_max_window_bits`, so the
    /// response repeats it.
    pub server_window_requested: bool,
    /// The largest window the client may compress with (8–15); our
    /// decompressor's window is at least this.
    pub client_max_window_bits: u8,
}

/// A request head: method, target, version and headers in order, with
/// original case and duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The target: origin-form (`/path?query`), or `*` for OPTIONS. An
    /// absolute-form target is reduced to its origin-form path.
    pub target: Bytes,
    /// The version.
    pub version: Version,
    /// All header fields, in order.
    pub headers: Vec<Header>,
    /// Whether the connection stays open after this exchange.
    pub keep_alive: bool,
    /// Present when this is a valid WebSocket upgrade request (boxed: a
    /// head is moved several times per request, and most heads are not
    /// upgrades).
    pub websocket: Option<Box<WsHandshake>>,
}

impl RequestHead {
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &[u8] {
        let t = &self.target[..];
        match t.iter().position(|&b| b == b'?') {
            Some(i) => t.get(..i).unwrap_or(t),
            None => t,
        }
    }

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&Header> {
        find_header(&self.headers, name)
    }

    /// The declared body length: the `Content-Length` field, read by the
    /// same rule that framed the request (`None` without one, or for a
    /// value that rule refuses, which a parsed head never has).
    pub fn content_length(&self) -> Option<u64> {
        let h = self.header("content-length")?;
        parse_content_length(&h.value).ok()
    }
}

/// Valid UTF-8 in a shared buffer: a text message that many sockets can
/// send without copying it (a `&broadcast` delivery is serialised once).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// A static string.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Valid by construction; the check cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The UTF-8 bytes as a shared (reference-counted) buffer.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = std::str::Utf8Error;
    fn try_from(b: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&b)?;
        Ok(Self(b))
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// A WebSocket data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message (valid UTF-8).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl WsMessage {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            WsMessage::Text(t) => t.len(),
            WsMessage::Binary(b) => b.len(),
        }
    }

    /// The payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `H` reports about an open WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A complete (reassembled, validated) message.
    Message(WsMessage),
    /// The client pinged us (the pong is already queued).
    Ping(Bytes),
    /// The client started or answered the close handshake.
    Close {
        /// The close code, if the client sent one.
        code: Option<u16>,
        /// The close reason (valid UTF-8, ≤ 123 bytes).
        reason: String,
    },
}

/// Why a connection is going away without a clean end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortReason {
    /// A stable, low-cardinality label (metrics).
    pub reason: &'static str,
    /// The status already sent to the client, if any.
    pub status: Option<u16>,
}

/// Right-bound events of one connection, in order (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request head; `Body` events and one `EndOfMessage` follow.
    Request(RequestHead),
    /// A piece of the request body.
    Body(Bytes),
    /// The request body is complete; trailers of a chunked body, if any.
    EndOfMessage {
        /// Trailer fields (empty unless the body was chunked with trailers).
        trailers: Vec<Header>,
    },
    /// The WebSocket upgrade was accepted; `Ws` events follow.
    Upgraded {
        /// The subprotocol chosen in the accept reply.
        protocol: Option<String>,
    },
    /// A WebSocket event.
    Ws(WsEvent),
    /// The peer finished cleanly; no more events.
    End,
    /// The connection failed; no more events. Any error response owed to the
    /// client is already queued.
    Abort(AbortReason),
}

/// A response from the right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code (100–999 outside 101; 101 only via [`Reply::Accept`]).
    pub status: u16,
    /// Header fields. `Content-Length`, `Transfer-Encoding`, `Connection`
    /// and `Date` are framing and belong to `H`: they are replaced. A
    /// `Connection: close` here asks `H` to close the connection after this
    /// response (it then writes its own `Connection: close`).
    pub headers: Vec<Header>,
    /// The complete body (not sent for HEAD, 1xx, 204, 304).
    pub body: Bytes,
}

impl Response {
    /// A response with a status, headers and body.
    pub fn new(status: u16, headers: Vec<Header>, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers,
            body: body.into(),
        }
    }
}

/// The head of a response whose body follows in pieces
/// ([`Reply::Chunk`], then [`Reply::EndOfBody`]): a proxied upstream's
/// streamed body (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code (200–999 outside 101).
    pub status: u16,
    /// Header fields; framing headers are replaced as for [`Response`].
    pub headers: Vec<Header>,
    /// The body's length when known: sent as `Content-Length`, and the
    /// chunks must add up to it. `None`: `Transfer-Encoding: chunked` (an
    /// HTTP/1.0 client gets a close-delimited body instead).
    pub content_length: Option<u64>,
}

/// Left-bound replies (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The response to the oldest unanswered request.
    Response(Response),
    /// The head of a streamed response to the oldest unanswered request;
    /// its body follows as [`Reply::Chunk`]s and one [`Reply::EndOfBody`].
    /// Until then no other response is accepted (they answer later
    /// requests, so they must wait).
    Head(ResponseHead),
    /// A piece of the streamed body (dropped for HEAD, 204 and 304).
    Chunk(Bytes),
    /// The streamed body is complete. With a `content_length` that the
    /// chunks did not reach, the connection is aborted (the client must
    /// not take a truncated body for a whole one).
    EndOfBody,
    /// Accept the WebSocket upgrade of the oldest unanswered request (101).
    Accept {
        /// The chosen subprotocol (must be one the client offered).
        protocol: Option<String>,
        /// Extra headers for the 101 response.
        headers: Vec<Header>,
    },
    /// A WebSocket message to the client.
    Ws(WsMessage),
    /// Start (or answer) the WebSocket close handshake.
    WsClose {
        /// Close code (must be valid to send).
        code: u16,
        /// Reason (≤ 123 bytes of UTF-8).
        reason: String,
    },
    /// ω: finish what is owed, then half-close.
    Close,
    /// Ω: drop everything and abort the connection.
    Abort,
}

/// What the shell must do with the socket once the output is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// ω: flush, `shutdown(SHUT_WR)`, read until EOF or the linger deadline.
    Graceful,
    /// Ω: `shutdown(SHUT_RDWR)` and close now, dropping pending output.
    Abort,
}

/// `Content-Length = 1*DIGIT`, at most 19 digits, no sign, no list.
/// The one field rule: `h1::request` frames requests by it, and
/// [`RequestHead::content_length`] reads the parsed head by it.
pub(crate) fn parse_content_length(v: &[u8]) -> Result<u64, ParseError> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadContentLength);
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|a| a.checked_add(u64::from(d - b'0')))
            .ok_or(ParseError::BadContentLength)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&'static str, &'static str)]) -> RequestHead {
        RequestHead {
            method: Method::Post,
            target: Bytes::from_static(b"/"),
            version: Version::Http11,
            headers: headers
                .iter()
                .map(|&(n, v)| Header::new(n.as_bytes(), v.as_bytes()))
                .collect(),
            keep_alive: true,
            websocket: None,
        }
    }

    #[test]
    fn declared_content_length() {
        assert_eq!(head(&[]).content_length(), None);
        assert_eq!(head(&[("Content-Length", "0")]).content_length(), Some(0));
        assert_eq!(
            head(&[("X", "y"), ("content-length", "1234")]).content_length(),
            Some(1234)
        );
        for bad in ["", "+1", "1,1", " 1", "99999999999999999999"] {
            assert_eq!(head(&[("Content-Length", bad)]).content_length(), None);
        }
    }
}
