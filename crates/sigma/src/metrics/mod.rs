//! Counters and `GET /metrics` (Prometheus text format), `GET /healthz`.
//!
//! What T, H, A and the router count: connections (open, accepted,
//! refused), requests by status class, rejections by reason (every limit of
//! DESIGN §3 has its own label, listed in [`LIMIT_REASONS`] so it shows
//! even at zero), WebSocket messages and bytes each way, identity
//! mismatches (the reply rule), and a request latency histogram; per
//! route ([`RouteStats`]: responses by status class and latency, kept by
//! route path across reloads), logins by result, `sigma_build_info`, and
//! the process metrics of [`process`].
//!
//! The hot path only does relaxed atomic increments: no lock per request.
//! Rejections are counted in a small map that is touched only when a
//! connection breaks a rule. Logging of breaches is rate-limited so an
//! attack cannot flood the logs. Access to `/metrics` is limited to
//! `server.metrics_allow` (default loopback) by the caller.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod process;

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
    // A route's `allow` / `deny` / `methods` refused a request; API keys
    // that match no key, and networks throttled for sending them.
    "policy_refused",
    "unknown_api_key",
    "api_key_throttled",
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
    latency: Histogram,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    /// Events that are not refusals ([`sigma_core::Rejects::count`]):
    /// `login_ok`.
    events: Mutex<BTreeMap<&'static str, u64>>,
    /// Per-route counters by route path, created when a route table is
    /// built (bounded by the paths the configs named), kept across
    /// reloads.
    routes: Mutex<BTreeMap<String, Arc<RouteStats>>>,
    log: LogLimiter,
    /// Config reloads (SIGHUP) applied and refused.
    reloads: [AtomicU64; 2],
}

/// The log budget lives in `sigma-core` (destinations use it too).
pub use sigma_core::loglimit::LogLimiter;

impl Metrics {
    /// Counts one rejection by reason label.
    pub fn reject(&self, reason: &'static str) {
        bump(&self.rejections, reason);
    }

    /// The rejection counts by reason.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.rejections).clone()
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
        self.latency.observe(d);
    }

    /// The counters of the route at `path` (the same ones for the same
    /// path in every route table, so a reload keeps counting).
    pub fn route_stats(&self, path: &str) -> Arc<RouteStats> {
        let mut m = lock(&self.routes);
        if let Some(s) = m.get(path) {
            return Arc::clone(s);
        }
        let s = Arc::new(RouteStats::default());
        m.insert(path.to_owned(), Arc::clone(&s));
        s
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
        self.latency
            .render(&mut o, "sigma_request_duration_seconds", "");
        self.render_logins(&mut o, &rejections);
        self.render_routes(&mut o);
        metric(
            &mut o,
            "sigma_build_info",
            "gauge",
            "The running build (always 1).",
        );
        let _ = writeln!(
            o,
            "sigma_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        process::Process::read().render(&mut o);
        o
    }

    /// `sigma_logins_total{result}`: password logins that opened a
    /// session, failed, were throttled (any of A's three throttles) or
    /// found the verification queue full.
    fn render_logins(&self, o: &mut String, rejections: &BTreeMap<&'static str, u64>) {
        let r = |k: &str| rejections.get(k).copied().unwrap_or(0);
        let ok = lock(&self.events).get("login_ok").copied().unwrap_or(0);
        let throttled = r("login_throttled")
            .saturating_add(r("login_failures_user"))
            .saturating_add(r("login_failures_global"));
        metric(
            o,
            "sigma_logins_total",
            "counter",
            "Password logins, by result.",
        );
        for (result, n) in [
            ("ok", ok),
            ("failed", r("login_failed")),
            ("throttled", throttled),
            ("queue_full", r("login_queue_full")),
        ] {
            let _ = writeln!(o, "sigma_logins_total{{result=\"{result}\"}} {n}");
        }
    }

    /// Per-route responses by status class and latency.
    fn render_routes(&self, o: &mut String) {
        let routes: Vec<(String, Arc<RouteStats>)> = lock(&self.routes)
            .iter()
            .map(|(p, s)| (p.clone(), Arc::clone(s)))
            .collect();
        metric(
            o,
            "sigma_route_responses_total",
            "counter",
            "Responses by route (its path) and status class.",
        );
        for (path, s) in &routes {
            let route = label(path);
            for (i, c) in s.responses.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "sigma_route_responses_total{{route=\"{route}\",class=\"{}xx\"}} {}",
                    i + 1,
                    c.load(Ordering::Relaxed)
                );
            }
        }
        metric(
            o,
            "sigma_route_request_duration_seconds",
            "histogram",
            "Time from request head to response, by route (WebSocket sessions not included).",
        );
        for (path, s) in &routes {
            let labels = format!("route=\"{}\",", label(path));
            s.latency
                .render(o, "sigma_route_request_duration_seconds", &labels);
        }
    }
}

