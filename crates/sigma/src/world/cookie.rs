//! The stateless fork cookie (DESIGN §5, step 3), after CurveCP's cookie:
//! `nonce (24 bytes) ‖ XChaCha20-Poly1305(minute key, contents)`.
//!
//! The server keeps no per-world state between `fork` and the initiate:
//! everything it needs comes back inside the cookie, sealed under a
//! *minute key* only the server knows. Keys are random, live only in
//! memory, and rotate every period (`worlds.key_rotation`, 60 s): a key
//! serves the epoch `now / period` it was made for, and the one after as
//! the previous key. A cookie therefore opens for one to two periods, then
//! never again (its key is gone). Rotation is driven by the clock value the
//! caller passes in, so tests rotate without waiting.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{Binding, WorldId};

/// Nonce length.
pub const NONCE: usize = 24;
/// Poly1305 tag length.
const TAG: usize = 16;
/// Fixed part of the plaintext: binding, world, socket, issued.
const FIXED: usize = 32 + 32 + 8 + 8;
/// The longest cookie (a 64-byte command name).
pub const MAX_COOKIE: usize = NONCE + FIXED + super::envelope::MAX_COMMAND + TAG;

/// What a fork cookie carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieContents {
    /// The authenticated session that asked (see [`super::binding_of`]).
    pub session: Binding,
    /// The session socket that asked (the world runs on it).
    pub socket: u64,
    /// The world's public key.
    pub world: WorldId,
    /// The command.
    pub command: String,
    /// When it was sealed (unix ms).
    pub issued_ms: u64,
}

/// Why a cookie does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// Not a cookie, altered, or sealed under a key that is gone (older
    /// than the previous minute key).
    Invalid,
    /// Opened, but issued too long ago or in the future.
    Expired,
}

impl std::fmt::Display for CookieError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Invalid => "invalid cookie",
            Self::Expired => "expired cookie",
        })
    }
}

impl std::error::Error for CookieError {}

/// The current and previous minute keys.
pub struct MinuteKeys {
    period_ms: u64,
    current: Option<(u64, XChaCha20Poly1305)>,
    previous: Option<(u64, XChaCha20Poly1305)>,
    random: fn(&mut [u8]) -> bool,
}

impl std::fmt::Debug for MinuteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("MinuteKeys")
            .field("period_ms", &self.period_ms)
            .finish_non_exhaustive()
    }
}

fn os_random(buf: &mut [u8]) -> bool {
    getrandom::fill(buf).is_ok()
}

impl MinuteKeys {
    /// Keys rotating every `period` (at least 1 ms).
    pub fn new(period: std::time::Duration) -> Self {
        let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            period_ms,
            current: None,
            previous: None,
            random: os_random,
        }
    }

    fn epoch(&self, now_ms: u64) -> u64 {
        now_ms / self.period_ms
    }

    fn fresh_key(&self) -> Option<XChaCha20Poly1305> {
        let mut k = [0u8; 32];
        if !(self.random)(&mut k) {
            return None;
        }
        Some(XChaCha20Poly1305::new(&k.into()))
    }

    /// Brings the keys to the epoch of `now_ms`: the current key becomes
    /// the previous one when one period has passed; both are forgotten
    /// after two.
    fn rotate(&mut self, now_ms: u64) {
        let e = self.epoch(now_ms);
        match &self.current {
            Some((ce, _)) if *ce == e => {}
            Some((ce, _)) if ce.checked_add(1) == Some(e) => {
                self.previous = self.current.take();
            }
            // Time went backwards: keep the keys we have.
            Some((ce, _)) if *ce > e => return,
            _ => {
                self.previous = None;
                self.current = None;
            }
        }
        if self.current.is_none() {
            self.current = self.fresh_key().map(|k| (e, k));
        }
    }

    /// Seals `c` under the current key; `None` if the OS has no randomness.
    pub fn seal(&mut self, c: &CookieContents, now_ms: u64) -> Option<Vec<u8>> {
        self.rotate(now_ms);
        let (_, key) = self.current.as_ref()?;
        let mut nonce = [0u8; NONCE];
        if !(self.random)(&mut nonce) {
            return None;
        }
        let mut plain = Vec::with_capacity(FIXED + c.command.len());
        plain.extend_from_slice(&c.session);
        plain.extend_from_slice(&c.world.0);
        plain.extend_from_slice(&c.socket.to_be_bytes());
        plain.extend_from_slice(&c.issued_ms.to_be_bytes());
        plain.extend_from_slice(c.command.as_bytes());
        let sealed = key.encrypt(&XNonce::from(nonce), plain.as_slice()).ok()?;
        let mut out = Vec::with_capacity(NONCE + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// Opens a cookie sealed under the current or the previous key, and
    /// checks its age (at most two periods, not in the future).
    pub fn open(&mut self, cookie: &[u8], now_ms: u64) -> Result<CookieContents, CookieError> {
        self.rotate(now_ms);
        if cookie.len() > MAX_COOKIE || cookie.len() < NONCE + FIXED + TAG {
            return Err(CookieError::Invalid);
        }
        let (nonce, sealed) = cookie.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| CookieError::Invalid)?;
        let nonce = XNonce::from(nonce);
        let plain = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find_map(|(_, key)| key.decrypt(&nonce, sealed).ok())
            .ok_or(CookieError::Invalid)?;
        let c = decode(&plain).ok_or(CookieError::Invalid)?;
        let max_age = self.period_ms.saturating_mul(2);
        if c.issued_ms > now_ms.saturating_add(1000) || now_ms.saturating_sub(c.issued_ms) > max_age
        {
            return Err(CookieError::Expired);
        }
        Ok(c)
    }
}

