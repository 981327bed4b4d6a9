//! The clock: where the shell's stages read the time, real or fake.
//!
//! ```text
//!  T · A (sessions, tokens, throttles) · destinations ──now()──▶ [ Clock ]
//!                                                        SystemClock | FakeClock
//! ```
//!
//! The sans-IO cores (`sigma-http`, `A`'s session table) take the time
//! as an argument and never read a clock. The code that calls them reads
//! it from a [`Clock`], so that a test can stand a [`FakeClock`] in for
//! the [`SystemClock`] and move time by hand: session expiry, token
//! lifetimes and deadlines are then tested without sleeping. This module
//! reads time only; it arms no timer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of the current time, both kinds.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch: the wall clock of sessions,
    /// tokens and cookies (it may jump; never use it for deadlines).
    fn unix_ms(&self) -> u64;

    /// The monotonic clock of deadlines and throttles.
    fn now(&self) -> Instant;

    /// Whole seconds since the Unix epoch (JWT `iat`/`exp`).
    fn unix_secs(&self) -> u64 {
        self.unix_ms() / 1000
    }
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> u64 {
        unix_now_ms()
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Milliseconds since the Unix epoch by the system clock (0 before 1970,
/// `u64::MAX` past the year 584 million).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A clock that moves only when told to ([`FakeClock::advance`]): both
/// of its readings move together, from a wall-clock start the test picks.
#[derive(Debug)]
pub struct FakeClock {
    /// The monotonic reading at the start.
    origin: Instant,
    /// The wall-clock reading at the start, in unix ms.
    unix_origin_ms: u64,
    /// Time advanced since the start, in nanoseconds.
    elapsed_ns: AtomicU64,
}

impl FakeClock {
    /// A clock that reads `unix_ms` on the wall until advanced.
    pub fn at_unix_ms(unix_ms: u64) -> Self {
        Self {
            origin: Instant::now(),
            unix_origin_ms: unix_ms,
            elapsed_ns: AtomicU64::new(0),
        }
    }

    /// Moves both readings forward by `d` (saturating at about 584 years).
    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .elapsed_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                Some(e.saturating_add(ns))
            });
    }

    /// Time advanced since the start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns.load(Ordering::Acquire))
    }
}

impl Default for FakeClock {
    /// A fake clock starting at 2024-01-01T00:00:00Z.
    fn default() -> Self {
        Self::at_unix_ms(1_704_067_200_000)
    }
}

impl Clock for FakeClock {
    fn unix_ms(&self) -> u64 {
        let ms = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.unix_origin_ms.saturating_add(ms)
    }

    fn now(&self) -> Instant {
        let e = self.elapsed();
        self.origin.checked_add(e).unwrap_or(self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_clock_moves_only_when_advanced() {
        let c = FakeClock::at_unix_ms(5_000);
        let t0 = c.now();
        assert_eq!(c.unix_ms(), 5_000);
        assert_eq!(c.unix_secs(), 5);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.unix_ms(), 6_500);
        assert_eq!(c.now() - t0, Duration::from_millis(1_500));
        c.advance(Duration::MAX);
        assert_eq!(c.unix_ms(), 5_000 + u64::MAX / 1_000_000);
    }

    #[test]
    fn the_system_clock_is_after_2024() {
        assert!(SystemClock.unix_ms() > FakeClock::default().unix_ms());
        let dyn_clock: &dyn Clock = &SystemClock;
        assert!(dyn_clock.unix_secs() > 1_704_067_200);
    }
}
