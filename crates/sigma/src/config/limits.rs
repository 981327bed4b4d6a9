//! `[http]` and `[websocket]`: H's limits (`sigma_http::Limits`), the
//! codec stage of T → H → A → router → destination (DESIGN §3).

use std::time::Duration;

use serde::Deserialize;
use sigma_http::{Limits, WsLimits};

use super::de::{duration, positive};

/// Declares a table whose keys are the fields of one of the codec's limit
/// structs, each written once: the table (every key optional, defaults from
/// the codec), and its conversion back, a struct literal, so a limit added
/// to the codec without a key here does not compile. `set apart` names the
/// fields another table sets.
macro_rules! limits_table {
    (
        $(#[$doc:meta])*
        $table:ident => $limits:ident {
            $( $(#[$attr:meta])* $field:ident: $ty:ty, )*
        }
        set apart: $( $extra:ident: $extra_ty:ty ),*
    ) => {
        $(#[$doc])*
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub(super) struct $table {
            $( $(#[$attr])* pub(super) $field: $ty, )*
        }

        impl Default for $table {
            fn default() -> Self {
                let d = $limits::default();
                Self { $( $field: d.$field, )* }
            }
        }

        impl $table {
            /// The table as the codec's limits, with the fields set apart.
            pub(super) fn into_limits(self, $( $extra: $extra_ty ),*) -> $limits {
                $limits { $( $field: self.$field, )* $( $extra ),* }
            }
        }
    };
}

limits_table! {
    /// `[http]` as written: [`Limits`] less `ws` (that is `[websocket]`).
    HttpTable => Limits {
        #[serde(deserialize_with = "positive")]
        max_request_line: usize,
        #[serde(deserialize_with = "positive")]
        max_header_bytes: usize,
        #[serde(deserialize_with = "positive")]
        max_headers: usize,
        #[serde(deserialize_with = "duration")]
        head_timeout: Duration,
        #[serde(deserialize_with = "duration")]
        keepalive_timeout: Duration,
        max_body: u64,
        #[serde(deserialize_with = "positive")]
        body_min_rate: u64,
        #[serde(deserialize_with = "duration")]
        body_rate_grace: Duration,
        #[serde(deserialize_with = "duration")]
        write_timeout: Duration,
        #[serde(deserialize_with = "positive")]
        max_pipelined: usize,
        #[serde(deserialize_with = "positive")]
        max_requests_per_connection: u64,
        max_chunk_extension: usize,
        max_trailer_bytes: usize,
    }
    set apart: ws: WsLimits
}

limits_table! {
    /// `[websocket]` as written: [`WsLimits`] less `write_timeout` (that is
    /// `http.write_timeout`).
    WebsocketTable => WsLimits {
        #[serde(deserialize_with = "positive")]
        max_frame: usize,
        #[serde(deserialize_with = "positive")]
        max_message: usize,
        #[serde(deserialize_with = "duration")]
        ping_interval: Duration,
        #[serde(deserialize_with = "duration")]
        idle_timeout: Duration,
        #[serde(deserialize_with = "duration")]
        close_timeout: Duration,
        #[serde(deserialize_with = "positive")]
        max_outbound: usize,
        /// permessage-deflate (RFC 7692); `false`: never negotiated.
        compression: bool,
    }
    set apart: write_timeout: Duration
}
