//! Per-user world budgets and the server-wide set of active world keys
//! (DESIGN §5, step 3: "per-user world limit and fork rate (budgets and the
//! set of used cookies are kept per user, so one user cannot exhaust them
//! for others)"; "no active world with that key anywhere on the server").
//!
//! Where it sits: inside `&world`, after `A` (every caller has a user). The
//! session state machine ([`super::session`]) asks a [`super::session::Budget`]
//! for room and tokens; the service ([`super::service`]) builds that from
//! the pieces here. Sans-IO: time comes in as `now_ms`, nothing here reads
//! a clock, owns a socket or a key.
//!
//! - [`UserBudget`]: one user's active-world count, fork token bucket and
//!   the nonces of the fork cookies it used ([`UsedNonces`], with a
//!   per-user bound) — over all the user's login sessions, bearer tokens
//!   and session sockets.
//! - [`Users`]: the budgets of the users tracked, bounded
//!   ([`Users::join`] refuses a new user at the bound). An entry is dropped
//!   only when it is the same as a fresh one would be: no socket open and
//!   its bucket full again. So a reconnect never refills the fork budget,
//!   and the used nonces it takes along are of cookies that name a socket
//!   that is gone (socket ids are never reused), which no initiate can use.
//! - [`ActiveWorlds`]: which socket each active world key runs on, over the
//!   whole server, so one key is active at most once. Bounded by
//!   construction: every entry is a world counted in one [`UserBudget`]
//!   (at most `max_users × max_worlds`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::cookie::{UseError, UsedNonces, NONCE};
use super::session::{ActivateError, Budget, Limits};
use super::WorldId;

/// The users tracked at most by default (`worlds.max_users`).
pub const DEFAULT_MAX_USERS: usize = 4096;

/// The used fork cookies remembered per user at most by default
/// (`worlds.max_used_per_user`): above what the default fork rate can use
/// while a cookie opens (60 at once plus 60 a minute over two 60 s key
/// periods is 180), about 12 KiB per user.
pub const DEFAULT_MAX_USED_PER_USER: usize = 256;

/// One user's world count, fork token bucket and used cookies: what all of
/// the user's sockets share.
#[derive(Debug)]
pub struct UserBudget {
    limits: Limits,
    /// Worlds counted by [`Budget::add_world`] and not yet removed.
    worlds: usize,
    /// Fork tokens, and when they were last refilled (ms).
    tokens: f64,
    refilled_ms: u64,
    /// The nonces of the cookies this user's worlds started with.
    used: UsedNonces,
}

impl UserBudget {
    /// A full budget at `now_ms`: no worlds, every fork token, no used
    /// cookie.
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        Self {
            limits,
            worlds: 0,
            tokens: f64::from(limits.forks_per_minute),
            refilled_ms: now_ms,
            used: UsedNonces::new(limits.max_used),
        }
    }

    /// The worlds counted now.
    pub fn worlds(&self) -> usize {
        self.worlds
    }

    /// The used cookies remembered now.
    pub fn used(&self) -> usize {
        self.used.len()
    }

    /// Brings the bucket to `now_ms` (continuous refill, capped at the
    /// burst); time going backwards refills nothing.
    fn refill(&mut self, now_ms: u64) {
        let max = f64::from(self.limits.forks_per_minute);
        let per_ms = max / 60_000.0;
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        #[allow(clippy::cast_precision_loss)]
        let refill = elapsed as f64 * per_ms;
        self.tokens = (self.tokens + refill).min(max);
    }

    /// True when this budget is the same as a fresh one at `now_ms` (no
    /// world, the bucket full again): dropping it refills nothing.
    pub fn is_idle(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.worlds == 0 && self.tokens >= f64::from(self.limits.forks_per_minute)
    }

    /// Marks the cookie `nonce`, opened under the key of `epoch`, used;
    /// first drops the sets of keys older than `oldest` (gone, so their
    /// cookies cannot open). [`UseError::Full`]: this user has
    /// `max_used` cookies remembered — only this user is refused.
    pub fn mark_used(
        &mut self,
        epoch: u64,
        oldest: u64,
        nonce: [u8; NONCE],
    ) -> Result<(), UseError> {
        self.used.forget_before(oldest);
        self.used.insert(epoch, nonce)
    }

    /// Forgets a nonce [`UserBudget::mark_used`] marked (the initiate
    /// failed after all, so its cookie stays good).
    pub fn unmark_used(&mut self, epoch: u64, nonce: &[u8; NONCE]) {
        self.used.remove(epoch, nonce);
    }
}

