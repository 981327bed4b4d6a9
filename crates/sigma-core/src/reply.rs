//! The reply rule and its one policy for what it drops (seed `000`).
//!
//! ```text
//!  destination ──Tagged{identity, reply}──▶ [ reply rule ] ──▶ H ──▶ client
//!                                                │ not A's identity
//!                                                ▼
//!                                  dropped: counted once, logged (rate-limited)
//! ```
//!
//! The seed: "That same authentication header must be present on
//! replies; otherwise nothing will be sent." [`check_reply`] is the rule;
//! [`enforce`] applies it with the one policy every stage shares: a reply
//! that fails is dropped and reported to a [`ReplyAudit`] (sigma's
//! metrics: `sigma_identity_mismatch_total` and a rate-limited warning),
//! whether it was an HTTP response, a WebSocket message, a push, an
//! upgrade or a world's reply. What to send instead (a 502, nothing) is
//! the caller's choice; whether to count is not.

use std::fmt;
use std::sync::Arc;

use crate::identity::{IdentityMismatch, Principal, Tagged};

/// The reply rule: `reply` may be sent only if it carries exactly the
/// identity `A` attached to the message it answers (`null` only for
/// `null`; a world's identity is neither its user's nor another world's).
pub fn check_reply<T>(expected: &Principal, reply: &Tagged<T>) -> Result<(), IdentityMismatch> {
    if same_principal(expected, &reply.identity) {
        Ok(())
    } else {
        Err(IdentityMismatch)
    }
}

/// Whether two tags are the same identity (the comparison of
/// [`check_reply`]): the same `Arc`, or equal ones; `null` only for `null`.
pub fn same_principal(a: &Principal, b: &Principal) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        _ => false,
    }
}

/// What the reply rule dropped (the log line names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// An HTTP response, or a WebSocket message answering the client's.
    Reply,
    /// A message a destination pushed unasked.
    Push,
    /// An upgrade whose upstream did not echo the identity it was sent
    /// (`echo_identity`).
    Upgrade,
    /// A world's reply or push (DESIGN §5).
    WorldReply,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reply => "reply dropped",
            Self::Push => "push dropped",
            Self::Upgrade => "upgrade refused",
            Self::WorldReply => "world reply dropped",
        })
    }
}

/// Where the reply rule reports what it dropped: one count per drop, and
/// a log line when the log rate allows. sigma's metrics implement it.
pub trait ReplyAudit: Send + Sync {
    /// One reply (`what`) to `whom` (a peer address, a socket) was dropped.
    fn mismatch(&self, what: Dropped, whom: &dyn fmt::Display);
}

/// The reply rule with its policy: `reply` if it carries `expected`;
/// otherwise `None`, after reporting it to `audit`.
pub fn enforce<T>(
    expected: &Principal,
    reply: Tagged<T>,
    audit: &dyn ReplyAudit,
    what: Dropped,
    whom: &dyn fmt::Display,
) -> Option<Tagged<T>> {
    match check_reply(expected, &reply) {
        Ok(()) => Some(reply),
        Err(IdentityMismatch) => {
            audit.mismatch(what, whom);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::identity::{Identity, Provider};

    fn alice() -> Principal {
        Some(Arc::new(Identity {
            user: "alice".into(),
            provider: Provider::Password,
            world: None,
            session: None,
            groups: Vec::new(),
        }))
    }

    fn in_world(w: &str) -> Principal {
        Some(Arc::new(Identity {
            world: Some(w.into()),
            user: "alice".into(),
            provider: Provider::Password,
            session: None,
            groups: Vec::new(),
        }))
    }

    #[test]
    fn reply_rule() {
        let alice = alice();
        assert!(check_reply(&None, &Tagged::new(None, ())).is_ok());
        assert_eq!(
            check_reply(&None, &Tagged::new(alice.clone(), ())),
            Err(IdentityMismatch)
        );
        assert!(check_reply(&alice, &Tagged::new(alice.clone(), ())).is_ok());
        // Equal but distinct allocations are the same identity.
        assert!(check_reply(&alice, &Tagged::new(self::alice(), ())).is_ok());
        assert_eq!(
            check_reply(&alice, &Tagged::new(None, ())),
            Err(IdentityMismatch)
        );
        // A world's identity is not its user's, nor another world's.
        let w1 = in_world("W1");
        assert!(check_reply(&w1, &Tagged::new(in_world("W1"), ())).is_ok());
        assert!(check_reply(&w1, &Tagged::new(in_world("W2"), ())).is_err());
        assert!(check_reply(&w1, &Tagged::new(alice.clone(), ())).is_err());
        assert!(check_reply(&alice, &Tagged::new(w1, ())).is_err());
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl ReplyAudit for Log {
        fn mismatch(&self, what: Dropped, whom: &dyn fmt::Display) {
            if let Ok(mut l) = self.0.lock() {
                l.push(format!("{what} for {whom}"));
            }
        }
    }

    #[test]
    fn enforce_reports_each_drop_once() {
        let log = Log::default();
        let passed = enforce(
            &alice(),
            Tagged::new(alice(), 1),
            &log,
            Dropped::Reply,
            &"p",
        );
        assert_eq!(passed.map(|t| t.msg), Some(1));
        assert!(enforce(&alice(), Tagged::new(None, 2), &log, Dropped::Push, &"p").is_none());
        let w = in_world("W1");
        assert!(enforce(
            &w,
            Tagged::new(alice(), 3),
            &log,
            Dropped::WorldReply,
            &"s1"
        )
        .is_none());
        assert_eq!(
            *log.0.lock().unwrap(),
            vec!["push dropped for p", "world reply dropped for s1"]
        );
    }
}
