//! Login throttling in `A` (DESIGN §4), ahead of the Argon2 queue:
//!
//! ```text
//!  POST /login ──▶ per address ──▶ global failures ──▶ (user, network) failures ──▶ Argon2
//!                  (all attempts)   (one ceiling)       (failures only)
//! ```
//!
//! - **Per client address**, every attempt: an IPv4 address by itself, an
//!   IPv6 address by its /64 (one subscriber's network; a host picks any
//!   address in it). `[auth] login_per_ip_per_minute`.
//! - **Per (user name, client network)**, failures only: the network is the
//!   IPv4 /24 or the IPv6 /64. Guessing `alice`'s password from one network
//!   throttles `alice` there, never `alice` logging in from elsewhere.
//!   `[auth] login_failures_per_user_per_minute`.
//! - **A global ceiling** on failed logins, all clients together: a
//!   distributed guess (many networks) cannot exceed it.
//!   `[auth] login_failures_per_minute`. Over the ceiling nobody is locked
//!   out: a (user name, client network) with no recent failure still gets
//!   one attempt a minute ([`OVER_CEILING_PER_MINUTE`]), so a user logging
//!   in from a network that is not guessing gets in at once, while the
//!   networks that have failed wait (a flood that fills the ceiling cannot
//!   lock `alice` out from her own network).
//!
//! Each limit is a token bucket (GCRA: one deadline per key) holding a
//! burst of its per-minute size. A failure budget is *reserved* when the
//! attempt starts ([`Throttle::begin`]), so a burst of concurrent guesses
//! cannot all pass before the first one fails; a successful attempt gives
//! it back ([`Throttle::succeeded`]), one the Argon2 queue refused gives
//! back its address unit too ([`Throttle::unverified`]: a client retrying
//! a 503 does not spend its budget); a failed attempt, or one whose caller
//! went away, keeps it.
//!
//! Memory is bounded: each map holds at most [`MAX_KEYS`] keys; keys whose
//! bucket has refilled are swept when a map is full (at most once per
//! second). A full address map fails open (an attacker with that many
//! networks already has that many budgets; the global ceiling still
//! holds); a full (user, network) map fails closed (it can only fill with
//! more failures a minute than the global ceiling lets through).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Keys held by each throttle map at most.
pub const MAX_KEYS: usize = 32_768;
/// A full map is swept of refilled keys at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// `Retry-After` when a full (user, network) map refuses.
const FULL_RETRY: Duration = Duration::from_secs(1);
/// Attempts per (user, network) a minute while the global ceiling is spent.
pub const OVER_CEILING_PER_MINUTE: u32 = 1;

/// The address an attempt counts against: IPv4 as is, IPv6 by its /64
/// (IPv4-mapped IPv6 is IPv4).
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(v6_prefix(v6, 64)),
    }
}

/// The network a user's failures count against: the IPv4 /24 or the
/// IPv6 /64.
pub fn net_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(v6_prefix(v6, 64)),
    }
}

/// `v6` with all but its first `bits` bits (at most 128) cleared.
fn v6_prefix(v6: Ipv6Addr, bits: u32) -> Ipv6Addr {
    let mask = u128::MAX
        .checked_shl(128u32.saturating_sub(bits))
        .unwrap_or(0);
    Ipv6Addr::from(u128::from(v6) & mask)
}

/// The per-minute sizes of the three limits (each at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attempts per client address (IPv6 /64).
    pub per_addr: u32,
    /// Failures per (user name, client /24 or /64).
    pub failures_per_user: u32,
    /// Failures, all clients together.
    pub failures: u32,
}

/// An attempt refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// The limit's metrics label: `login_throttled` (address),
    /// `login_failures_user`, `login_failures_global`.
    pub reason: &'static str,
    /// When a retry may pass (for `Retry-After`).
    pub wait: Duration,
}

impl Throttled {
    /// `wait` in whole seconds, rounded up, at least 1 (`Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        let up = u64::from(self.wait.subsec_nanos() > 0);
        self.wait.as_secs().saturating_add(up).max(1)
    }
}

/// A login attempt the throttle let through: it holds one unit of the
/// user's and the global failure budgets until [`Throttle::succeeded`] or
/// [`Throttle::unverified`]. Drop it after a failure (the budget stays
/// spent).
#[derive(Debug)]
#[must_use = "settle the attempt on success, drop it on failure"]
pub struct Attempt {
    addr: IpAddr,
    user: (String, IpAddr),
    /// It holds a unit of the global ceiling (false: let through over it).
    global: bool,
}