impl Budget for UserBudget {
    fn check_world(&self, _world: &WorldId) -> Result<(), ActivateError> {
        if self.worlds < self.limits.max_worlds {
            Ok(())
        } else {
            Err(ActivateError::Limit)
        }
    }

    fn take_fork(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn add_world(&mut self, world: &WorldId) -> Result<(), ActivateError> {
        self.check_world(world)?;
        self.worlds = self.worlds.saturating_add(1);
        Ok(())
    }

    fn remove_world(&mut self, _world: &WorldId) {
        self.worlds = self.worlds.saturating_sub(1);
    }
}

/// Locks, ignoring poisoning (the state stays usable; nothing here
/// panics on purpose).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`Users::join`] refused: `max_users` users are tracked, none of which
/// can be dropped yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyUsers;

/// The budget of every user tracked, with the number of its sockets.
///
/// Lock order: this map, then a member's budget (the map is never taken
/// while a budget is held).
#[derive(Debug)]
pub struct Users {
    members: HashMap<String, Member>,
    limits: Limits,
    max_users: usize,
}

#[derive(Debug)]
struct Member {
    sockets: usize,
    budget: Arc<Mutex<UserBudget>>,
}

impl Users {
    /// No user yet; at most `max_users` at once, each with `limits`.
    pub fn new(limits: Limits, max_users: usize) -> Self {
        Self {
            members: HashMap::new(),
            limits,
            max_users,
        }
    }

    /// Users tracked now.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True if no user is tracked.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// One more socket of `user` at `now_ms`: the user's budget, the one
    /// kept since its last socket if there is one (a reconnect refills
    /// nothing), else a fresh one. At the bound, users without a socket
    /// whose budget is idle again are dropped first; if none is, the new
    /// user is refused (users already tracked never are).
    pub fn join(
        &mut self,
        user: &str,
        now_ms: u64,
    ) -> Result<Arc<Mutex<UserBudget>>, TooManyUsers> {
        if !self.members.contains_key(user) && self.members.len() >= self.max_users {
            self.sweep(now_ms);
            if self.members.len() >= self.max_users {
                return Err(TooManyUsers);
            }
        }
        let limits = self.limits;
        let m = self
            .members
            .entry(user.to_owned())
            .or_insert_with(|| Member {
                sockets: 0,
                budget: Arc::new(Mutex::new(UserBudget::new(limits, now_ms))),
            });
        m.sockets = m.sockets.saturating_add(1);
        Ok(Arc::clone(&m.budget))
    }

    /// A socket of `user` is gone at `now_ms` (its worlds given back
    /// first). The entry goes with the last socket only if the budget is
    /// idle; otherwise it stays until it is, so reconnecting refills
    /// nothing.
    pub fn leave(&mut self, user: &str, now_ms: u64) {
        let Some(m) = self.members.get_mut(user) else {
            return;
        };
        m.sockets = m.sockets.saturating_sub(1);
        if m.sockets == 0 && lock(&m.budget).is_idle(now_ms) {
            self.members.remove(user);
        }
    }

    /// Drops every user without a socket whose budget is idle at `now_ms`.
    pub fn sweep(&mut self, now_ms: u64) {
        self.members
            .retain(|_, m| m.sockets > 0 || !lock(&m.budget).is_idle(now_ms));
    }
}

/// Every active world key on the server and the socket it runs on: a key
/// is active at most once, whichever socket or user asks.
#[derive(Debug, Default)]
pub struct ActiveWorlds {
    owners: HashMap<WorldId, u64>,
}

impl ActiveWorlds {
    /// Nobody's world is active.
    pub fn new() -> Self {
        Self::default()
    }

    /// Active worlds now.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// True if no world is active.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Whether `world` could start on `socket` (changes nothing).
    pub fn check(&self, world: &WorldId, socket: u64) -> Result<(), ActivateError> {
        match self.owners.get(world) {
            None => Ok(()),
            Some(s) if *s == socket => Err(ActivateError::Duplicate),
            Some(_) => Err(ActivateError::ActiveElsewhere),
        }
    }

    /// Registers `world` as active on `socket`, unless it is active
    /// anywhere (the check and the claim in one step).
    pub fn claim(&mut self, world: WorldId, socket: u64) -> Result<(), ActivateError> {
        self.check(&world, socket)?;
        self.owners.insert(world, socket);
        Ok(())
    }

