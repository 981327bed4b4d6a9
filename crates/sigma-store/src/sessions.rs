//! Server-side sessions (DESIGN §4): the record and its id.
//!
//! Below `A` (the session cookie, the session cache); a [`SessionId`] is
//! parsed from client input with [`SessionId::from_cookie`], which never
//! panics. Nothing here stores anything or reads the clock: callers pass
//! the records' times.

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
