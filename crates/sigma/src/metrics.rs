//! Counters for what T and H refuse, and the connection gauges.
//!
//! Hot-path counters are relaxed atomics (no lock per request). Rejections
//! are counted by reason label in a small map touched only on the error
//! path. `GET /metrics` (issue 4) renders these; tests read them directly.
//! Logging of breaches is rate-limited so an attack cannot flood the logs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections refused by the global or per-IP cap.
    pub refused: AtomicU64,
    /// Requests parsed.
    pub requests: AtomicU64,
    /// Replies dropped by the reply rule.
    pub identity_mismatch: AtomicU64,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    log_window: AtomicU64,
    log_count: AtomicU64,
}

/// Breach log lines allowed per second.
const LOGS_PER_SECOND: u64 = 10;

impl Metrics {
    /// Counts one rejection by reason label.
    pub fn reject(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejections.lock() {
            *m.entry(reason).or_insert(0) += 1;
        }
    }

    /// The rejection counts by reason.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejections
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// True if a breach may be logged now (at most [`LOGS_PER_SECOND`]).
    pub fn may_log(&self) -> bool {
        let sec = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.log_window.swap(sec, Ordering::Relaxed) != sec {
            self.log_count.store(0, Ordering::Relaxed);
        }
        self.log_count.fetch_add(1, Ordering::Relaxed) < LOGS_PER_SECOND
    }
}

/// Increments a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