    /// `world` ended on `socket`: its key is free again. A release by a
    /// socket that does not own it changes nothing.
    pub fn release(&mut self, world: &WorldId, socket: u64) {
        if self.owners.get(world) == Some(&socket) {
            self.owners.remove(world);
        }
    }
}

/// A socket's [`Budget`]: its user's budget and the server's active
/// worlds, each locked for just one call (lock order: the user's budget,
/// then the active worlds).
#[derive(Debug, Clone, Copy)]
pub struct SocketBudget<'a> {
    /// The socket's user's budget.
    pub user: &'a Mutex<UserBudget>,
    /// The server's active worlds.
    pub active: &'a Mutex<ActiveWorlds>,
    /// The socket.
    pub socket: u64,
}

/// Like [`SocketBudget`], with the user's budget held by the caller for
/// several calls in a row (an initiate's checks and its activation).
#[derive(Debug)]
pub struct HeldBudget<'a> {
    /// The socket's user's budget, locked.
    pub user: &'a mut UserBudget,
    /// The server's active worlds.
    pub active: &'a Mutex<ActiveWorlds>,
    /// The socket.
    pub socket: u64,
}

fn check(
    user: &UserBudget,
    active: &Mutex<ActiveWorlds>,
    world: &WorldId,
    socket: u64,
) -> Result<(), ActivateError> {
    lock(active).check(world, socket)?;
    user.check_world(world)
}

fn add(
    user: &mut UserBudget,
    active: &Mutex<ActiveWorlds>,
    world: &WorldId,
    socket: u64,
) -> Result<(), ActivateError> {
    user.check_world(world)?;
    lock(active).claim(*world, socket)?;
    user.add_world(world)
}

fn remove(user: &mut UserBudget, active: &Mutex<ActiveWorlds>, world: &WorldId, socket: u64) {
    lock(active).release(world, socket);
    user.remove_world(world);
}

impl Budget for SocketBudget<'_> {
    fn check_world(&self, world: &WorldId) -> Result<(), ActivateError> {
        check(&lock(self.user), self.active, world, self.socket)
    }

    fn take_fork(&mut self, now_ms: u64) -> bool {
        lock(self.user).take_fork(now_ms)
    }

    fn add_world(&mut self, world: &WorldId) -> Result<(), ActivateError> {
        add(&mut lock(self.user), self.active, world, self.socket)
    }

    fn remove_world(&mut self, world: &WorldId) {
        remove(&mut lock(self.user), self.active, world, self.socket);
    }
}