/// The three login limits of `A`.
#[derive(Debug)]
pub struct Throttle {
    per_addr: Buckets<IpAddr>,
    failures_per_user: Buckets<(String, IpAddr)>,
    failures: Buckets<()>,
    /// While `failures` is empty: one attempt a minute per (user, network).
    over_ceiling: Buckets<(String, IpAddr)>,
    /// Wrong API keys per client network (/24 or /64).
    key_failures: Buckets<IpAddr>,
}

/// An API-key request the throttle let through: one unit of its network's
/// wrong-key budget, given back by [`Throttle::key_ok`] when the key was
/// right (dropped after a wrong one: the unit stays spent).
#[derive(Debug)]
#[must_use = "give it back when the key was right"]
pub struct KeyAttempt(IpAddr);

impl Throttle {
    /// Throttles with `limits` (per minute, bursts of the same size).
    pub fn new(limits: Limits) -> Self {
        Self {
            per_addr: Buckets::new(limits.per_addr, MAX_KEYS),
            failures_per_user: Buckets::new(limits.failures_per_user, MAX_KEYS),
            failures: Buckets::new(limits.failures, 1),
            over_ceiling: Buckets::new(OVER_CEILING_PER_MINUTE, MAX_KEYS),
            key_failures: Buckets::new(limits.failures_per_user, MAX_KEYS),
        }
    }

    /// An API key from `ip`: spends a unit of its network's wrong-key
    /// budget (`login_failures_per_user_per_minute`), or refuses with
    /// `api_key_throttled`.
    pub fn begin_key(&self, ip: IpAddr) -> Result<KeyAttempt, Throttled> {
        let key = net_key(ip);
        match self.key_failures.take(key, Instant::now()) {
            Take::Taken | Take::Full => Ok(KeyAttempt(key)),
            Take::Wait(wait) => Err(Throttled {
                reason: "api_key_throttled",
                wait,
            }),
        }
    }

    /// The key was right: its unit comes back.
    pub fn key_ok(&self, attempt: KeyAttempt) {
        self.key_failures.give_back(&attempt.0, Instant::now());
    }

    /// One attempt from `ip` at the address limit only (an OAuth callback,
    /// which costs a request to the provider but guesses no password).
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), Throttled> {
        self.check_addr_at(ip, Instant::now())
    }

    /// A password attempt from `ip` for `user`: spends the address budget
    /// and reserves the failure budgets, or says which limit refused.
    pub fn begin(&self, ip: IpAddr, user: &str) -> Result<Attempt, Throttled> {
        self.begin_at(ip, user, Instant::now())
    }

    /// `attempt` had the right password: its failure units come back.
    pub fn succeeded(&self, attempt: Attempt) {
        self.succeeded_at(attempt, Instant::now());
    }

    /// `attempt` was never verified (the Argon2 queue was full): all its
    /// units come back, the address's too.
    pub fn unverified(&self, attempt: Attempt) {
        let now = Instant::now();
        self.per_addr.give_back(&addr_key(attempt.addr), now);
        self.succeeded_at(attempt, now);
    }

    fn check_addr_at(&self, ip: IpAddr, now: Instant) -> Result<(), Throttled> {
        match self.per_addr.take(addr_key(ip), now) {
            // Fails open: see the module doc.
            Take::Taken | Take::Full => Ok(()),
            Take::Wait(wait) => Err(Throttled {
                reason: "login_throttled",
                wait,
            }),
        }
    }

    fn begin_at(&self, ip: IpAddr, user: &str, now: Instant) -> Result<Attempt, Throttled> {
        self.check_addr_at(ip, now)?;
        let key = (user_key(user), net_key(ip));
        let global_wait = match self.failures.take((), now) {
            Take::Taken => None,
            Take::Wait(wait) => Some(wait),
            // One key only: cannot be full, but never fails open.
            Take::Full => Some(FULL_RETRY),
        };
        if let Some(global_wait) = global_wait {
            // Over the ceiling: a (user, network) with no recent failure
            // gets one attempt a minute, so the guessers stop and nobody
            // is locked out.
            if !self.failures_per_user.is_rested(&key, now) {
                return Err(Throttled {
                    reason: "login_failures_global",
                    wait: global_wait,
                });
            }
            match self.over_ceiling.take(key.clone(), now) {
                Take::Taken => {}
                Take::Wait(wait) => {
                    return Err(Throttled {
                        reason: "login_failures_global",
                        wait: wait.max(global_wait),
                    })
                }
                Take::Full => {
                    return Err(Throttled {
                        reason: "login_failures_global",
                        wait: global_wait,
                    })
                }
            }
        }
        let counted_global = global_wait.is_none();
        let wait = match self.failures_per_user.take(key.clone(), now) {
            Take::Taken => {
                return Ok(Attempt {
                    addr: ip,
                    user: key,
                    global: counted_global,
                })
            }
            Take::Wait(wait) => wait,
            Take::Full => FULL_RETRY,
        };
        if counted_global {
            self.failures.give_back(&(), now);
        }
        Err(Throttled {
            reason: "login_failures_user",
            wait,
        })
    }

    fn succeeded_at(&self, attempt: Attempt, now: Instant) {
        self.failures_per_user.give_back(&attempt.user, now);
        if attempt.global {
            self.failures.give_back(&(), now);
        }
    }
}

