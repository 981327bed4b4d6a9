//! The login limits of [`crate::throttle`] across several nodes
//! (`[cluster] redis`, DESIGN §7): the same three limits, counted in fixed
//! one-minute windows that every node shares ([`SharedCounters`]), checked
//! after the node's own in-memory throttle has let an attempt through.
//!
//! - every attempt counts against its client address (IPv6 /64) —
//!   `login_per_ip_per_minute`;
//! - a failure counts against (user name, client /24 or /64) —
//!   `login_failures_per_user_per_minute` — and against the global
//!   ceiling — `login_failures_per_minute`; over the ceiling only the
//!   (user, network) pairs that have failed this minute wait, so a flood
//!   cannot lock `alice` out from her own network.
//!
//! Keys hold no user name in clear: `SHA-256(user)` (bounded length, any
//! bytes). A node whose Redis is unreachable fails open — its own
//! in-memory limits still hold, and the failure is counted in
//! `sigma_redis_unavailable_total` — rather than refusing every login.
//! The check is not atomic across nodes: concurrent guesses on N nodes may
//! pass together, up to N times the node's own burst, before their
//! failures are counted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use sigma_store::SharedCounters;

use crate::throttle::{addr_key, net_key, Limits, Throttled};

/// The window of every shared count.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The login limits shared by the nodes of a cluster.
pub struct SharedThrottle {
    counters: Arc<dyn SharedCounters>,
    limits: Limits,
}

impl std::fmt::Debug for SharedThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedThrottle")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn user_key(user: &str, ip: IpAddr) -> String {
    let h = Sha256::digest(user.as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("login/fail/{hex}/{}", net_key(ip))
}

const GLOBAL_KEY: &str = "login/fail";

/// Until the current window ends (for `Retry-After`).
fn rest_of_window(now_unix_secs: u64) -> Duration {
    let w = WINDOW.as_secs();
    Duration::from_secs(w - now_unix_secs % w)
}

/// Whether an attempt passes, given the shared counts: `addr` (this one
/// included), the (user, network) failures and the global failures.
pub fn decide(limits: &Limits, addr: u64, user: u64, global: u64) -> Result<(), &'static str> {
    if addr > u64::from(limits.per_addr) {
        Err("login_throttled")
    } else if user >= u64::from(limits.failures_per_user) {
        Err("login_failures_user")
    } else if global >= u64::from(limits.failures) && user > 0 {
        Err("login_failures_global")
    } else {
        Ok(())
    }
}

impl SharedThrottle {
    /// The limits of `limits`, counted in `counters`.
    pub fn new(counters: Arc<dyn SharedCounters>, limits: Limits) -> Self {
        Self { counters, limits }
    }

    /// An attempt from `ip` for `user` at `now_unix_secs`: counted, then
    /// let through or refused. An unreachable Redis lets it through.
    pub async fn check(&self, ip: IpAddr, user: &str, now_unix_secs: u64) -> Result<(), Throttled> {
        let addr = self
            .counters
            .hit(&format!("login/addr/{}", addr_key(ip)), WINDOW);
        let fails = self.counters.count(&user_key(user, ip), WINDOW);
        let global = self.counters.count(GLOBAL_KEY, WINDOW);
        let (addr, fails, global) = tokio::join!(addr, fails, global);
        let (Ok(addr), Ok(fails), Ok(global)) = (addr, fails, global) else {
            tracing::debug!("login throttle: Redis unreachable, the node's own limits apply");
            return Ok(());
        };
        decide(&self.limits, addr, fails, global).map_err(|reason| Throttled {
            reason,
            wait: rest_of_window(now_unix_secs),
        })
    }

    /// The attempt failed: it counts against (user, network) and the
    /// global ceiling on every node.
    pub async fn failed(&self, ip: IpAddr, user: &str) {
        let a = self.counters.hit(&user_key(user, ip), WINDOW);
        let b = self.counters.hit(GLOBAL_KEY, WINDOW);
        let _ = a.await;
        let _ = b.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: Limits = Limits {
        per_addr: 5,
        failures_per_user: 3,
        failures: 10,
    };

    #[test]
    fn the_three_limits() {
        assert_eq!(decide(&L, 1, 0, 0), Ok(()));
        assert_eq!(decide(&L, 5, 2, 9), Ok(()));
        assert_eq!(decide(&L, 6, 0, 0), Err("login_throttled"));
        assert_eq!(decide(&L, 1, 3, 0), Err("login_failures_user"));
        // Over the ceiling: only pairs that failed this minute wait.
        assert_eq!(decide(&L, 1, 1, 10), Err("login_failures_global"));
        assert_eq!(decide(&L, 1, 0, 10), Ok(()));
        assert_eq!(rest_of_window(120), Duration::from_secs(60));
        assert_eq!(rest_of_window(179), Duration::from_secs(1));
    }

    #[test]
    fn keys_are_bounded_and_hide_the_user() {
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        let k = user_key(&"x".repeat(100_000), ip);
        assert!(k.len() < 80, "{k}");
        assert!(k.ends_with("/192.0.2.0"), "{k}");
        assert!(!user_key("alice", ip).contains("alice"));
        assert_ne!(user_key("alice", ip), user_key("bob", ip));
    }

    proptest! {
        /// More failures or more attempts never turn a refusal into a pass.
        #[test]
        fn monotone(a in 0u64..20, u in 0u64..20, g in 0u64..40, da in 0u64..5, du in 0u64..5, dg in 0u64..5) {
            if decide(&L, a, u, g).is_err() {
                prop_assert!(decide(&L, a + da, u + du, g + dg).is_err());
            }
        }
    }
}