impl Budget for HeldBudget<'_> {
    fn check_world(&self, world: &WorldId) -> Result<(), ActivateError> {
        check(self.user, self.active, world, self.socket)
    }

    fn take_fork(&mut self, now_ms: u64) -> bool {
        self.user.take_fork(now_ms)
    }

    fn add_world(&mut self, world: &WorldId) -> Result<(), ActivateError> {
        add(self.user, self.active, world, self.socket)
    }

    fn remove_world(&mut self, world: &WorldId) {
        remove(self.user, self.active, world, self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_worlds: 2,
        forks_per_minute: 3,
        max_used: 2,
    };

    fn w(n: u8) -> WorldId {
        WorldId([n; 32])
    }

    #[test]
    fn a_user_budget_counts_worlds_tokens_and_used_cookies() {
        let mut b = UserBudget::new(LIMITS, 0);
        assert!(b.is_idle(0));
        for _ in 0..3 {
            assert!(b.take_fork(0));
        }
        assert!(!b.take_fork(0), "burst spent");
        assert!(!b.is_idle(0));
        // One token back after 20 s (3 a minute).
        assert!(!b.take_fork(19_999));
        assert!(b.take_fork(20_000));
        assert_eq!(b.add_world(&w(1)), Ok(()));
        assert_eq!(b.add_world(&w(2)), Ok(()));
        assert_eq!(b.add_world(&w(3)), Err(ActivateError::Limit));
        assert_eq!(b.worlds(), 2);
        b.remove_world(&w(1));
        b.remove_world(&w(2));
        // Full again a minute after the last fork, with no world.
        assert!(!b.is_idle(79_999));
        assert!(b.is_idle(80_000));
        // Used cookies: at most two, per epoch, dropped with their key.
        assert_eq!(b.mark_used(10, 10, [1; NONCE]), Ok(()));
        assert_eq!(b.mark_used(10, 10, [1; NONCE]), Err(UseError::Replayed));
        assert_eq!(b.mark_used(11, 10, [2; NONCE]), Ok(()));
        assert_eq!(b.mark_used(11, 10, [3; NONCE]), Err(UseError::Full));
        b.unmark_used(11, &[2; NONCE]);
        assert_eq!(b.mark_used(11, 10, [3; NONCE]), Ok(()));
        // Key 10 rotates out: its set goes, room for one.
        assert_eq!(b.mark_used(11, 11, [4; NONCE]), Ok(()));
        assert_eq!(b.used(), 2);
    }

    #[test]
    fn users_are_bounded_and_a_reconnect_refills_nothing() {
        let mut users = Users::new(LIMITS, 2);
        let alice = users.join("alice", 0).unwrap();
        for _ in 0..3 {
            assert!(lock(&alice).take_fork(0));
        }
        users.leave("alice", 1_000);
        assert_eq!(users.len(), 1, "kept: its bucket is not full again");
        // Reconnecting finds the same, empty bucket.
        let again = users.join("alice", 2_000).unwrap();
        assert!(Arc::ptr_eq(&alice, &again));
        assert!(!lock(&again).take_fork(2_000));
        // Bob is another user with his own budget.
        let bob = users.join("bob", 2_000).unwrap();
        assert!(lock(&bob).take_fork(2_000));
        // Two users tracked: carol is refused while both have sockets...
        assert_eq!(users.join("carol", 2_000).err(), Some(TooManyUsers));
        // ...and users already tracked are not.
        assert!(users.join("bob", 2_000).is_ok());
        users.leave("bob", 2_000);
        users.leave("bob", 2_000);
        assert_eq!(users.len(), 2, "bob spent a token: kept");
        assert_eq!(users.join("carol", 3_000).err(), Some(TooManyUsers));
        // Once bob's bucket is full again he can be dropped for carol.
        assert!(users.join("carol", 22_000).is_ok());
        assert_eq!(users.len(), 2);
        // Alice's socket leaves after her bucket refilled: dropped at once.
        users.leave("alice", 62_000);
        assert_eq!(users.len(), 1);
        users.leave("carol", 62_000);
        assert!(users.is_empty());
        // Leaving an unknown user changes nothing.
        users.leave("dave", 62_000);
        assert!(users.is_empty());
    }

    #[test]
    fn a_user_with_worlds_is_never_dropped() {
        let mut users = Users::new(LIMITS, 1);
        let alice = users.join("alice", 0).unwrap();
        assert_eq!(lock(&alice).add_world(&w(1)), Ok(()));
        users.leave("alice", 0);
        users.sweep(10 * 60_000);
        assert_eq!(users.len(), 1);
        assert_eq!(users.join("bob", 10 * 60_000).err(), Some(TooManyUsers));
        lock(&alice).remove_world(&w(1));
        assert!(users.join("bob", 10 * 60_000).is_ok());
    }

    #[test]
    fn a_world_key_is_active_once_on_the_server() {
        let active = Mutex::new(ActiveWorlds::new());
        let alice = Mutex::new(UserBudget::new(LIMITS, 0));
        let bob = Mutex::new(UserBudget::new(LIMITS, 0));
        let mut a1 = SocketBudget {
            user: &alice,
            active: &active,
            socket: 1,
        };
        let mut a2 = SocketBudget { socket: 2, ..a1 };
        let mut b3 = SocketBudget {
            user: &bob,
            active: &active,
            socket: 3,
        };
        assert_eq!(a1.add_world(&w(1)), Ok(()));
        assert_eq!(a1.check_world(&w(1)), Err(ActivateError::Duplicate));
        for other in [&mut a2, &mut b3] {
            assert_eq!(
                other.check_world(&w(1)),
                Err(ActivateError::ActiveElsewhere)
            );
            assert_eq!(other.add_world(&w(1)), Err(ActivateError::ActiveElsewhere));
        }
        // Nothing counted for the refused ones.
        assert_eq!(
            (
                lock(&alice).worlds(),
                lock(&bob).worlds(),
                lock(&active).len()
            ),
            (1, 0, 1)
        );
        // Another socket cannot release it; its own end does.
        b3.remove_world(&w(1));
        assert_eq!(lock(&active).len(), 1);
        a1.remove_world(&w(1));
        assert!(lock(&active).is_empty());
        assert_eq!(b3.add_world(&w(1)), Ok(()));
        // The limit is checked before the key is claimed.
        let mut held = HeldBudget {
            user: &mut lock(&bob),
            active: &active,
            socket: 3,
        };
        assert_eq!(held.add_world(&w(2)), Ok(()));
        assert_eq!(held.add_world(&w(3)), Err(ActivateError::Limit));
        assert_eq!(held.check_world(&w(3)), Err(ActivateError::Limit));
        assert_eq!(lock(&active).check(&w(3), 3), Ok(()), "not claimed");
    }
}
