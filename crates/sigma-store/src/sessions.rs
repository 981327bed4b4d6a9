//! Server-side sessions (DESIGN §4): the record and its id.
//!
//! Below `A` (the session cookie, the session cache); a [`SessionId`] is
//! parsed from client input with [`SessionId::from_cookie`], which never
//! panics. The storage is a [`SessionStore`] implementation, which never
//! reads the clock: callers pass the records' times.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{random_bytes, StoreError};

/// A server-side session (the cookie carries only its [`SessionId`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The sigma user name.
    pub user: String,
    /// How the session was opened: `"password"` or `"oauth:<name>"`.
    pub provider: String,
    /// Creation time, unix milliseconds.
    pub created: u64,
    /// Last use, unix milliseconds (idle expiry is computed from it).
    pub last_seen: u64,
    /// Absolute expiry, unix milliseconds: the session is dead from then on.
    pub expires: u64,
    /// Groups the login brought (an OIDC provider's `groups_claim`),
    /// besides the local user's. Absent in older records: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A session id: 256 random bits. Compared in constant time; `Debug`
/// shows only its first two bytes.
#[derive(Clone)]
pub struct SessionId(pub [u8; 32]);

/// Length of [`SessionId::to_cookie`]: 32 bytes in unpadded base64url.
pub const SESSION_COOKIE_LEN: usize = 43;

impl SessionId {
    /// A fresh id from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, StoreError> {
        let mut id = [0u8; 32];
        random_bytes(&mut id)?;
        Ok(Self(id))
    }

    /// The cookie value: 43 characters of unpadded base64url.
    pub fn to_cookie(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses a cookie value: exactly 43 characters of the base64url
    /// alphabet in canonical form; anything else is `None`.
    pub fn from_cookie(s: &str) -> Option<Self> {
        if s.len() != SESSION_COOKIE_LEN
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let mut id = [0u8; 32];
        // Rejects non-zero trailing bits, so each id has one spelling.
        match URL_SAFE_NO_PAD.decode_slice(s, &mut id) {
            Ok(32) => Some(Self(id)),
            _ => None,
        }
    }
}

impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SessionId {}

impl std::hash::Hash for SessionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Consistent with `eq`: equal ids have equal bytes.
        self.0.hash(state);
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, ..] = self.0;
        write!(f, "SessionId({a:02x}{b:02x}…)")
    }
}

/// The server-side sessions (DESIGN §4), with an index by user. Each
/// method is one transaction; the index always agrees with the records.
pub trait SessionStore: Send + Sync {
    /// The session `id`, if it exists (expired or not: the caller checks).
    fn session_get(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// Creates or replaces the session `id`. With `durable = false` (for
    /// `last_seen` touches) the write may reach the disk later.
    fn session_put(
        &self,
        id: &SessionId,
        rec: &SessionRecord,
        durable: bool,
    ) -> Result<(), StoreError>;
    /// Deletes the session `id`; `false` if it did not exist.
    fn session_delete(&self, id: &SessionId) -> Result<bool, StoreError>;
    /// The ids of every session of `user`.
    fn sessions_of_user(&self, user: &str) -> Result<Vec<SessionId>, StoreError>;
    /// Deletes every session with `expires <= now` (unix milliseconds, the
    /// unit of [`SessionRecord`]); returns how many.
    fn sessions_purge_expired(&self, now_unix: u64) -> Result<u64, StoreError>;
    /// Tells the other processes sharing this store that sessions ended
    /// (after the store changed), so that they close their sockets too.
    /// The embedded store has no other processes: nothing to tell.
    fn announce_revocation(&self, revocation: &Revocation) -> Result<(), StoreError> {
        let _ = revocation;
        Ok(())
    }
    /// Registers `listener` for the revocations other processes announce;
    /// `false` if none can come (the embedded store).
    fn listen_revocations(&self, listener: RevocationListener) -> bool {
        drop(listener);
        false
    }
}

/// What another process changed that this one caches: sessions that
/// ended (DESIGN §4: their sockets close with 4401 on every node), a
/// user's groups, a deleted API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Revocation {
    /// One session, by its public handle (never its id).
    Session(String),
    /// Every session of a user (deleted, or its password changed).
    User(String),
    /// A user's groups changed: cached identities are read again (the
    /// sessions stay).
    Groups(String),
    /// An API key was deleted: its cached identity is forgotten.
    ApiKey(String),
}

/// Receives other processes' [`Revocation`]s.
pub type RevocationListener = Box<dyn Fn(&Revocation) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    #[test]
    fn session_id_cookie_round_trip() {
        for _ in 0..100 {
            let id = SessionId::generate().unwrap();
            let c = id.to_cookie();
            assert_eq!(c.len(), SESSION_COOKIE_LEN);
            assert_eq!(SessionId::from_cookie(&c), Some(id));
        }
        let zero = SessionId([0; 32]);
        assert_eq!(zero.to_cookie(), "A".repeat(43));
    }

    #[test]
    fn session_id_rejects_malformed_cookies() {
        let good = SessionId([7; 32]).to_cookie();
        assert!(SessionId::from_cookie(&good).is_some());
        let mut bad = vec![
            String::new(),
            good[..42].to_string(),
            format!("{good}A"),
            format!("{good}="),
            good.replace(|_| true, "+"),
            "/".repeat(43),
            format!("{}=", &good[..42]),
            format!(" {}", &good[..42]),
            format!("{}é", &good[..41]),
        ];
        // Non-canonical: the last character carries 2 data bits; setting a
        // trailing bit gives another spelling of (nearly) the same id.
        let mut non_canonical = good[..42].to_string();
        non_canonical.push('B'); // 'A' + one trailing bit
        if !good.ends_with('B') {
            bad.push(non_canonical);
        }
        for b in bad {
            assert_eq!(SessionId::from_cookie(&b), None, "{b:?}");
        }
    }

    #[test]
    fn session_id_eq_hash_debug() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
        let set: HashSet<SessionId> = [a.clone(), b.clone(), a.clone()].into_iter().collect();
        assert_eq!(set.len(), 2);
        let dbg = format!("{:?}", SessionId([0xab; 32]));
        assert_eq!(dbg, "SessionId(abab…)");
        assert!(!format!("{a:?}").contains(&a.to_cookie()));
    }
}