/// What one route answered: responses by status class and their latency.
#[derive(Debug, Default)]
pub struct RouteStats {
    responses: [AtomicU64; 5],
    latency: Histogram,
}

impl RouteStats {
    /// Counts a finished request: its status and, unless it was a
    /// WebSocket session (101: its length is not a latency), its latency.
    pub fn record(&self, status: u16, d: Duration) {
        let class = usize::from(status / 100).saturating_sub(1);
        if let Some(c) = self.responses.get(class) {
            inc(c);
        }
        if status != 101 && status != 0 {
            self.latency.observe(d);
        }
    }
}

/// A latency histogram with the buckets of [`LATENCY_BUCKETS_US`].
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            if let Some(c) = self.buckets.get(i) {
                inc(c);
            }
        }
        inc(&self.count);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// `NAME_bucket{LABELS le=…}`, `NAME_sum`, `NAME_count`; `labels` is
    /// empty or ends with a comma.
    fn render(&self, o: &mut String, name: &str, labels: &str) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut cumulative = 0u64;
        for (bound, c) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            cumulative = cumulative.saturating_add(get(c));
            let le = *bound as f64 / 1e6;
            let _ = writeln!(o, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let count = get(&self.count);
        let _ = writeln!(o, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = get(&self.sum_us) as f64 / 1e6;
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(o, "{name}_sum{braces} {sum}");
        let _ = writeln!(o, "{name}_count{braces} {count}");
    }
}

/// The destinations' own samples ([`sigma_core::Sample`]), each labelled
/// with its route: one `# HELP` / `# TYPE` per family, its samples
/// together, families in the order first seen.
pub fn render_samples<'a>(
    o: &mut String,
    routes: impl Iterator<Item = (&'a str, Vec<sigma_core::Sample>)>,
) {
    let mut families: Vec<(&'static str, &'static str, &'static str, Vec<String>)> = Vec::new();
    for (route, samples) in routes {
        for s in samples {
            let mut labels = format!("route=\"{}\"", label(route));
            for (k, v) in &s.labels {
                let _ = write!(labels, ",{k}=\"{}\"", label(v));
            }
            let line = format!("{}{{{labels}}} {}", s.name, s.value);
            match families.iter_mut().find(|f| f.0 == s.name) {
                Some(f) => f.3.push(line),
                None => families.push((s.name, s.help, s.kind, vec![line])),
            }
        }
    }
    for (name, help, kind, lines) in families {
        metric(o, name, kind, help);
        for l in lines {
            let _ = writeln!(o, "{l}");
        }
    }
}

/// A label value: `\`, `"` and newlines escaped (route paths hold none
/// of them today; the exposition must stay valid if one ever does).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bump(m: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    let mut m = lock(m);
    let n = m.entry(key).or_insert(0);
    *n = n.saturating_add(1);
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

    fn count(&self, event: &'static str) {
        bump(&self.events, event);
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
