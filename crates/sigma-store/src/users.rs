//! Users: the records behind password login (DESIGN §4) and the rule for
//! user names.
//!
//! Below `A` (login, the CLI's `sigma user …`); nothing here faces the
//! client or reads the clock, and nothing here stores anything: the
//! storage is a [`crate::Store`] implementation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest user name, in bytes (all allowed characters are ASCII).
pub const MAX_USER_NAME_LEN: usize = 64;

/// True if `name` is a valid sigma user name: 1 to 64 characters of
/// `A-Z a-z 0-9 . _ @ -`. Used by the CLI, by login and by the store.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// A user: the Argon2id PHC string of the password and when the user was
/// created. `Debug` does not show the hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The password hash as a PHC string (`$argon2id$v=19$…`).
    pub phc: String,
    /// Creation time, unix seconds.
    pub created: u64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("phc", &"<redacted>")
            .field("created", &self.created)
            .finish()
    }
}
