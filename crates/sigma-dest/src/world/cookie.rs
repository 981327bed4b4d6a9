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

use std::collections::{BTreeMap, HashSet};

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
#[derive(Clone, PartialEq, Eq)]
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

impl std::fmt::Debug for CookieContents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the session binding: a hash of the session id or token.
        f.debug_struct("CookieContents")
            .field("session", &"<redacted>")
            .field("socket", &self.socket)
            .field("world", &self.world)
            .field("command", &self.command)
            .field("issued_ms", &self.issued_ms)
            .finish()
    }
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
    /// In a cluster, this node's id: the first 8 bytes of every nonce
    /// (see [`node_of`]).
    node: Option<u64>,
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
            node: None,
            current: None,
            previous: None,
            random: os_random,
        }
    }

    /// Keys whose cookies name node `node`: the nonce is the node id (8
    /// bytes, big-endian) and 16 random bytes, so that another node can
    /// tell where a cookie was sealed without opening it. The nonce is
    /// authenticated with the rest: changing it breaks the cookie.
    #[must_use]
    pub fn tagged(mut self, node: u64) -> Self {
        self.node = Some(node);
        self
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
        let random = match self.node {
            Some(node) => {
                let (tag, rest) = nonce.split_at_mut(8);
                tag.copy_from_slice(&node.to_be_bytes());
                rest
            }
            None => &mut nonce[..],
        };
        if !(self.random)(random) {
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
        self.open_with_epoch(cookie, now_ms).map(|(c, _)| c)
    }

    /// The epoch of the oldest key still held (the previous key's, else
    /// the current one's): a cookie of an older epoch never opens again.
    /// Epochs only grow, and each names one key.
    pub fn oldest_epoch(&self) -> Option<u64> {
        self.previous
            .as_ref()
            .or(self.current.as_ref())
            .map(|(e, _)| *e)
    }

    /// Like [`MinuteKeys::open`], with the epoch of the key that opened
    /// it (what [`UsedNonces`] files the cookie's nonce under).
    pub fn open_with_epoch(
        &mut self,
        cookie: &[u8],
        now_ms: u64,
    ) -> Result<(CookieContents, u64), CookieError> {
        self.rotate(now_ms);
        if cookie.len() > MAX_COOKIE || cookie.len() < NONCE + FIXED + TAG {
            return Err(CookieError::Invalid);
        }
        let (nonce, sealed) = cookie.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| CookieError::Invalid)?;
        let nonce = XNonce::from(nonce);
        let (epoch, plain) = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find_map(|(e, key)| key.decrypt(&nonce, sealed).ok().map(|p| (*e, p)))
            .ok_or(CookieError::Invalid)?;
        let c = decode(&plain).ok_or(CookieError::Invalid)?;
        let max_age = self.period_ms.saturating_mul(2);
        if c.issued_ms > now_ms.saturating_add(1000) || now_ms.saturating_sub(c.issued_ms) > max_age
        {
            return Err(CookieError::Expired);
        }
        Ok((c, epoch))
    }
}

/// The node a cookie names, if it was sealed by tagged keys
/// ([`MinuteKeys::tagged`]): its first 8 bytes. Anything of a cookie's
/// length has some value here; only opening it tells whether it is real.
pub fn node_of(cookie: &[u8]) -> Option<u64> {
    if cookie.len() < NONCE {
        return None;
    }
    Some(u64::from_be_bytes(cookie.get(..8)?.try_into().ok()?))
}

/// The nonces of cookies already used (each cookie is single use), in one
/// set per epoch of the minute key that opened them. A set is dropped
/// whole once its key is gone ([`UsedNonces::forget_before`]): a cookie
/// sealed under that key cannot open any more, so its nonce need not be
/// remembered. No scan, no per-entry expiry.
///
/// At most `max` nonces are held. At the bound a new one is refused
/// ([`UseError::Full`]) rather than an old one forgotten (which would let
/// its cookie be replayed): initiates fail until the older key rotates
/// out and its set is dropped, at most one key period later. There is one
/// such set per user ([`super::budget::UserBudget`]), so a user at its
/// bound is refused (429) and nobody else.
#[derive(Debug)]
pub struct UsedNonces {
    sets: BTreeMap<u64, HashSet<[u8; NONCE]>>,
    total: usize,
    max: usize,
}

/// Why a nonce cannot be marked used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UseError {
    /// It is used already: the cookie is replayed.
    Replayed,
    /// [`UsedNonces`] holds its maximum.
    Full,
}

impl UsedNonces {
    /// An empty set holding at most `max` nonces.
    pub fn new(max: usize) -> Self {
        Self {
            sets: BTreeMap::new(),
            total: 0,
            max,
        }
    }

    /// Nonces held.
    pub fn len(&self) -> usize {
        self.total
    }

