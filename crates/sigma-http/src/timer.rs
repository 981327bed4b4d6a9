//! Deadlines of one connection, as a table keyed by [`Timer`].
//!
//! Time enters `H` only as the `now` argument of its calls (quinn-proto's
//! `timer.rs` is the model). The shell asks [`TimerTable::next`] for the
//! earliest deadline, sleeps until then and calls `handle_timeout(now)`;
//! an early or spurious call does nothing.

use std::time::Instant;

/// Every deadline `H` can arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// First byte of a head to its end (408).
    HeadRead,
    /// Idle keep-alive between requests (close).
    KeepAliveIdle,
    /// Body minimum rate (408).
    BodyRate,
    /// Output pending without progress (abort).
    WriteStall,
    /// Next WebSocket ping.
    WsPing,
    /// WebSocket idle timeout (close 1001).
    WsIdle,
    /// WebSocket close handshake (abort).
    WsCloseHandshake,
    /// After our half-close, wait this long for the peer's EOF.
    Linger,
}

const COUNT: usize = 8;

impl Timer {
    const ALL: [Self; COUNT] = [
        Self::HeadRead,
        Self::KeepAliveIdle,
        Self::BodyRate,
        Self::WriteStall,
        Self::WsPing,
        Self::WsIdle,
        Self::WsCloseHandshake,
        Self::Linger,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// A fixed table of optional deadlines.
#[derive(Debug, Default, Clone)]
pub struct TimerTable {
    slots: [Option<Instant>; COUNT],
}

impl TimerTable {
    /// Arms `timer` at `at` (replacing any earlier value).
    pub fn set(&mut self, timer: Timer, at: Instant) {
        if let Some(slot) = self.slots.get_mut(timer.index()) {
            *slot = Some(at);
        }
    }

    /// Arms or disarms `timer`.
    pub fn set_opt(&mut self, timer: Timer, at: Option<Instant>) {
        if let Some(slot) = self.slots.get_mut(timer.index()) {
            *slot = at;
        }
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.set_opt(timer, None);
    }

    /// The deadline of `timer`, if armed.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.slots.get(timer.index()).copied().flatten()
    }

    /// True when `timer` is armed and its deadline is at or before `now`.
    pub fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().min().copied()
    }

    /// The expired timers at `now`, earliest first.
    pub fn expired(&self, now: Instant) -> impl Iterator<Item = Timer> + '_ {
        Timer::ALL
            .into_iter()
            .filter(move |t| self.is_expired(*t, now))
    }
}
