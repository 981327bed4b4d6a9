//! Users: the records behind password login (DESIGN §4) and the rule for
//! user names.
//!
//! Below `A` (login, the CLI's `sigma user …`); nothing here faces the
//! client or reads the clock, and nothing here stores anything: the
//! storage is a [`UserStore`] implementation.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::StoreError;

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
    /// The user's groups (policies' `group:` subjects), sorted, each a
    /// [`valid_group_name`]. Absent in records written before groups
    /// existed: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Most groups one user may have.
pub const MAX_GROUPS: usize = 64;

/// True if `name` is a valid group name: the same characters and length
/// as a user name.
pub fn valid_group_name(name: &str) -> bool {
    valid_user_name(name)
}

/// `groups` checked ([`valid_group_name`], at most [`MAX_GROUPS`]),
/// sorted and without repeats; the first bad name otherwise.
pub fn normalise_groups(groups: &[String]) -> Result<Vec<String>, String> {
    if let Some(bad) = groups.iter().find(|g| !valid_group_name(g)) {
        return Err(bad.clone());
    }
    let mut out = groups.to_vec();
    out.sort();
    out.dedup();
    if out.len() > MAX_GROUPS {
        return Err(format!("{} groups (at most {MAX_GROUPS})", out.len()));
    }
    Ok(out)
}

/// The valid group names among `names` (groups an identity provider
/// sends: the others cannot be named by a policy anyway), sorted, unique,
/// at most [`MAX_GROUPS`].
pub fn valid_groups<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|g| valid_group_name(g))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_GROUPS);
    out
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("phc", &"<redacted>")
            .field("created", &self.created)
            .field("groups", &self.groups)
            .finish()
    }
}

/// The users (DESIGN §4): one record per name. Each method is one
/// transaction.
///
/// Users and sessions are one consistency domain: an implementation of
/// [`crate::Store`] revokes a user's sessions in the same transaction that
/// changes the password or deletes the user, and when a user is created
/// (no stale sessions of an earlier user of that name).
pub trait UserStore: Send + Sync {
    /// The user `name`, if it exists.
    fn user_get(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Creates the user `name`; `false` if it already exists. A name
    /// outside [`valid_user_name`] is [`StoreError::InvalidUserName`].
    fn user_create(&self, name: &str, rec: &UserRecord) -> Result<bool, StoreError>;
    /// Replaces the password hash of `name` and revokes all of the user's
    /// sessions; `false` if there is no such user.
    fn user_set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError>;
    /// Replaces the groups of `name` (already normalised); `false` if
    /// there is no such user. Sessions stay: the server reloads the
    /// groups of the user's cached identities.
    fn user_set_groups(&self, name: &str, groups: &[String]) -> Result<bool, StoreError>;
    /// Deletes the user `name` and all of its sessions; `false` if there is
    /// no such user.
    fn user_delete(&self, name: &str) -> Result<bool, StoreError>;
    /// Every user name, sorted.
    fn user_list(&self) -> Result<Vec<String>, StoreError>;
    /// How many users exist.
    fn user_count(&self) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(phc: &str) -> UserRecord {
        UserRecord {
            phc: phc.into(),
            created: 1_700_000_000,
            groups: Vec::new(),
        }
    }
    #[test]
    fn user_names() {
        for ok in ["a", "alice", "A.b_c@d-e", "0", &"x".repeat(64)] {
            assert!(valid_user_name(ok), "{ok:?}");
        }
        for bad in [
            "",
            &"x".repeat(65),
            "a b",
            "a/b",
            "a:b",
            "é",
            "a\n",
            "a\0",
            "a+b",
            "\u{200b}",
        ] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn groups_are_checked_sorted_and_deduplicated() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(normalise_groups(&g(&["b", "a", "b"])), Ok(g(&["a", "b"])));
        assert_eq!(
            normalise_groups(&g(&["ok", "no way"])),
            Err("no way".into())
        );
        let many: Vec<String> = (0..65).map(|i| format!("g{i}")).collect();
        assert!(normalise_groups(&many).is_err());
        // Records written before groups existed read as none.
        let old: UserRecord = serde_json::from_str(r#"{"phc":"x","created":1}"#).unwrap();
        assert!(old.groups.is_empty());
    }

    #[test]
    fn user_record_debug_is_redacted() {
        let d = format!("{:?}", user("$argon2id$v=19$secret-hash"));
        assert!(!d.contains("argon2"), "{d}");
        assert!(d.contains("redacted"), "{d}");
    }
}
