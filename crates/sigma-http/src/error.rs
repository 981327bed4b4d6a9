//! Errors of `H`: what the peer did wrong ([`ParseError`]) and what the
//! caller did wrong ([`SendError`]).
//!
//! Each [`ParseError`] maps to exactly one status code ([`ParseError::status`])
//! and one metrics label ([`ParseError::reason`]). The `Display` text is for
//! logs and error bodies and is not a stable interface.

use std::fmt;

/// A request the codec refuses. The connection closes after the error
/// response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The request line exceeds `max_request_line` (414).
    RequestLineTooLong,
    /// The header block exceeds `max_header_bytes` (431).
    HeadersTooLarge,
    /// More than `max_headers` header fields (431).
    TooManyHeaders,
    /// A malformed request line (400).
    BadRequestLine,
    /// A method token that is well-formed but not supported (501).
    UnknownMethod,
    /// A well-formed version other than 1.0 and 1.1 (505).
    UnsupportedVersion,
    /// The HTTP/2 connection preface (505).
    Http2Preface,
    /// A target that is not valid for the method, or malformed (400).
    BadTarget,
    /// A malformed header line (400).
    BadHeader,
    /// A header line starting with whitespace (obs-fold) (400).
    ObsFold,
    /// A CR not followed by LF, or a LF not preceded by CR (400).
    BareCrOrLf,
    /// A NUL byte in the head (400).
    Nul,
    /// Missing or repeated `Host` on HTTP/1.1, or one that disagrees with an
    /// absolute-form target (400).
    BadHost,
    /// `Content-Length` together with `Transfer-Encoding` (400).
    ConflictingFraming,
    /// Malformed, repeated or differing `Content-Length` (400).
    BadContentLength,
    /// A `Transfer-Encoding` other than one `chunked`, or on HTTP/1.0 (400).
    BadTransferEncoding,
    /// A single transfer coding other than `chunked` (501).
    UnsupportedTransferEncoding,
    /// A malformed chunk-size line (400).
    InvalidChunkSize,
    /// Chunk-size overflow or too many hex digits (400).
    ChunkSizeOverflow,
    /// Chunk extension longer than `max_chunk_extension` (400).
    ChunkExtensionTooLong,
    /// Missing CRLF after chunk data (400).
    BadChunkTerminator,
    /// Malformed trailer section (400).
    BadTrailers,
    /// Trailer section larger than `max_trailer_bytes` (431).
    TrailersTooLarge,
    /// Body larger than `max_body` (413).
    BodyTooLarge,
    /// Unsupported `Expect` (417).
    BadExpect,
    /// A malformed WebSocket upgrade (400).
    BadWebSocketHandshake,
    /// A WebSocket upgrade with a version other than 13 (426).
    UnsupportedWebSocketVersion,
    /// The head did not complete within `head_timeout` (408).
    HeadTimeout,
    /// The body fell under `body_min_rate` after the grace period (408).
    BodyTooSlow,
    /// Buffering this request would pass `server.memory_budget` (503).
    MemoryBudget,
}

impl ParseError {
    /// The status code of the error response.
    pub fn status(self) -> u16 {
        use ParseError::*;
        match self {
            RequestLineTooLong => 414,
            HeadersTooLarge | TooManyHeaders | TrailersTooLarge => 431,
            UnknownMethod | UnsupportedTransferEncoding => 501,
            UnsupportedVersion | Http2Preface => 505,
            BodyTooLarge => 413,
            BadExpect => 417,
            UnsupportedWebSocketVersion => 426,
            HeadTimeout | BodyTooSlow => 408,
            MemoryBudget => 503,
            BadRequestLine
            | BadTarget
            | BadHeader
            | ObsFold
            | BareCrOrLf
            | Nul
            | BadHost
            | ConflictingFraming
            | BadContentLength
            | BadTransferEncoding
            | InvalidChunkSize
            | ChunkSizeOverflow
            | ChunkExtensionTooLong
            | BadChunkTerminator
            | BadTrailers
            | BadWebSocketHandshake => 400,
        }
    }

