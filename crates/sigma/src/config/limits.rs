//! `[http]` and `[websocket]`: H's limits (`sigma_http::Limits`), the
//! codec stage of T → H → A → router → destination (DESIGN §3).

use std::time::Duration;

use serde::Deserialize;
use sigma_http::{Limits, WsLimits};

use super::de::{duration, positive};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct HttpTable {
    #[serde(deserialize_with = "positive")]
    pub(super) max_request_line: usize,
    #[serde(deserialize_with = "positive")]
    pub(super) max_header_bytes: usize,
    #[serde(deserialize_with = "positive")]
    pub(super) max_headers: usize,
    #[serde(deserialize_with = "duration")]
    pub(super) head_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub(super) keepalive_timeout: Duration,
    pub(super) max_body: u64,
    #[serde(deserialize_with = "positive")]
    pub(super) body_min_rate: u64,
    #[serde(deserialize_with = "duration")]
    pub(super) body_rate_grace: Duration,
    #[serde(deserialize_with = "duration")]
    pub(super) write_timeout: Duration,
    #[serde(deserialize_with = "positive")]
    pub(super) max_pipelined: usize,
    #[serde(deserialize_with = "positive")]
    pub(super) max_requests_per_connection: u64,
    pub(super) max_chunk_extension: usize,
    pub(super) max_trailer_bytes: usize,
}

impl Default for HttpTable {
    fn default() -> Self {
        let d = Limits::default();
        Self {
            max_request_line: d.max_request_line,
            max_header_bytes: d.max_header_bytes,
            max_headers: d.max_headers,
            head_timeout: d.head_timeout,
            keepalive_timeout: d.keepalive_timeout,
            max_body: d.max_body,
            body_min_rate: d.body_min_rate,
            body_rate_grace: d.body_rate_grace,
            write_timeout: d.write_timeout,
            max_pipelined: d.max_pipelined,
            max_requests_per_connection: d.max_requests_per_connection,
            max_chunk_extension: d.max_chunk_extension,
            max_trailer_bytes: d.max_trailer_bytes,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct WebsocketTable {
    #[serde(deserialize_with = "positive")]
    pub(super) max_frame: usize,
    #[serde(deserialize_with = "positive")]
    pub(super) max_message: usize,
    #[serde(deserialize_with = "duration")]
    pub(super) ping_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub(super) idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub(super) close_timeout: Duration,
    #[serde(deserialize_with = "positive")]
    pub(super) max_outbound: usize,
}

impl Default for WebsocketTable {
    fn default() -> Self {
        let d = WsLimits::default();
        Self {
            max_frame: d.max_frame,
            max_message: d.max_message,
            ping_interval: d.ping_interval,
            idle_timeout: d.idle_timeout,
            close_timeout: d.close_timeout,
            max_outbound: d.max_outbound,
        }
    }
}
