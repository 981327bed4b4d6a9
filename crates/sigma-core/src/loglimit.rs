//! A log budget: at most a few breach lines per second, below every stage
//! (T → H → A → router → destination), so that whatever a client can
//! trigger at will (A's refusals, a world's illegal messages) cannot flood
//! the logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Breach log lines allowed per second.
const LOGS_PER_SECOND: u64 = 10;

/// A log budget of [`LOGS_PER_SECOND`] lines per wall-clock second, so
/// whatever a client can trigger at will cannot flood the logs. Lock-free;
/// `const`, so it can be a `static` where no `Metrics` is at hand.
#[derive(Debug, Default)]
pub struct LogLimiter {
    window: AtomicU64,
    count: AtomicU64,
}

impl LogLimiter {
    /// A fresh budget.
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// True if a line may be logged now.
    pub fn may_log(&self) -> bool {
        let sec = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.may_log_at(sec)
    }

    /// [`LogLimiter::may_log`] at unix second `sec`.
    pub fn may_log_at(&self, sec: u64) -> bool {
        if self.window.swap(sec, Ordering::Relaxed) != sec {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < LOGS_PER_SECOND
    }
}