/// The bucket key of a user name: case-folded, so `Admin` and `admin`
/// share it; every name that cannot exist shares one key (such names never
/// log in, and the key stays small).
fn user_key(user: &str) -> String {
    if sigma_store::valid_user_name(user) {
        user.to_ascii_lowercase()
    } else {
        String::new()
    }
}

/// What [`Buckets::take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// One unit taken.
    Taken,
    /// The bucket is empty: the next unit comes after this long.
    Wait(Duration),
    /// A new key, and the map is full.
    Full,
}

/// Keyed token buckets of `burst` units refilling at `burst` a minute,
/// as GCRA: each key holds its theoretical arrival time (`tat`); a key
/// whose `tat` has passed is a full bucket and need not be stored.
#[derive(Debug)]
struct Buckets<K> {
    /// Time to refill one unit.
    interval: Duration,
    /// How far `tat` may run ahead of now: `interval × (burst − 1)`.
    tolerance: Duration,
    cap: usize,
    state: Mutex<State<K>>,
}

#[derive(Debug)]
struct State<K> {
    tat: HashMap<K, Instant>,
    last_sweep: Option<Instant>,
    /// The latest `now` seen: callers read the clock before they take the
    /// lock, so two racing callers may arrive out of order; an earlier
    /// `now` after a later one would make a full burst look exceeded.
    latest: Option<Instant>,
}

