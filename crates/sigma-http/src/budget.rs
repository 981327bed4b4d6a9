//! One memory budget for the buffers of every connection (DESIGN §3,
//! `server.memory_budget`).
//!
//! Place in `T → H → A`: shared by all [`crate::ServerConn`]s of a process
//! (and by the shell for request bodies it buffers). A [`MemoryBudget`] is
//! an atomic counter with a cap; each connection holds one [`Account`], its
//! reservation, which it sets to what it buffers (partial heads and the
//! input buffer, WebSocket messages being assembled and events not yet
//! polled, the output queue). Growing an account past the cap fails, and
//! the codec refuses that connection (503, close 1009 or 1008); nobody else
//! is affected. An account gives everything back when it is dropped, so
//! "what is reserved is always released" holds on every path (close, abort,
//! error, drop) by construction.
//!
//! A payload shared by several connections (a fanned-out message) is
//! charged to each of them: the counter is an upper bound on the memory
//! held, never less. Sans-IO: no clock, no socket, no allocation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Default of `server.memory_budget`: 1 GiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;

/// An account holding at most this much may use the whole cap; a larger
/// one only the cap less [`HEADROOM_DIVISOR`]th, so a few connections
/// buffering megabytes cannot starve everybody else's small requests.
pub const SMALL_ACCOUNT: usize = 64 * 1024;

/// The share of the cap (1/8) kept for small accounts.
pub const HEADROOM_DIVISOR: usize = 8;

/// The process-wide budget: bytes reserved by all accounts, and the cap.
#[derive(Debug)]
pub struct MemoryBudget {
    cap: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `cap` bytes, to be shared by all connections.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            used: AtomicUsize::new(0),
        })
    }

    /// The cap in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes reserved now by all accounts.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `n` more bytes for an account that will then hold
    /// `account_total`, unless that would pass its limit.
    fn try_reserve(&self, n: usize, account_total: usize) -> bool {
        let limit = if account_total <= SMALL_ACCOUNT {
            self.cap
        } else {
            self.cap.saturating_sub(self.cap / HEADROOM_DIVISOR)
        };
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    /// Gives `n` bytes back.
    fn release(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// One connection's reservation in a [`MemoryBudget`]; released on drop.
/// The default account draws on no budget (unlimited, nothing counted).
#[derive(Debug, Default)]
pub struct Account {
    budget: Option<Arc<MemoryBudget>>,
    held: usize,
}

impl Account {
    /// An empty reservation in `budget`.
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self {
            budget: Some(budget),
            held: 0,
        }
    }

    /// Bytes this account holds.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Sets the reservation to `n` bytes. Shrinking always succeeds;
    /// growing fails (and keeps the old reservation) when it would take
    /// the budget past its cap.
    #[must_use]
    pub fn try_set(&mut self, n: usize) -> bool {
        let Some(budget) = self.budget.as_ref() else {
            return true;
        };
        if n > self.held {
            if !budget.try_reserve(n - self.held, n) {
                return false;
            }
        } else if n < self.held {
            budget.release(self.held - n);
        }
        self.held = n;
        true
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.as_ref() {
            budget.release(self.held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_budget_and_one_past() {
        let b = MemoryBudget::new(100);
        let mut a = Account::new(Arc::clone(&b));
        let mut c = Account::new(Arc::clone(&b));
        assert!(a.try_set(60));
        assert!(c.try_set(40), "exactly the cap fits");
        assert_eq!(b.used(), 100);
        assert!(!c.try_set(41), "one past the cap is refused");
        assert_eq!(
            (c.held(), b.used()),
            (40, 100),
            "a refusal keeps the old reservation"
        );
        assert!(a.try_set(10));
        assert!(c.try_set(90));
        drop(a);
        assert_eq!(b.used(), 90);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn large_accounts_leave_headroom_for_small_ones() {
        let cap = 1 << 20;
        let b = MemoryBudget::new(cap);
        let mut big = Account::new(Arc::clone(&b));
        let large_limit = cap - cap / HEADROOM_DIVISOR;
        assert!(big.try_set(large_limit));
        assert!(
            !big.try_set(large_limit + 1),
            "past 7/8 for a large account"
        );
        let mut small = Account::new(Arc::clone(&b));
        assert!(small.try_set(SMALL_ACCOUNT), "a small one still fits");
        assert!(!small.try_set(SMALL_ACCOUNT + 1), "not once it is large");
        drop((big, small));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn the_default_account_is_unlimited() {
        let mut a = Account::default();
        assert!(a.try_set(usize::MAX));
    }
}