fn decode(plain: &[u8]) -> Option<CookieContents> {
    let session: Binding = plain.get(0..32)?.try_into().ok()?;
    let world: [u8; 32] = plain.get(32..64)?.try_into().ok()?;
    let socket = u64::from_be_bytes(plain.get(64..72)?.try_into().ok()?);
    let issued_ms = u64::from_be_bytes(plain.get(72..80)?.try_into().ok()?);
    let command = std::str::from_utf8(plain.get(FIXED..)?).ok()?.to_owned();
    Some(CookieContents {
        session,
        socket,
        world: WorldId(world),
        command,
        issued_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn contents(now: u64) -> CookieContents {
        CookieContents {
            session: [7; 32],
            socket: 42,
            world: WorldId([9; 32]),
            command: "echo".into(),
            issued_ms: now,
        }
    }

    const P: u64 = 60_000;

    #[test]
    fn opens_under_current_and_previous_key_only() {
        let mut k = MinuteKeys::new(Duration::from_millis(P));
        let t0 = 10 * P + 5;
        let c = k.seal(&contents(t0), t0).unwrap();
        assert_eq!(k.open(&c, t0 + 1).unwrap(), contents(t0));
        // One rotation later: sealed under the previous key, accepted.
        assert_eq!(k.open(&c, 11 * P + 1).unwrap(), contents(t0));
        // Two rotations later: the key is gone.
        assert_eq!(k.open(&c, 12 * P + 1), Err(CookieError::Invalid));
    }

    #[test]
    fn keys_are_forgotten_after_a_gap() {
        let mut k = MinuteKeys::new(Duration::from_millis(P));
        let c = k.seal(&contents(P), P).unwrap();
        assert_eq!(k.open(&c, 5 * P), Err(CookieError::Invalid));
        assert_eq!(k.open(&c, P + 1), Err(CookieError::Invalid));
    }

    #[test]
    fn another_server_cannot_open_it() {
        let mut a = MinuteKeys::new(Duration::from_millis(P));
        let mut b = MinuteKeys::new(Duration::from_millis(P));
        let c = a.seal(&contents(P), P).unwrap();
        assert_eq!(b.open(&c, P), Err(CookieError::Invalid));
    }

    #[test]
    fn future_issue_time_is_refused() {
        let mut k = MinuteKeys::new(Duration::from_millis(P));
        let c = k.seal(&contents(P + 50_000), P).unwrap();
        assert_eq!(k.open(&c, P), Err(CookieError::Expired));
    }

    proptest! {
        /// Any change to a sealed cookie is rejected: a flipped bit
        /// anywhere, a truncation, or extra bytes.
        #[test]
        fn any_change_is_rejected(
            bit in 0usize..(NONCE + FIXED + 4 + TAG) * 8,
            cut in 1usize..(NONCE + FIXED + 4 + TAG),
            extra in proptest::collection::vec(any::<u8>(), 1..8),
            command in "[a-z]{4}",
        ) {
            let mut k = MinuteKeys::new(Duration::from_millis(P));
            let mut c0 = contents(P);
            c0.command = command;
            let sealed = k.seal(&c0, P).unwrap();
            prop_assert_eq!(k.open(&sealed, P).unwrap(), c0);
            let mut flipped = sealed.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(k.open(&flipped, P).is_err());
            prop_assert!(k.open(&sealed[..sealed.len() - cut], P).is_err());
            let mut longer = sealed.clone();
            longer.extend_from_slice(&extra);
            prop_assert!(k.open(&longer, P).is_err());
        }
    }
}
