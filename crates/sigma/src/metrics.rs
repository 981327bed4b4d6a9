//! Counters and `GET /metrics` (Prometheus text format), `GET /healthz`.
//!
//! What T, H, A and the router count: connections (open, accepted,
//! refused), requests by status class, rejections by reason (every limit of
//! DESIGN §3 has its own label, listed in [`LIMIT_REASONS`] so it shows
//! even at zero), WebSocket messages and bytes each way, identity
//! mismatches (the reply rule), and a request latency histogram.
//!
//! The hot path only does relaxed atomic increments: no lock per request.
//! Rejections are counted in a small map that is touched only when a
//! connection breaks a rule. Logging of breaches is rate-limited so an
//! attack cannot flood the logs. Access to `/metrics` is limited to
//! `server.metrics_allow` (default loopback) by the caller.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The rejection label of every limit in DESIGN §3 and §2, and of A's
/// limits in §4.
pub const LIMIT_REASONS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "request_line_too_long",
    "headers_too_large",
    "too_many_headers",
    "head_timeout",
    "keepalive_timeout",
    "body_too_large",
    "body_too_slow",
    "write_timeout",
    "max_pipelined",
    "max_requests_per_connection",
    "ws_frame_too_big",
    "ws_message_too_big",
    "ws_idle_timeout",
    "ws_close_timeout",
    "ws_slow_consumer",
    "memory_budget",
    // A's limits (DESIGN §4): login throttles, the Argon2 queue, tokens
    // per session, sockets closed because their session ended.
    "login_throttled",
    "login_failures_user",
    "login_failures_global",
    "login_queue_full",
    "token_throttled",
    "ws_session_revoked",
    // S (DESIGN §2a): handshakes past their deadline, plain HTTP on a TLS
    // port.
    "tls_handshake_timeout",
    "tls_plain_http",
];

/// Upper bounds of the latency histogram buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000,
];

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections refused by the global or per-IP cap.
    pub refused: AtomicU64,
    /// Requests parsed.
    pub requests: AtomicU64,
    /// Responses by status class (1xx..5xx).
    responses: [AtomicU64; 5],
    /// WebSocket messages received from clients.
    pub ws_messages_in: AtomicU64,
    /// WebSocket messages sent to clients.
    pub ws_messages_out: AtomicU64,
    /// WebSocket payload bytes received.
    pub ws_bytes_in: AtomicU64,
    /// WebSocket payload bytes sent.
    pub ws_bytes_out: AtomicU64,
    /// Replies dropped by the reply rule.
    pub identity_mismatch: AtomicU64,
    /// TLS handshakes completed (`S`).
    pub tls_handshakes: AtomicU64,
    /// Of those, resumed sessions (ticket or session cache).
    pub tls_resumed: AtomicU64,
    /// ACME `tls-alpn-01` validation handshakes answered.
    pub tls_acme_validations: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    log: LogLimiter,
    /// Config reloads (SIGHUP) applied and refused.
    reloads: [AtomicU64; 2],
}

/// The log budget lives in `sigma-core` (destinations use it too).
pub use sigma_core::loglimit::LogLimiter;

impl Metrics {
    /// Counts one rejection by reason label.
    pub fn reject(&self, reason: &'static str) {
        let mut m = match self.rejections.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let n = m.entry(reason).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// The rejection counts by reason.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        match self.rejections.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counts a response by its status class.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).saturating_sub(1);
        if let Some(c) = self.responses.get(class) {
            inc(c);
        }
    }

