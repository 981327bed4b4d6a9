//! The access log (DESIGN §8): one line per request, and one per
//! WebSocket session when it ends, under the `tracing` target
//! `sigma::access` (`[log] access = false` turns it off).
//!
//! Fields (the same names in the human and the JSON format): `ts` (when
//! the response ended, RFC 3339 UTC), `client` (the address resolved
//! through `[auth] trusted_proxies`), `method`, `path` (without the
//! query), `status` (`101` for a WebSocket session; `0` when the
//! connection ended before any response), `bytes_in` and `bytes_out`
//! (body bytes, or message payload bytes of a WebSocket session),
//! `duration_ms`, `user`, `route` (the route's path), `dest` (the
//! destination: `&db`, `http://…`, `&auth` for `A`'s own endpoints,
//! `&sigma` for `/healthz` and `/metrics`, `none` when no route took the
//! request) and `req` (the request id, also sent upstream as
//! `X-Request-Id`). `user` and `route` are left out when there is none
//! (tracing records no null; read a missing one as null).
//!
//! [`Entry`] is filled by dispatch as the request goes; its one
//! "request finished" point ([`crate::dispatch`]) calls [`write`].

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use sigma_http::Method;

use crate::listener::RouteRef;
use sigma_core::Principal;

/// The `tracing` target of the access log.
pub const TARGET: &str = "sigma::access";

/// `dest` of `A`'s own endpoints (`/login`, `/auth/…`).
pub const DEST_AUTH: &str = "&auth";
/// `dest` of sigma's built-in endpoints (`/healthz`, `/metrics`).
pub const DEST_BUILTIN: &str = "&sigma";
/// `dest` of a request no route took (or refused before routing).
pub const DEST_NONE: &str = "none";

/// What the access log line of one request (or WebSocket session) says.
#[derive(Debug)]
pub struct Entry {
    /// When its head arrived.
    pub started: Instant,
    /// The client's address (after trusted proxies).
    pub client: IpAddr,
    /// The method (`None`: the head did not parse).
    pub method: Option<Method>,
    /// The path, without the query (filled only when the access log is
    /// on).
    pub path: String,
    /// The final status.
    pub status: u16,
    /// Request body (or WebSocket message) bytes received.
    pub bytes_in: u64,
    /// Response body (or WebSocket message) bytes sent.
    pub bytes_out: u64,
    /// Who made it.
    pub user: Principal,
    /// The route that took it.
    pub route: Option<RouteRef>,
    /// The route it asked for when it was refused before reaching it
    /// (counted for that route in `/metrics`; `route` stays empty).
    pub matched: Option<RouteRef>,
    /// Where it went when no route did ([`DEST_AUTH`], …).
    pub dest: &'static str,
    /// The request id (filled only when the access log is on).
    pub req: String,
}

impl Entry {
    /// The entry of a request whose head arrived at `started`.
    pub fn new(started: Instant, client: IpAddr) -> Self {
        Self {
            started,
            client,
            method: None,
            path: String::new(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            user: None,
            route: None,
            matched: None,
            dest: DEST_NONE,
            req: String::new(),
        }
    }
}

/// Writes `e`'s access log line; `took` is from its head to now.
pub fn write(e: &Entry, took: std::time::Duration) {
    let route = e.route.as_ref().and_then(RouteRef::route);
    // The field values are computed only when the line is enabled
    // (`SIGMA_LOG=warn` costs no formatting).
    tracing::info!(
        target: TARGET,
        ts = %humantime::format_rfc3339_millis(SystemTime::now()),
        client = %e.client,
        method = e.method.map_or("-", Method::as_str),
        path = e.path.as_str(),
        status = e.status,
        bytes_in = e.bytes_in,
        bytes_out = e.bytes_out,
        duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        user = e.user.as_ref().map(|u| u.user.as_str()),
        route = route.map(|r| r.path.as_str()),
        dest = route.map_or(e.dest, |r| r.dest.name()),
        req = e.req.as_str(),
    );
}

/// A fresh request id: 20 hex digits, a random per-process prefix and a
/// counter (unique within the process, unlikely to repeat across
/// restarts).
pub fn new_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        // No randomness (a very early boot): ids stay unique per process.
        let _ = getrandom::fill(&mut b);
        u32::from_le_bytes(b)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // 8 hex digits of the prefix, then 12 of the counter: written by
    // hand, `format!` showed in the per-request profile.
    let digits = (u128::from(prefix) << 48) | u128::from(n & 0xffff_ffff_ffff);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [b'0'; 20];
    for (k, d) in id.iter_mut().rev().enumerate() {
        let nibble = (digits >> (4 * k)) & 0xf;
        *d = HEX.get(nibble as usize).copied().unwrap_or(b'0');
    }
    // ASCII hex digits: always UTF-8.
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_valid() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        // The prefix, then the counter, in fixed-width lowercase hex.
        assert_eq!(a[..8], b[..8]);
        let (na, nb) = (
            u64::from_str_radix(&a[8..], 16).unwrap(),
            u64::from_str_radix(&b[8..], 16).unwrap(),
        );
        assert!(nb > na, "the counter goes up");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(a.len(), 20);
        assert!(sigma_auth::forwarded::valid_request_id(&a));
    }
}
