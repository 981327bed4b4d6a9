//! Where the stages count what they refuse: a rejection counter by reason
//! label and a rate limit for the warnings that go with them. Below every
//! stage of T → H → A → router → destination: `A` and the destinations
//! report to a [`Rejects`]; the `sigma` shell implements it with its
//! metrics (`sigma_rejections_total{reason=…}`), so no stage imports the
//! shell.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counts refusals by reason and rate-limits their warnings.
pub trait Rejects: Send + Sync {
    /// Counts one rejection, labelled `reason` (`login_failed`, …).
    fn reject(&self, reason: &'static str);
    /// True if a warning may be logged now (a few a second at most).
    fn may_log(&self) -> bool;
    /// Counts one event that is not a refusal (`login_ok`); by default
    /// not counted.
    fn count(&self, _event: &'static str) {}
}

/// A [`Rejects`] that keeps the counts in memory and always allows a
/// warning (tests, and stages used without the shell's metrics).
#[derive(Debug, Default)]
pub struct RejectCounts {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl RejectCounts {
    /// The counts so far, by reason.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        match self.counts.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Rejects for RejectCounts {
    fn reject(&self, reason: &'static str) {
        let mut m = match self.counts.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let n = m.entry(reason).or_insert(0);
        *n = n.saturating_add(1);
    }

    fn may_log(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let c = RejectCounts::default();
        c.reject("a");
        c.reject("a");
        c.reject("b");
        assert_eq!(c.counts().get("a"), Some(&2));
        assert_eq!(c.counts().get("b"), Some(&1));
        assert!(c.may_log());
    }
}