    /// A stable, low-cardinality label for metrics and logs.
    pub fn reason(self) -> &'static str {
        use ParseError::*;
        match self {
            RequestLineTooLong => "request_line_too_long",
            HeadersTooLarge => "headers_too_large",
            TooManyHeaders => "too_many_headers",
            BadRequestLine => "bad_request_line",
            UnknownMethod => "unknown_method",
            UnsupportedVersion => "unsupported_version",
            Http2Preface => "http2_preface",
            BadTarget => "bad_target",
            BadHeader => "bad_header",
            ObsFold => "obs_fold",
            BareCrOrLf => "bare_cr_or_lf",
            Nul => "nul_byte",
            BadHost => "bad_host",
            ConflictingFraming => "conflicting_framing",
            BadContentLength => "bad_content_length",
            BadTransferEncoding => "bad_transfer_encoding",
            UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            InvalidChunkSize => "invalid_chunk_size",
            ChunkSizeOverflow => "chunk_size_overflow",
            ChunkExtensionTooLong => "chunk_extension_too_long",
            BadChunkTerminator => "bad_chunk_terminator",
            BadTrailers => "bad_trailers",
            TrailersTooLarge => "trailers_too_large",
            BodyTooLarge => "body_too_large",
            BadExpect => "bad_expect",
            BadWebSocketHandshake => "bad_websocket_handshake",
            UnsupportedWebSocketVersion => "unsupported_websocket_version",
            HeadTimeout => "head_timeout",
            BodyTooSlow => "body_too_slow",
            MemoryBudget => "memory_budget",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ParseError::*;
        let s = match self {
            RequestLineTooLong => "request line too long",
            HeadersTooLarge => "header block too large",
            TooManyHeaders => "too many header fields",
            BadRequestLine => "malformed request line",
            UnknownMethod => "method not implemented",
            UnsupportedVersion => "HTTP version not supported",
            Http2Preface => "HTTP/2 is not supported on this port",
            BadTarget => "invalid request target",
            BadHeader => "malformed header field",
            ObsFold => "obsolete line folding is not allowed",
            BareCrOrLf => "bare CR or LF in the request head",
            Nul => "NUL byte in the request head",
            BadHost => "missing, repeated or mismatched Host",
            ConflictingFraming => "Content-Length together with Transfer-Encoding",
            BadContentLength => "invalid Content-Length",
            BadTransferEncoding => "invalid Transfer-Encoding",
            UnsupportedTransferEncoding => "transfer coding not implemented",
            InvalidChunkSize => "invalid chunk size",
            ChunkSizeOverflow => "chunk size too large",
            ChunkExtensionTooLong => "chunk extension too long",
            BadChunkTerminator => "missing CRLF after chunk data",
            BadTrailers => "malformed trailer section",
            TrailersTooLarge => "trailer section too large",
            BodyTooLarge => "request body too large",
            BadExpect => "unsupported Expect",
            BadWebSocketHandshake => "invalid WebSocket handshake",
            UnsupportedWebSocketVersion => "unsupported WebSocket version",
            HeadTimeout => "request head not received in time",
            BodyTooSlow => "request body too slow",
            MemoryBudget => "server memory budget exhausted",
        };
        f.write_str(s)
    }
}

impl std::error::Error for ParseError {}

/// The caller (a destination, through the shell) asked for something `H`
/// cannot send. These are server bugs, never the client's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// A response with no request waiting for it.
    NoRequestPending,
    /// A header name that is not a token, or a value with CR, LF or NUL.
    InvalidHeader,
    /// A status outside 100..=999, or 101 outside [`crate::Reply::Accept`].
    InvalidStatus,
    /// `Accept` for a request that was not a WebSocket upgrade, or a
    /// subprotocol the client did not offer.
    NotAnUpgrade,
    /// A WebSocket reply on a connection that is not (or no longer) a WebSocket.
    NotWebSocket,
    /// An invalid close code or an over-long close reason.
    InvalidClose,
    /// The connection is closing or closed.
    Closed,
    /// A response while a streamed body is still being sent, or a body
    /// piece with no streamed response in progress.
    StreamState,
    /// Streamed body pieces that exceed the head's `content_length`, or an
    /// end before it was reached (the connection is aborted).
    BodyLength,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::NoRequestPending => "no request is waiting for a response",
            Self::InvalidHeader => "invalid response header",
            Self::InvalidStatus => "invalid response status",
            Self::NotAnUpgrade => "not a WebSocket upgrade, or subprotocol not offered",
            Self::NotWebSocket => "not a WebSocket connection",
            Self::InvalidClose => "invalid close code or reason",
            Self::Closed => "connection closed",
            Self::StreamState => "response out of order with a streamed body",
            Self::BodyLength => "streamed body does not match its Content-Length",
        };
        f.write_str(s)
    }
}

impl std::error::Error for SendError {}
