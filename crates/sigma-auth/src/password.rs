//! Password hashing and verification for `A`'s password login (DESIGN §4).
//!
//! ```text
//!  POST /login ──▶ A ──▶ Verifier::verify ──spawn_blocking──▶ Argon2id
//!  sigma user add/passwd ──▶ hash ──▶ Store (PHC string)
//! ```
//!
//! Passwords are stored as Argon2id PHC strings (`$argon2id$v=19$m=…`)
//! with a fresh 16-byte random salt each. The parameters are the argon2
//! crate's defaults, which are OWASP's recommended minimum for Argon2id:
//! m = 19 MiB, t = 2, p = 1 (about 20–50 ms per hash on one core in a
//! release build). Verification reads the parameters from the stored PHC
//! string, so raising them later keeps old hashes valid.
//!
//! Invariants:
//! - Verification never runs on the async executor: [`Verifier`] runs it
//!   with `spawn_blocking` behind a semaphore of `max_concurrent` permits,
//!   so a login flood costs at most that many blocking threads and cannot
//!   stall other connections. A permit is held until the hash finishes,
//!   even if the caller gave up waiting.
//! - The wait is bounded too: a verification needs a [`Ticket`] first,
//!   and at most `max_concurrent + queue` are out at once
//!   ([`Verifier::admit`]). Beyond that the caller answers at once (503),
//!   so a flood delays a good login by at most the queue, never by the
//!   flood. A ticket, like a permit, lasts until its hash finishes.
//! - Unknown users cost the same as wrong passwords: a missing (or
//!   unparseable) hash is replaced by a fixed dummy hash with the same
//!   parameters, and the result is then discarded (no user enumeration).
//! - The comparison is constant time (argon2's `verify_password`).
//! - Passwords are 1 to [`MAX_PASSWORD_LEN`] bytes; longer ones are
//!   refused before any hashing (a DoS guard).
//! - No `Debug` or `Display` here shows a password or a hash.
//!
//! Throttling login attempts is not done here but in `A`.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, PasswordHash};
use tokio::sync::Semaphore;

/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;
/// A sensible `max_concurrent` for [`Verifier::new`]: with 19 MiB per
/// hash this bounds verification memory to about 80 MiB.
pub const DEFAULT_MAX_CONCURRENT_VERIFY: usize = 4;
/// A sensible `queue` for [`Verifier::new`] (`[auth] password_queue`).
pub const DEFAULT_PASSWORD_QUEUE: usize = 64;

/// Why a password could not be hashed. Never contains the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    /// The password is empty.
    #[error("the password is empty")]
    Empty,
    /// The password is longer than [`MAX_PASSWORD_LEN`].
    #[error("the password is {len} bytes long; at most {MAX_PASSWORD_LEN} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Argon2 failed (for example the random salt could not be drawn).
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
    /// A hash handed in (through the admin socket) is not an Argon2id
    /// PHC string.
    #[error("not an Argon2id password hash")]
    NotArgon2id,
}

/// Checks the length rule: 1 to [`MAX_PASSWORD_LEN`] bytes.
pub fn check_length(password: &str) -> Result<(), PasswordError> {
    match password.len() {
        0 => Err(PasswordError::Empty),
        len if len > MAX_PASSWORD_LEN => Err(PasswordError::TooLong { len }),
        _ => Ok(()),
    }
}

/// The hasher every new hash uses: Argon2id v19 with default parameters.
fn hasher() -> Argon2<'static> {
    Argon2::default()
}

/// Hashes `password` with Argon2id and a random salt; returns the PHC
/// string. CPU-bound (tens of milliseconds): call it off the executor.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    check_length(password)?;
    hasher()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(PasswordError::Hash)
}

/// Checks that `phc` is an Argon2id PHC string, as [`hash`] makes (what
/// `sigma user` sends a running server instead of the password).
pub fn check_phc(phc: &str) -> Result<(), PasswordError> {
    match PasswordHash::new(phc) {
        Ok(h) if h.algorithm == argon2::Algorithm::Argon2id.ident() && h.hash.is_some() => Ok(()),
        _ => Err(PasswordError::NotArgon2id),
    }
}

/// The hash unknown users are checked against: same algorithm and
/// parameters as [`hash`], fixed salt, computed once per process.
fn dummy_hash() -> Option<&'static PasswordHash> {
    static DUMMY: OnceLock<Option<PasswordHash>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            hasher()
                .hash_password_with_salt(b"sigma: no such user", b"sigma-dummy-salt")
                .ok()
        })
        .as_ref()
}

