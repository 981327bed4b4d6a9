//! Login throttling (DESIGN §4): token buckets per client IP and per user
//! name, so neither one address nor a distributed guess at one account can
//! try passwords quickly. Over the limit: 429 with `Retry-After`.
//!
//! Keys live only while they are throttled-recently: the maps are trimmed
//! as they grow, so a flood of distinct names cannot grow memory without
//! bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Trim the key maps every this many checks.
const TRIM_EVERY: u64 = 1024;

/// Per-IP and per-user login rate limits.
pub struct Throttle {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

impl Throttle {
    /// `per_ip` and `per_user` attempts per minute (bursts of that size).
    pub fn new(per_ip: u32, per_user: u32) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Self {
            per_ip: RateLimiter::keyed(quota(per_ip)),
            per_user: RateLimiter::keyed(quota(per_user)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// One login attempt from `ip` for `user`: `Err(retry_after)` when over
    /// either limit.
    pub fn check(&self, ip: IpAddr, user: &str) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % TRIM_EVERY == TRIM_EVERY - 1 {
            self.per_ip.retain_recent();
            self.per_user.retain_recent();
        }
        let now = self.clock.now();
        self.per_ip
            .check_key(&ip)
            .map_err(|n| n.wait_time_from(now))?;
        // Case-folded so `Admin` and `admin` share a bucket.
        self.per_user
            .check_key(&user.to_ascii_lowercase())
            .map_err(|n| n.wait_time_from(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_per_ip() {
        let t = Throttle::new(5, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(t.check(ip, "alice").is_ok());
        assert!(t.check(ip, "Alice").is_ok());
        let wait = t.check(ip, "alice").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(60));
        // Another user from the same IP still has the IP budget.
        assert!(t.check(ip, "bob").is_ok());
        assert!(t.check(ip, "carol").is_ok());
        // The IP's 5 are spent (alice x3 counted against it, bob, carol).
        assert!(t.check(ip, "dave").is_err());
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.check(other, "erin").is_ok());
    }
}