    /// Records one request's latency (from its head to its response).
    pub fn latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            if let Some(c) = self.latency_buckets.get(i) {
                inc(c);
            }
        }
        inc(&self.latency_count);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts one config reload: applied (`ok`) or refused.
    pub fn config_reloaded(&self, ok: bool) {
        if let Some(c) = self.reloads.get(usize::from(!ok)) {
            inc(c);
        }
    }

    /// True if a breach may be logged now (at most [`LOGS_PER_SECOND`]).
    pub fn may_log(&self) -> bool {
        self.log.may_log()
    }

    /// The Prometheus text exposition of every counter; `open` is the
    /// number of connections open now.
    pub fn render(&self, open: usize) -> String {
        let mut o = String::with_capacity(4096);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            &mut o,
            "sigma_connections_open",
            "gauge",
            "Connections open now.",
        );
        let _ = writeln!(o, "sigma_connections_open {open}");
        counter(
            &mut o,
            "sigma_connections_accepted_total",
            "Connections accepted.",
            get(&self.accepted),
        );
        counter(
            &mut o,
            "sigma_connections_refused_total",
            "Connections refused by a cap.",
            get(&self.refused),
        );
        counter(
            &mut o,
            "sigma_tls_handshakes_total",
            "TLS handshakes completed.",
            get(&self.tls_handshakes),
        );
        counter(
            &mut o,
            "sigma_tls_resumed_total",
            "TLS handshakes that resumed a session.",
            get(&self.tls_resumed),
        );
        counter(
            &mut o,
            "sigma_tls_acme_validations_total",
            "ACME tls-alpn-01 validation handshakes answered.",
            get(&self.tls_acme_validations),
        );
        counter(
            &mut o,
            "sigma_requests_total",
            "Requests parsed.",
            get(&self.requests),
        );
        metric(
            &mut o,
            "sigma_responses_total",
            "counter",
            "Responses by status class.",
        );
        for (i, c) in self.responses.iter().enumerate() {
            let _ = writeln!(
                o,
                "sigma_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                get(c)
            );
        }
        metric(
            &mut o,
            "sigma_config_reloads_total",
            "counter",
            "Config reloads (SIGHUP), by result.",
        );
        for (result, c) in ["ok", "error"].iter().zip(&self.reloads) {
            let _ = writeln!(
                o,
                "sigma_config_reloads_total{{result=\"{result}\"}} {}",
                get(c)
            );
        }
        metric(
            &mut o,
            "sigma_rejections_total",
            "counter",
            "Connections or requests refused, by reason.",
        );
        let mut rejections = self.rejections();
        for r in LIMIT_REASONS {
            rejections.entry(r).or_insert(0);
        }
        for (reason, n) in &rejections {
            let _ = writeln!(o, "sigma_rejections_total{{reason=\"{reason}\"}} {n}");
        }
        metric(
            &mut o,
            "sigma_ws_messages_total",
            "counter",
            "WebSocket messages.",
        );
        let _ = writeln!(
            o,
            "sigma_ws_messages_total{{direction=\"in\"}} {}",
            get(&self.ws_messages_in)
        );
        let _ = writeln!(
            o,
            "sigma_ws_messages_total{{direction=\"out\"}} {}",
            get(&self.ws_messages_out)
        );
        metric(
            &mut o,
            "sigma_ws_bytes_total",
            "counter",
            "WebSocket payload bytes.",
        );
        let _ = writeln!(
            o,
            "sigma_ws_bytes_total{{direction=\"in\"}} {}",
            get(&self.ws_bytes_in)
        );
        let _ = writeln!(
            o,
            "sigma_ws_bytes_total{{direction=\"out\"}} {}",
            get(&self.ws_bytes_out)
        );
        counter(
            &mut o,
            "sigma_identity_mismatch_total",
            "Replies dropped because their identity differed from the connection's.",
            get(&self.identity_mismatch),
        );
        metric(
            &mut o,
            "sigma_request_duration_seconds",
            "histogram",
            "Time from request head to response.",
        );
        let mut cumulative = 0u64;
        for (bound, c) in LATENCY_BUCKETS_US.iter().zip(&self.latency_buckets) {
            cumulative = cumulative.saturating_add(get(c));
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                o,
                "sigma_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = get(&self.latency_count);
        let _ = writeln!(
            o,
            "sigma_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = get(&self.latency_sum_us) as f64 / 1e6;
        let _ = writeln!(o, "sigma_request_duration_seconds_sum {sum}");
        let _ = writeln!(o, "sigma_request_duration_seconds_count {count}");
        o
    }
}

fn metric(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    metric(o, name, "counter", help);
    let _ = writeln!(o, "{name} {v}");
}

/// The reply rule's one policy for what it drops: counted in
/// `sigma_identity_mismatch_total`, logged at most [`LOGS_PER_SECOND`].
impl sigma_core::ReplyAudit for Metrics {
    fn mismatch(&self, what: sigma_core::Dropped, whom: &dyn std::fmt::Display) {
        inc(&self.identity_mismatch);
        if self.may_log() {
            tracing::warn!(target: sigma_auth::SECURITY, event = "identity_mismatch", at = %whom, "{what}: identity mismatch");
        }
    }
}

/// Where `A` (and any stage given it) counts refusals:
/// `sigma_rejections_total{reason=…}`, warnings at most
/// [`LOGS_PER_SECOND`].
impl sigma_core::Rejects for Metrics {
    fn reject(&self, reason: &'static str) {
        Metrics::reject(self, reason);
    }

    fn may_log(&self) -> bool {
        Metrics::may_log(self)
    }
}

/// Increments a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds to a counter.
pub fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_allows_ten_lines_a_second() {
        let l = LogLimiter::new();
        assert_eq!((0..12).filter(|_| l.may_log_at(7)).count(), 10);
        assert!(l.may_log_at(8));
    }

    #[test]
    fn render_lists_every_limit_reason_and_counts() {
        let m = Metrics::default();
        m.reject("head_timeout");
        m.reject("head_timeout");
        m.response(404);
        m.latency(Duration::from_micros(70));
        let text = m.render(3);
        assert!(text.contains("sigma_connections_open 3\n"));
        assert!(text.contains("sigma_rejections_total{reason=\"head_timeout\"} 2\n"));
        assert!(text.contains("sigma_rejections_total{reason=\"ws_slow_consumer\"} 0\n"));
        assert!(text.contains("sigma_responses_total{class=\"4xx\"} 1\n"));
        assert!(text.contains("sigma_request_duration_seconds_bucket{le=\"0.00005\"} 0\n"));
        assert!(text.contains("sigma_request_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("sigma_request_duration_seconds_count 1\n"));
        assert!(text.contains("sigma_config_reloads_total{result=\"ok\"} 0\n"));
        m.config_reloaded(false);
        assert!(m
            .render(0)
            .contains("sigma_config_reloads_total{result=\"error\"} 1\n"));
    }
}