/// Verifies synchronously. Always runs exactly one Argon2 computation with
/// the parameters of a real hash, whatever `phc` is.
fn verify_blocking(phc: Option<&str>, password: &[u8]) -> bool {
    // First, so that computing the dummy (once) costs known and unknown
    // users alike.
    let dummy = dummy_hash();
    let stored = phc.and_then(|p| PasswordHash::new(p).ok());
    match (&stored, dummy) {
        (Some(h), _) => hasher().verify_password(password, h).is_ok(),
        (None, Some(d)) => {
            let _ = hasher().verify_password(password, d);
            false
        }
        (None, None) => false,
    }
}

/// Verifies passwords off the async executor, at most `max_concurrent` at
/// a time and `queue` waiting. Cheap to share (`Arc<Verifier>`).
pub struct Verifier {
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    /// Tickets out (running or waiting), at most `max_tickets`.
    tickets: Arc<AtomicUsize>,
    max_tickets: usize,
    #[cfg(test)]
    probe: Option<Arc<tests::Probe>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("max_concurrent", &self.max_concurrent)
            .field("available", &self.permits.available_permits())
            .field("tickets", &self.tickets.load(Ordering::Relaxed))
            .field("max_tickets", &self.max_tickets)
            .finish()
    }
}

/// A place in the verification queue ([`Verifier::admit`]): held until
/// the verification it admits has finished, or dropped unused.
#[derive(Debug)]
#[must_use = "a ticket admits one verification"]
pub struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Verifier {
    /// A verifier running at most `max_concurrent` (at least 1)
    /// verifications at once, with at most `queue` more waiting.
    pub fn new(max_concurrent: usize, queue: usize) -> Self {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            tickets: Arc::new(AtomicUsize::new(0)),
            max_tickets: max_concurrent.saturating_add(queue),
            #[cfg(test)]
            probe: None,
        }
    }

    /// A place for one verification, or `None` at once when
    /// `max_concurrent` are running and `queue` are waiting.
    pub fn admit(&self) -> Option<Ticket> {
        self.tickets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_tickets).then(|| n.saturating_add(1))
            })
            .ok()
            .map(|_| Ticket(Arc::clone(&self.tickets)))
    }

    /// True if `password` matches the PHC string `phc`. `phc = None` (no
    /// such user) is always false, after the same work as a wrong
    /// password. A password of 0 or more than [`MAX_PASSWORD_LEN`] bytes
    /// is false at once, without hashing. `ticket` is held until the
    /// hash finishes, even if the caller stops waiting.
    pub async fn verify(&self, ticket: Ticket, phc: Option<String>, password: String) -> bool {
        if check_length(&password).is_err() {
            return false;
        }
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            // The semaphore is never closed.
            return false;
        };
        #[cfg(test)]
        let probe = self.probe.clone();
        let task = tokio::task::spawn_blocking(move || {
            let ok = {
                #[cfg(test)]
                let _in_flight = probe.as_deref().map(tests::Probe::enter);
                verify_blocking(phc.as_deref(), password.as_bytes())
            };
            drop(permit);
            drop(ticket);
            ok
        });
        task.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn check_phc_takes_argon2id_hashes_only() {
        let phc = hash("correct horse").expect("hash");
        assert!(check_phc(&phc).is_ok());
        for bad in [
            "",
            "admin",
            "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            &phc[..phc.len() - 3].replace("argon2id", "scrypt"),
        ] {
            assert!(
                matches!(check_phc(bad), Err(PasswordError::NotArgon2id)),
                "{bad:?}"
            );
        }
    }

    /// Counts verifications in flight inside the blocking section.
    #[derive(Default)]
    pub(super) struct Probe {
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        entered: AtomicUsize,
        /// If set, every verification waits here once it is in flight.
        barrier: Option<Barrier>,
    }

    pub(super) struct ProbeGuard<'a>(&'a Probe);

    impl Probe {
        pub(super) fn enter(&self) -> ProbeGuard<'_> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            self.entered.fetch_add(1, Ordering::SeqCst);
            if let Some(b) = &self.barrier {
                b.wait();
            }
            ProbeGuard(self)
        }
    }

    impl Drop for ProbeGuard<'_> {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// One verification with a fresh ticket.
    async fn check(v: &Verifier, phc: Option<String>, password: String) -> bool {
        let ticket = v.admit().expect("a ticket");
        v.verify(ticket, phc, password).await
    }

    fn probed(max: usize, probe: Probe) -> (Arc<Verifier>, Arc<Probe>) {
        let probe = Arc::new(probe);
        let mut v = Verifier::new(max, DEFAULT_PASSWORD_QUEUE);
        v.probe = Some(Arc::clone(&probe));
        (Arc::new(v), probe)
    }

    #[test]
    fn hash_is_argon2id_phc_with_default_params() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let h2 = hash("correct horse").unwrap();
        assert_ne!(h, h2, "salts must differ");
    }

    #[test]
    fn hash_length_rules() {
        assert!(matches!(hash(""), Err(PasswordError::Empty)));
        assert!(hash(&"a".repeat(MAX_PASSWORD_LEN)).is_ok());
        let e = hash(&"a".repeat(MAX_PASSWORD_LEN + 1)).unwrap_err();
        assert!(matches!(e, PasswordError::TooLong { len: 1025 }));
        assert!(!e.to_string().contains("aaaa"), "{e}");
    }

    #[tokio::test]
    async fn verify_right_wrong_unknown() {
        let v = Verifier::new(2, DEFAULT_PASSWORD_QUEUE);
        let h = hash("s3cret pass").unwrap();
        assert!(check(&v, Some(h.clone()), "s3cret pass".into()).await);
        assert!(!check(&v, Some(h.clone()), "s3cret pasS".into()).await);
        assert!(!check(&v, Some(h.clone()), String::new()).await);
        assert!(!check(&v, None, "s3cret pass".into()).await);
        assert!(!check(&v, Some("not a phc".into()), "x".into()).await);
        let long = "a".repeat(MAX_PASSWORD_LEN + 1);
        assert!(!check(&v, Some(h), long).await);
    }

    #[tokio::test]
    async fn unknown_user_does_the_same_work() {
        // Not a timing test: the dummy hash has exactly the parameters of
        // a real one, so the same Argon2 computation runs.
        let real = PasswordHash::new(&hash("pw").unwrap())
            .unwrap()
            .params
            .to_string();
        let dummy = dummy_hash().unwrap().params.to_string();
        assert_eq!(real, dummy);
        let (v, probe) = probed(1, Probe::default());
        assert!(!check(&v, None, "pw".into()).await);
        assert_eq!(probe.entered.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrency_bound_of_one_is_honoured() {
        let (v, probe) = probed(1, Probe::default());
        let h = hash("pw").unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let v = Arc::clone(&v);
                let phc = (i % 2 == 0).then(|| h.clone());
                tokio::spawn(async move { check(&v, phc, "pw".into()).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert_eq!(results, vec![true, false, true, false]);
        assert_eq!(probe.entered.load(Ordering::SeqCst), 4);
        assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 1);
        assert_eq!(probe.in_flight.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrency_up_to_the_bound_runs_in_parallel() {
        // The probe can see overlap: two verifications must both be in
        // flight to pass the barrier, so with a bound of 2 they are.
        let (v, probe) = probed(
            2,
            Probe {
                barrier: Some(Barrier::new(2)),
                ..Probe::default()
            },
        );
        let a = tokio::spawn({
            let v = Arc::clone(&v);
            async move { check(&v, None, "x".into()).await }
        });
        let b = tokio::spawn({
            let v = Arc::clone(&v);
            async move { check(&v, None, "y".into()).await }
        });
        assert!(!a.await.unwrap());
        assert!(!b.await.unwrap());
        assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn permit_is_released_when_the_caller_gives_up() {
        let v = Arc::new(Verifier::new(1, DEFAULT_PASSWORD_QUEUE));
        let h = hash("pw").unwrap();
        let fut = {
            let v = Arc::clone(&v);
            let h = h.clone();
            tokio::spawn(async move { check(&v, Some(h), "pw".into()).await })
        };
        fut.abort();
        let _ = fut.await;
        // Whether or not the aborted one ran, the permit comes back.
        assert!(check(&v, Some(h), "pw".into()).await);
        assert_eq!(v.permits.available_permits(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_is_bounded_and_refuses_at_once() {
        // One may run and two wait: a fourth ticket is refused at once.
        let v = Arc::new(Verifier::new(1, 2));
        let held: Vec<Ticket> = (0..3).map(|_| v.admit().unwrap()).collect();
        assert!(v.admit().is_none(), "{v:?}");
        drop(held);
        assert!(v.admit().is_some());
        // Tickets in use: a verification keeps its ticket until the hash
        // is done, and gives it back after.
        let h = hash("pw").unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let t = v.admit().unwrap();
                let v = Arc::clone(&v);
                let h = h.clone();
                tokio::spawn(async move { v.verify(t, Some(h), "pw".into()).await })
            })
            .collect();
        assert!(v.admit().is_none());
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(v.tickets.load(Ordering::SeqCst), 0);
        // A ticket of a verification refused by the length rule comes back.
        let t = v.admit().unwrap();
        assert!(!v.verify(t, Some(h), String::new()).await);
        assert_eq!(v.tickets.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn debug_shows_no_secrets() {
        let v = Verifier::new(0, DEFAULT_PASSWORD_QUEUE);
        let d = format!("{v:?}");
        assert!(d.contains("max_concurrent: 1"), "{d}");
        let e = PasswordError::TooLong { len: 2000 };
        assert!(!format!("{e:?}").contains("aaa"));
    }
}
