//! Measurement: the time window, send stamps, an HDR latency histogram and
//! counters, merged across threads into one [`Report`].
//!
//! Every message a scenario sends carries its send time (nanoseconds since
//! the run's base instant) in its payload, so whoever receives it (the
//! sender for echo, any subscriber for publish/subscribe) measures the
//! latency without per-connection bookkeeping. Only what arrives inside the
//! measurement window (after the warm-up) is counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histogram tracks (longer values are clamped).
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Width of a decimal send stamp in text messages.
pub const TEXT_STAMP_LEN: usize = 20;

/// The run's clock: stamps are relative to `base`; counting happens in
/// `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Time zero of send stamps (the end of the connect phase).
    pub base: Instant,
    /// End of the warm-up.
    pub start: Instant,
    /// End of the run.
    pub end: Instant,
}

impl Window {
    /// A window that starts counting `warmup` after `base` and lasts
    /// `duration`.
    pub fn new(base: Instant, warmup: Duration, duration: Duration) -> Self {
        Self {
            base,
            start: base + warmup,
            end: base + warmup + duration,
        }
    }

    /// Whether `t` is inside the measurement window.
    pub fn counts(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    /// The stamp for a message sent at `t`.
    pub fn stamp(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Writes `stamp` into the first 8 bytes of a binary payload.
pub fn put_binary_stamp(payload: &mut [u8], stamp: u64) {
    if let Some(p) = payload.get_mut(..8) {
        p.copy_from_slice(&stamp.to_le_bytes());
    }
}

/// Reads the stamp of a binary payload.
pub fn binary_stamp(payload: &[u8]) -> Option<u64> {
    let b = payload.get(..8)?;
    Some(u64::from_le_bytes(<[u8; 8]>::try_from(b).ok()?))
}

/// Writes `stamp` as [`TEXT_STAMP_LEN`] decimal digits at the start of
/// `payload`.
pub fn put_text_stamp(payload: &mut [u8], stamp: u64) {
    let digits = format!("{stamp:0width$}", width = TEXT_STAMP_LEN);
    if let Some(p) = payload.get_mut(..TEXT_STAMP_LEN) {
        p.copy_from_slice(digits.as_bytes());
    }
}

/// Reads a decimal stamp from the start of `s` (up to the first non-digit).
pub fn text_stamp(s: &[u8]) -> Option<u64> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(s.get(..digits)?).ok()?.parse().ok()
}

/// What one thread (or the whole run, once merged) observed.
#[derive(Debug)]
pub struct Stats {
    /// Latency in nanoseconds of messages received inside the window.
    pub latency: Histogram<u64>,
    /// Messages received inside the window.
    pub received: u64,
    /// Payload bytes received inside the window.
    pub received_bytes: u64,
    /// Messages sent inside the window.
    pub sent: u64,
    /// Deliveries expected for what was sent in the window (pub/sub).
    pub expected: u64,
    /// Connections opened (handshake completed).
    pub connected: u64,
    /// Connections that failed to open.
    pub connect_errors: u64,
    /// Connections that failed during the run.
    pub errors: u64,
    /// Echoes that did not match what was sent, error replies.
    pub bad_replies: u64,
    /// Close codes received from the server (0 = no code).
    pub closes: BTreeMap<u16, u64>,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty counters.
    pub fn new() -> Self {
        Self {
            latency: new_histogram(),
            received: 0,
            received_bytes: 0,
            sent: 0,
            expected: 0,
            connected: 0,
            connect_errors: 0,
            errors: 0,
            bad_replies: 0,
            closes: BTreeMap::new(),
            first_error: None,
        }
    }

    /// Counts a message received at `now` carrying `stamp`.
    pub fn received(&mut self, w: &Window, now: Instant, stamp: u64, bytes: usize) {
        if !w.counts(now) {
            return;
        }
        self.received += 1;
        self.received_bytes += bytes as u64;
        let lat = w.stamp(now).saturating_sub(stamp).max(1);
        self.latency.saturating_record(lat);
    }

    /// Counts a delivery received at `now` of a message stamped `stamp` if
    /// that message was *sent* inside the window, whenever it arrives (the
    /// caller keeps reading for a grace period after the window): for
    /// open-loop fan-out, where the share delivered is the window's sends
    /// that arrived, and jitter at the window's edges must not move it.
    pub fn delivered(&mut self, w: &Window, now: Instant, stamp: u64, bytes: usize) {
        if stamp < w.stamp(w.start) || stamp >= w.stamp(w.end) {
            return;
        }
        self.received += 1;
        self.received_bytes += bytes as u64;
        let lat = w.stamp(now).saturating_sub(stamp).max(1);
        self.latency.saturating_record(lat);
    }

    /// Notes a failed connection.
    pub fn error(&mut self, during_run: bool, e: &anyhow::Error) {
        if during_run {
            self.errors += 1;
        } else {
            self.connect_errors += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    /// Adds another thread's counts.
    pub fn merge(&mut self, o: Self) {
        // Both histograms have the same bounds, so `add` cannot fail.
        let _ = self.latency.add(&o.latency);
        self.received += o.received;
        self.received_bytes += o.received_bytes;
        self.sent += o.sent;
        self.expected += o.expected;
        self.connected += o.connected;
        self.connect_errors += o.connect_errors;
        self.errors += o.errors;
        self.bad_replies += o.bad_replies;
        for (k, v) in o.closes {
            *self.closes.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// A histogram of 1 ns to [`MAX_LATENCY_NS`] with 3 significant figures.
#[allow(clippy::expect_used)] // constant bounds: fails only if they were invalid
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// The result of one run.
#[derive(Debug)]
pub struct Report {
    /// `echo`, `pubsub` or `idle`.
    pub mode: &'static str,
    /// The parameters, in print order (name, value).
    pub params: Vec<(&'static str, String)>,
    /// Length of the measurement window.
    pub duration: Duration,
    /// The merged counts.
    pub stats: Stats,
}

impl Report {
    fn pct_us(&self, q: f64) -> f64 {
        self.stats.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Messages received per second inside the window.
    pub fn rate(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.stats.received as f64 / secs
        } else {
            0.0
        }
    }

    /// One JSON object on one line (for scripts).
    pub fn json(&self) -> String {
        let s = &self.stats;
        let mut o = String::from("{");
        let _ = write!(o, "\"mode\":\"{}\"", self.mode);
        for (k, v) in &self.params {
            let _ = write!(o, ",\"{k}\":\"{}\"", escape(v));
        }
        let _ = write!(
            o,
            ",\"duration_s\":{:.3},\"connected\":{},\"connect_errors\":{},\"errors\":{},\
             \"bad_replies\":{},\"sent\":{},\"received\":{},\"expected\":{},\"received_bytes\":{},\
             \"msgs_per_s\":{:.1},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\
             \"p999_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{:.1}",
            self.duration.as_secs_f64(),
            s.connected,
            s.connect_errors,
            s.errors,
            s.bad_replies,
            s.sent,
            s.received,
            s.expected,
            s.received_bytes,
            self.rate(),
            self.pct_us(0.5),
            self.pct_us(0.9),
            self.pct_us(0.99),
            self.pct_us(0.999),
            s.latency.max() as f64 / 1000.0,
            s.latency.mean() / 1000.0,
        );
        // The distribution as (percentile, µs) points, so that bench/run
        // can take several runs' latencies together.
        o.push_str(",\"quantiles_us\":[");
        let _ = write!(o, "[0,{:.1}]", s.latency.min() as f64 / 1000.0);
        for p in (1..100).map(f64::from).chain([99.5, 99.9, 99.99]) {
            let _ = write!(o, ",[{p},{:.1}]", self.pct_us(p / 100.0));
        }
        let _ = write!(o, ",[100,{:.1}]", s.latency.max() as f64 / 1000.0);
        o.push(']');
        o.push_str(",\"closes\":{");
        for (i, (code, n)) in s.closes.iter().enumerate() {
            let _ = write!(o, "{}\"{code}\":{n}", if i > 0 { "," } else { "" });
        }
        o.push('}');
        if let Some(e) = &s.first_error {
            let _ = write!(o, ",\"first_error\":\"{}\"", escape(e));
        }
        o.push('}');
        o
    }

    /// A human-readable summary.
    pub fn human(&self) -> String {
        let s = &self.stats;
        let mut o = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(o, "sigma-load {} ({})", self.mode, params.join(" "));
        let _ = writeln!(
            o,
            "  connections: {} open, {} failed to open, {} failed during the run",
            s.connected, s.connect_errors, s.errors
        );
        if self.mode != "idle" {
            let _ = writeln!(
                o,
                "  {:.1} s: sent {}, received {} ({:.0} msg/s, {:.2} MB/s){}",
                self.duration.as_secs_f64(),
                s.sent,
                s.received,
                self.rate(),
                s.received_bytes as f64 / self.duration.as_secs_f64().max(1e-9) / 1e6,
                if s.expected > 0 {
                    format!(", expected {}", s.expected)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                o,
                "  latency (us): p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
                self.pct_us(0.5),
                self.pct_us(0.9),
                self.pct_us(0.99),
                self.pct_us(0.999),
                s.latency.max() as f64 / 1000.0,
                s.latency.mean() / 1000.0
            );
        }
        if s.bad_replies > 0 {
            let _ = writeln!(o, "  bad replies: {}", s.bad_replies);
        }
        if !s.closes.is_empty() {
            let _ = writeln!(o, "  close codes from the server: {:?}", s.closes);
        }
        if let Some(e) = &s.first_error {
            let _ = writeln!(o, "  first error: {e}");
        }
        o
    }
}

/// Escapes a string for a JSON string literal.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let mut p = vec![b'x'; 64];
        put_binary_stamp(&mut p, 123_456_789);
        assert_eq!(binary_stamp(&p), Some(123_456_789));
        put_text_stamp(&mut p, 987_654_321);
        assert_eq!(text_stamp(&p), Some(987_654_321));
        assert_eq!(text_stamp(b"x1"), None);
        assert_eq!(binary_stamp(b"short"), None);
    }

    #[test]
    fn counts_only_inside_the_window() {
        let base = Instant::now();
        let w = Window::new(base, Duration::from_secs(1), Duration::from_secs(1));
        let mut s = Stats::new();
        s.received(&w, base + Duration::from_millis(500), 0, 8);
        s.received(
            &w,
            base + Duration::from_millis(1500),
            w.stamp(base + Duration::from_millis(1400)),
            8,
        );
        s.received(&w, base + Duration::from_millis(2500), 0, 8);
        assert_eq!(s.received, 1);
        let lat = s.latency.value_at_quantile(0.5);
        assert!((99_000_000..=101_000_000).contains(&lat), "{lat}");
        let mut t = Stats::new();
        t.merge(s);
        let r = Report {
            mode: "echo",
            params: vec![("url", "ws://x/\"q\"".into())],
            duration: Duration::from_secs(1),
            stats: t,
        };
        assert!(r.json().contains("\"received\":1,"));
        assert!(r.json().contains("ws://x/\\\"q\\\""));
        assert_eq!(r.rate(), 1.0);
    }

    #[test]
    fn json_carries_the_latency_distribution() {
        let base = Instant::now();
        let w = Window::new(base, Duration::from_secs(0), Duration::from_secs(10));
        let mut s = Stats::new();
        // Latencies of 1..=1000 ms.
        for ms in 1..=1000u64 {
            let sent = base + Duration::from_millis(5000);
            s.received(&w, sent + Duration::from_millis(ms), w.stamp(sent), 8);
        }
        let r = Report {
            mode: "echo",
            params: vec![],
            duration: Duration::from_secs(10),
            stats: s,
        };
        let v: serde_json::Value = serde_json::from_str(&r.json()).expect("valid JSON");
        let pts: Vec<(f64, f64)> = v["quantiles_us"]
            .as_array()
            .expect("quantiles_us")
            .iter()
            .map(|p| (p[0].as_f64().expect("p"), p[1].as_f64().expect("us")))
            .collect();
        assert_eq!(pts.len(), 104);
        assert_eq!(pts.first().map(|p| p.0), Some(0.0));
        assert_eq!(pts.last().map(|p| p.0), Some(100.0));
        // Percentiles rise, and so do their values; the ends are the
        // extremes and the middle is p50.
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let near = |us: f64, ms: f64| (us / 1000.0 - ms).abs() <= ms * 0.01;
        assert!(near(pts[0].1, 1.0), "{:?}", pts[0]);
        assert!(near(pts[103].1, 1000.0), "{:?}", pts[103]);
        let p50 = pts.iter().find(|p| p.0 == 50.0).expect("p50");
        assert_eq!(Some(p50.1), v["p50_us"].as_f64());
        assert!(near(p50.1, 500.0), "{p50:?}");
    }

    #[test]
    fn deliveries_count_by_send_time() {
        let base = Instant::now();
        let w = Window::new(base, Duration::from_secs(1), Duration::from_secs(1));
        let ms = |m| base + Duration::from_millis(m);
        let mut s = Stats::new();
        // Sent in the warm-up, arrived in the window: not counted.
        s.delivered(&w, ms(1100), w.stamp(ms(900)), 8);
        // Sent in the window, arrived after it (the grace period): counted.
        s.delivered(&w, ms(2300), w.stamp(ms(1900)), 8);
        s.delivered(&w, ms(1500), w.stamp(ms(1000)), 8);
        // Sent at the end: not counted.
        s.delivered(&w, ms(2100), w.stamp(ms(2000)), 8);
        assert_eq!(s.received, 2);
        assert_eq!(s.latency.max() / 1_000_000, 500);
    }
}
