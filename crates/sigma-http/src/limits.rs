//! Every bound `H` enforces, with the defaults of DESIGN §3.
//!
//! One [`Limits`] value is shared by all connections of a listener. The
//! tokio shell (`sigma::conn`) builds it from the `[http]` and `[websocket]`
//! config tables; the codec only reads it. Each limit has a named default
//! constant and is enforced next to the code that parses the bytes it bounds.

use std::time::Duration;

/// Request line (method, target, version), bytes without CRLF. Breach: 414.
pub const DEFAULT_MAX_REQUEST_LINE: usize = 8 * 1024;
/// All header bytes of one head (after the request line). Breach: 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Header fields in one head. Breach: 431.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// From the first byte of a head to its end. Breach: 408.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive before the next request. Breach: close.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request body size. Breach: 413.
pub const DEFAULT_MAX_BODY: u64 = 8 * 1024 * 1024;
/// Minimum body rate in bytes per second once the grace period is over. Breach: 408.
pub const DEFAULT_BODY_MIN_RATE: u64 = 1024;
/// Grace period before the body minimum rate applies.
pub const DEFAULT_BODY_RATE_GRACE: Duration = Duration::from_secs(5);
/// Output pending with no write progress (slow read). Breach: abort.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests parsed ahead of their responses; past it `H` stops reading.
pub const DEFAULT_MAX_PIPELINED: usize = 16;
/// Requests on one connection; the last one is answered with `Connection: close`.
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: u64 = 10_000;
/// Chunk extension bytes on one chunk-size line. Breach: 400.
pub const DEFAULT_MAX_CHUNK_EXTENSION: usize = 1024;
/// Trailer section bytes. Breach: 431.
pub const DEFAULT_MAX_TRAILER_BYTES: usize = 16 * 1024;
/// WebSocket frame payload. Breach: close 1009.
pub const DEFAULT_WS_MAX_FRAME: usize = 1024 * 1024;
/// WebSocket reassembled message. Breach: close 1009.
pub const DEFAULT_WS_MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Server ping interval on a quiet WebSocket.
pub const DEFAULT_WS_PING_INTERVAL: Duration = Duration::from_secs(30);
/// WebSocket idle timeout (nothing received). Breach: close 1001.
pub const DEFAULT_WS_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Close handshake deadline. Breach: abort.
pub const DEFAULT_WS_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes queued toward one WebSocket client. Breach: close 1008.
pub const DEFAULT_WS_MAX_OUTBOUND: usize = 4 * 1024 * 1024;
/// Whether a client's permessage-deflate offer (RFC 7692) is accepted.
/// Compressed input counts against `max_message` by its inflated size;
/// off, no offer is ever accepted and RSV1 stays a protocol error.
/// Off by default (DESIGN §3): compressing costs CPU per socket and per
/// message, which a fan-out to thousands of sockets multiplies.
pub const DEFAULT_WS_COMPRESSION: bool = false;

/// The bounds of one HTTP/1.1 + WebSocket connection (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// See [`DEFAULT_MAX_REQUEST_LINE`].
    pub max_request_line: usize,
    /// See [`DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// See [`DEFAULT_MAX_HEADERS`].
    pub max_headers: usize,
    /// See [`DEFAULT_HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// See [`DEFAULT_KEEPALIVE_TIMEOUT`].
    pub keepalive_timeout: Duration,
    /// See [`DEFAULT_MAX_BODY`].
    pub max_body: u64,
    /// See [`DEFAULT_BODY_MIN_RATE`].
    pub body_min_rate: u64,
    /// See [`DEFAULT_BODY_RATE_GRACE`].
    pub body_rate_grace: Duration,
    /// See [`DEFAULT_WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// See [`DEFAULT_MAX_PIPELINED`].
    pub max_pipelined: usize,
    /// See [`DEFAULT_MAX_REQUESTS_PER_CONNECTION`].
    pub max_requests_per_connection: u64,
    /// See [`DEFAULT_MAX_CHUNK_EXTENSION`].
    pub max_chunk_extension: usize,
    /// See [`DEFAULT_MAX_TRAILER_BYTES`].
    pub max_trailer_bytes: usize,
    /// WebSocket limits.
    pub ws: WsLimits,
}

/// The WebSocket bounds of one connection (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsLimits {
    /// See [`DEFAULT_WS_MAX_FRAME`].
    pub max_frame: usize,
    /// See [`DEFAULT_WS_MAX_MESSAGE`].
    pub max_message: usize,
    /// See [`DEFAULT_WS_PING_INTERVAL`].
    pub ping_interval: Duration,
    /// See [`DEFAULT_WS_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`DEFAULT_WS_CLOSE_TIMEOUT`].
    pub close_timeout: Duration,
    /// See [`DEFAULT_WS_MAX_OUTBOUND`].
    pub max_outbound: usize,
    /// See [`DEFAULT_WRITE_TIMEOUT`]; copied from [`Limits::write_timeout`].
    pub write_timeout: Duration,
    /// See [`DEFAULT_WS_COMPRESSION`].
    pub compression: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line: DEFAULT_MAX_REQUEST_LINE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            body_min_rate: DEFAULT_BODY_MIN_RATE,
            body_rate_grace: DEFAULT_BODY_RATE_GRACE,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_pipelined: DEFAULT_MAX_PIPELINED,
            max_requests_per_connection: DEFAULT_MAX_REQUESTS_PER_CONNECTION,
            max_chunk_extension: DEFAULT_MAX_CHUNK_EXTENSION,
            max_trailer_bytes: DEFAULT_MAX_TRAILER_BYTES,
            ws: WsLimits::default(),
        }
    }
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_WS_MAX_FRAME,
            max_message: DEFAULT_WS_MAX_MESSAGE,
            ping_interval: DEFAULT_WS_PING_INTERVAL,
            idle_timeout: DEFAULT_WS_IDLE_TIMEOUT,
            close_timeout: DEFAULT_WS_CLOSE_TIMEOUT,
            max_outbound: DEFAULT_WS_MAX_OUTBOUND,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            compression: DEFAULT_WS_COMPRESSION,
        }
    }
}