    /// True if none is held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Drops the sets of every epoch before `oldest` (the oldest key
    /// still held, [`MinuteKeys::oldest_epoch`]).
    pub fn forget_before(&mut self, oldest: u64) {
        let kept = self.sets.split_off(&oldest);
        let dropped = std::mem::replace(&mut self.sets, kept);
        let n: usize = dropped.values().map(HashSet::len).sum();
        self.total = self.total.saturating_sub(n);
    }

    /// Marks `nonce` of a cookie opened under the key of `epoch` used.
    pub fn insert(&mut self, epoch: u64, nonce: [u8; NONCE]) -> Result<(), UseError> {
        if self.sets.get(&epoch).is_some_and(|s| s.contains(&nonce)) {
            return Err(UseError::Replayed);
        }
        if self.total >= self.max {
            return Err(UseError::Full);
        }
        self.sets.entry(epoch).or_default().insert(nonce);
        self.total = self.total.saturating_add(1);
        Ok(())
    }

    /// Forgets `nonce` (an initiate that marked it, then failed).
    pub fn remove(&mut self, epoch: u64, nonce: &[u8; NONCE]) {
        if let Some(set) = self.sets.get_mut(&epoch) {
            if set.remove(nonce) {
                self.total = self.total.saturating_sub(1);
            }
            if set.is_empty() {
                self.sets.remove(&epoch);
            }
        }
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
    fn tagged_cookies_name_their_node_and_still_differ() {
        let mut a = MinuteKeys::new(Duration::from_millis(P)).tagged(0x0102_0304_0506_0708);
        let c1 = a.seal(&contents(P), P).unwrap();
        let c2 = a.seal(&contents(P), P).unwrap();
        assert_eq!(node_of(&c1), Some(0x0102_0304_0506_0708));
        assert_eq!(c1.get(..8), c2.get(..8));
        assert_ne!(c1.get(8..NONCE), c2.get(8..NONCE), "16 random nonce bytes");
        assert_eq!(a.open(&c1, P).unwrap(), contents(P));
        // The tag is authenticated: pointing a cookie at another node breaks it.
        let mut moved = c1.clone();
        moved[0] ^= 1;
        assert_eq!(node_of(&moved), Some(0x0002_0304_0506_0708));
        assert_eq!(a.open(&moved, P), Err(CookieError::Invalid));
        assert_eq!(node_of(&c1[..NONCE - 1]), None);
    }

    #[test]
    fn future_issue_time_is_refused() {
        let mut k = MinuteKeys::new(Duration::from_millis(P));
        let c = k.seal(&contents(P + 50_000), P).unwrap();
        assert_eq!(k.open(&c, P), Err(CookieError::Expired));
    }

    #[test]
    fn debug_never_shows_the_session_binding() {
        let shown = format!("{:?}", contents(P));
        assert!(!shown.contains("7, 7"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("socket: 42"),
            "{shown}"
        );
    }

    #[test]
    fn open_tells_the_epoch_of_its_key() {
        let mut k = MinuteKeys::new(Duration::from_millis(P));
        let c = k.seal(&contents(10 * P), 10 * P).unwrap();
        assert_eq!(k.oldest_epoch(), Some(10));
        assert_eq!(k.open_with_epoch(&c, 11 * P).unwrap().1, 10);
        assert_eq!(k.oldest_epoch(), Some(10));
        assert!(k.open_with_epoch(&c, 12 * P).is_err());
        assert_eq!(k.oldest_epoch(), Some(11));
    }

    #[test]
    fn used_nonces_go_with_their_key() {
        let mut u = UsedNonces::new(10);
        assert_eq!(u.insert(10, [1; NONCE]), Ok(()));
        assert_eq!(u.insert(10, [1; NONCE]), Err(UseError::Replayed));
        assert_eq!(u.insert(11, [2; NONCE]), Ok(()));
        assert_eq!(u.len(), 2);
        // Key 10 still held (the previous one): kept.
        u.forget_before(10);
        assert_eq!(u.insert(10, [1; NONCE]), Err(UseError::Replayed));
        // Key 10 gone: its set goes whole.
        u.forget_before(11);
        assert_eq!(u.len(), 1);
        assert_eq!(u.insert(11, [2; NONCE]), Err(UseError::Replayed));
        u.remove(11, &[2; NONCE]);
        assert!(u.is_empty());
        assert_eq!(u.insert(11, [2; NONCE]), Ok(()));
    }

    #[test]
    fn used_nonces_are_bounded_and_refuse_at_the_bound() {
        let mut u = UsedNonces::new(2);
        assert_eq!(u.insert(1, [1; NONCE]), Ok(()));
        assert_eq!(u.insert(2, [2; NONCE]), Ok(()));
        // Full: refused, nothing old forgotten (it could be replayed).
        assert_eq!(u.insert(2, [3; NONCE]), Err(UseError::Full));
        assert_eq!(u.insert(1, [1; NONCE]), Err(UseError::Replayed));
        assert_eq!(u.len(), 2);
        // Key 1 rotates out: room again.
        u.forget_before(2);
        assert_eq!(u.insert(2, [3; NONCE]), Ok(()));
        assert_eq!(u.len(), 2);
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