impl<K: Eq + Hash> Buckets<K> {
    fn new(per_minute: u32, cap: usize) -> Self {
        let burst = per_minute.max(1);
        let interval = Duration::from_secs(60)
            .checked_div(burst)
            .unwrap_or(Duration::from_secs(60));
        Self {
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
            cap,
            state: Mutex::new(State {
                tat: HashMap::new(),
                last_sweep: None,
                latest: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn take(&self, key: K, now: Instant) -> Take {
        let mut s = self.lock();
        let now = s.monotonic(now);
        let tat = match s.tat.get(&key) {
            Some(&t) => t.max(now),
            None => {
                if s.tat.len() >= self.cap && !s.sweep(now) {
                    return Take::Full;
                }
                now
            }
        };
        let Some(limit) = now.checked_add(self.tolerance) else {
            return Take::Full;
        };
        if tat > limit {
            return Take::Wait(tat.saturating_duration_since(limit));
        }
        match tat.checked_add(self.interval) {
            Some(next) => {
                s.tat.insert(key, next);
                Take::Taken
            }
            None => Take::Full,
        }
    }

    /// True when `key`'s bucket is full (no unit spent recently).
    fn is_rested(&self, key: &K, now: Instant) -> bool {
        self.lock().tat.get(key).is_none_or(|&tat| tat <= now)
    }

    fn give_back(&self, key: &K, now: Instant) {
        let mut s = self.lock();
        let now = s.monotonic(now);
        let Some(tat) = s.tat.get_mut(key) else {
            return;
        };
        match tat.checked_sub(self.interval) {
            Some(t) if t > now => *tat = t,
            _ => {
                s.tat.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().tat.len()
    }
}

impl<K: Eq + Hash> State<K> {
    /// `now`, never earlier than a `now` already used.
    fn monotonic(&mut self, now: Instant) -> Instant {
        let now = self.latest.map_or(now, |l| l.max(now));
        self.latest = Some(now);
        now
    }

    /// Drops the keys whose bucket is full again (if the last sweep is
    /// old enough); true if that made room.
    fn sweep(&mut self, now: Instant) -> bool {
        let due = self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
        if due {
            self.last_sweep = Some(now);
            let before = self.tat.len();
            self.tat.retain(|_, tat| *tat > now);
            return self.tat.len() < before;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(per_addr: u32, failures_per_user: u32, failures: u32) -> Limits {
        Limits {
            per_addr,
            failures_per_user,
            failures,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_group_ipv6_by_64_and_ipv4_by_24_for_users() {
        assert_eq!(addr_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(net_key(ip("10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(net_key(ip("10.1.2.255")), ip("10.1.2.0"));
        assert_ne!(net_key(ip("10.1.3.1")), ip("10.1.2.0"));
        let a = ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(addr_key(a), ip("2001:db8:1:2::"));
        assert_eq!(net_key(a), ip("2001:db8:1:2::"));
        assert_eq!(addr_key(ip("2001:db8:1:2::1")), addr_key(a));
        assert_ne!(addr_key(ip("2001:db8:1:3::1")), addr_key(a));
        assert_eq!(addr_key(ip("::1")), ip("::"));
        // IPv4-mapped IPv6 is the IPv4 address.
        assert_eq!(addr_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(net_key(ip("::ffff:10.1.2.3")), ip("10.1.2.0"));
    }

    proptest! {
        #[test]
        fn every_ipv6_address_maps_to_its_64(bits in any::<u128>(), low in any::<u64>()) {
            let v6 = Ipv6Addr::from(bits);
            prop_assume!(v6.to_ipv4_mapped().is_none());
            let prefix = Ipv6Addr::from(bits & !u128::from(u64::MAX));
            prop_assert_eq!(addr_key(IpAddr::V6(v6)), IpAddr::V6(prefix));
            prop_assert_eq!(net_key(IpAddr::V6(v6)), IpAddr::V6(prefix));
            // Any other address of the same /64 shares the key.
            let sibling = Ipv6Addr::from((bits & !u128::from(u64::MAX)) | u128::from(low));
            prop_assert_eq!(addr_key(IpAddr::V6(sibling)), addr_key(IpAddr::V6(v6)));
        }

        #[test]
        fn every_ipv4_address_maps_to_itself_and_its_24(bits in any::<u32>()) {
            let v4 = IpAddr::V4(Ipv4Addr::from(bits));
            prop_assert_eq!(addr_key(v4), v4);
            prop_assert_eq!(net_key(v4), IpAddr::V4(Ipv4Addr::from(bits & 0xffff_ff00)));
        }
    }

    #[test]
    fn per_address_counts_every_attempt() {
        let t = Throttle::new(limits(3, 100, 100));
        let now = Instant::now();
        let a = ip("10.0.0.1");
        for user in ["a", "b", "c"] {
            let at = t.begin_at(a, user, now).unwrap();
            t.succeeded_at(at, now);
        }
        let e = t.begin_at(a, "d", now).unwrap_err();
        assert_eq!(e.reason, "login_throttled");
        assert_eq!(e.wait, Duration::from_secs(20));
        assert!(t.check_addr_at(a, now).is_err());
        assert!(t.begin_at(ip("10.0.0.2"), "d", now).is_ok());
        // One unit back after a third of a minute.
        assert!(t.check_addr_at(a, now + Duration::from_secs(20)).is_ok());
    }

    #[test]
    fn failures_of_a_user_stay_in_their_network() {
        let t = Throttle::new(limits(100, 2, 100));
        let now = Instant::now();
        for _ in 0..2 {
            drop(t.begin_at(ip("10.0.0.2"), "alice", now).unwrap());
        }
        let e = t.begin_at(ip("10.0.0.3"), "Alice", now).unwrap_err();
        assert_eq!(e.reason, "login_failures_user");
        assert!(e.wait > Duration::ZERO && e.wait <= Duration::from_secs(30));
        // Another network, another user: not affected.
        assert!(t.begin_at(ip("10.0.1.2"), "alice", now).is_ok());
        assert!(t.begin_at(ip("10.0.0.2"), "bob", now).is_ok());
        // The refused attempt gave its global unit back.
        assert_eq!(t.failures.len(), 1);
    }

    #[test]
    fn successes_give_the_failure_budget_back() {
        let t = Throttle::new(limits(100, 2, 100));
        let now = Instant::now();
        for _ in 0..10 {
            let at = t.begin_at(ip("10.0.0.2"), "alice", now).unwrap();
            t.succeeded_at(at, now);
        }
        assert_eq!(t.failures_per_user.len(), 0);
        assert_eq!(t.failures.len(), 0);
    }

    #[test]
    fn the_global_ceiling_counts_failures_of_every_network() {
        let t = Throttle::new(limits(100, 100, 3));
        let now = Instant::now();
        for i in 1..=3 {
            drop(
                t.begin_at(ip(&format!("10.0.{i}.1")), &format!("u{i}"), now)
                    .unwrap(),
            );
        }
        // Over the ceiling, a (user, network) gets one attempt a minute ...
        drop(t.begin_at(ip("10.9.9.9"), "other", now).unwrap());
        let e = t.begin_at(ip("10.9.9.9"), "other", now).unwrap_err();
        assert_eq!(e.reason, "login_failures_global");
        assert_eq!(e.wait, Duration::from_secs(20));
        // ... a network that has failed for that user gets none ...
        let e = t.begin_at(ip("10.0.1.1"), "u1", now).unwrap_err();
        assert_eq!(e.reason, "login_failures_global");
        // ... while a user on a network that is not guessing gets in.
        let alice = t.begin_at(ip("10.7.7.7"), "alice", now).unwrap();
        t.succeeded_at(alice, now);
        // Once the ceiling refills, the normal budgets apply again.
        let later = now + Duration::from_secs(20);
        assert!(t.begin_at(ip("10.9.9.9"), "other", later).is_ok());
    }

    #[test]
    fn a_full_burst_passes_whatever_order_the_clock_readings_arrive_in() {
        // Racing callers read the clock before the lock: the one with the
        // earliest reading may take it last. A burst of 5 must still pass.
        let b = Buckets::new(5, 1);
        let now = Instant::now();
        for i in (0..5u64).rev() {
            assert_eq!(b.take((), now + Duration::from_millis(i)), Take::Taken);
        }
        assert!(matches!(b.take((), now), Take::Wait(_)));
    }

    #[test]
    fn concurrent_attempts_reserve_before_any_fails() {
        // Three attempts in flight at once: the third is refused at once,
        // not after the first two fail.
        let t = Throttle::new(limits(100, 2, 100));
        let now = Instant::now();
        let a = t.begin_at(ip("10.0.0.2"), "alice", now).unwrap();
        let b = t.begin_at(ip("10.0.0.2"), "alice", now).unwrap();
        assert!(t.begin_at(ip("10.0.0.2"), "alice", now).is_err());
        t.succeeded_at(a, now);
        drop(b);
        assert!(t.begin_at(ip("10.0.0.2"), "alice", now).is_ok());
    }

    #[test]
    fn an_unverified_attempt_costs_nothing() {
        let t = Throttle::new(limits(1, 1, 1));
        for _ in 0..5 {
            let at = t.begin(ip("10.0.0.2"), "alice").unwrap();
            t.unverified(at);
        }
        assert_eq!(t.per_addr.len(), 0);
        drop(t.begin(ip("10.0.0.2"), "alice").unwrap());
        assert!(t.begin(ip("10.0.0.2"), "alice").is_err());
    }

    #[test]
    fn user_keys_are_small() {
        assert_eq!(user_key("Alice"), "alice");
        assert_eq!(user_key(&"x".repeat(10_000)), "");
        assert_eq!(user_key("bad name"), "");
    }

    #[test]
    fn maps_are_bounded() {
        let b: Buckets<u32> = Buckets::new(10, 4);
        let now = Instant::now();
        for k in 0..4 {
            assert_eq!(b.take(k, now), Take::Taken);
        }
        assert_eq!(b.take(99, now), Take::Full);
        assert_eq!(b.len(), 4);
        // Known keys still work when the map is full.
        assert_eq!(b.take(0, now), Take::Taken);
        // Once their buckets refill, the keys are swept for new ones.
        let later = now + Duration::from_secs(61);
        assert_eq!(b.take(99, later), Take::Taken);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        let t = Throttle::new(limits(20, 10, 1_000_000));
        let now = Instant::now();
        for i in 0..(MAX_KEYS as u32 + 1000) {
            let v6 = IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64));
            // The address map fails open; the user map fills and refuses.
            let _ = t.begin_at(v6, &format!("u{i}"), now);
        }
        assert!(t.per_addr.len() <= MAX_KEYS);
        assert!(t.failures_per_user.len() <= MAX_KEYS);
        let e = t.begin_at(ip("10.0.0.1"), "zed", now).unwrap_err();
        assert_eq!(e.reason, "login_failures_user");
    }
}
