//! The storage layer (DESIGN §7): users, server-side sessions and the
//! server's own secrets, behind the [`Store`] trait.
//!
//! ```text
//!  A (login, session cache, JWT keys) ──▶ [ Store ] ──▶ RedbStore: <data_dir>/sigma.redb
//!  `sigma user …` (CLI)               ──▶ [       ]     (Redis / PostgreSQL later)
//! ```
//!
//! Nothing here faces the client directly: `A` and the CLI validate input
//! first (user names with [`valid_user_name`], session ids with
//! [`SessionId::from_cookie`]). The embedded default, [`RedbStore`], keeps
//! one ACID redb file under the data directory with four tables: `users`
//! (name → record), `sessions` (id → record), `sessions_by_user` (name →
//! ids, the index that makes "revoke all of a user's sessions" cheap) and
//! `secrets` (name → random bytes), plus `meta` (schema version). The
//! key-value store of `&db` adds `kv` ((namespace, key) → versioned entry)
//! and `kv_seq` (namespace → last version given out); see [`Store::kv_put`].
//!
//! Invariants:
//! - A write returns only after it is durable (a redb commit with
//!   `Durability::Immediate`), except [`Store::session_put`] with
//!   `durable = false`, meant for `last_seen` touches: those commits are
//!   visible at once but reach the disk with the next durable commit, at
//!   the latest [`NONDURABLE_MAX_AGE`] later (or when the store is closed).
//! - The session index always agrees with the sessions table: every write
//!   that touches one touches the other in the same transaction, and
//!   changing or deleting a user revokes its sessions atomically.
//! - One process owns the data directory: redb locks the file, and a second
//!   open fails with [`StoreError::Locked`], whose message says so plainly.
//!
//! Every method blocks on disk I/O (a durable commit is an `fsync`): async
//! callers run them with `tokio::task::spawn_blocking`. This module does not
//! read the clock: callers pass `now` and the records' times.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod error;
mod kv;
mod redb_store;
mod sessions;
mod users;

pub use error::{KvError, StoreError};
pub use kv::{KvEntry, KvMeta, KvPut, KvTags, Precondition, MAX_KV_CONTENT_TYPE};
pub use redb_store::{RedbStore, CACHE_BYTES, DB_FILE, NONDURABLE_MAX_AGE, SCHEMA_VERSION};
pub use sessions::{SessionId, SessionRecord, SESSION_COOKIE_LEN};
pub use users::{valid_user_name, UserRecord, MAX_USER_NAME_LEN};

/// Longest secret [`Store::secret`] creates.
pub const MAX_SECRET_LEN: usize = 4096;

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), StoreError> {
    getrandom::fill(buf).map_err(StoreError::Random)
}

/// The storage layer (DESIGN §7). Implementations are shared by every
/// connection (`Arc<dyn Store>`); each method is one transaction.
pub trait Store: Send + Sync + 'static {
    /// The user `name`, if it exists.
    fn user_get(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Creates the user `name`; `false` if it already exists.
    fn user_create(&self, name: &str, rec: &UserRecord) -> Result<bool, StoreError>;
    /// Replaces the password hash of `name` and revokes all of the user's
    /// sessions; `false` if there is no such user.
    fn user_set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError>;
    /// Deletes the user `name` and all of its sessions; `false` if there is
    /// no such user.
    fn user_delete(&self, name: &str) -> Result<bool, StoreError>;
    /// Every user name, sorted.
    fn user_list(&self) -> Result<Vec<String>, StoreError>;
    /// How many users exist.
    fn user_count(&self) -> Result<u64, StoreError>;
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
    /// The secret `name`; if it does not exist, `len` fresh random bytes
    /// are stored durably first. Fails if it exists with another length.
    fn secret(&self, name: &str, len: usize) -> Result<Vec<u8>, StoreError>;

    /// The `&db` entry `key` of namespace `ns`, if it exists.
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, StoreError>;
    /// Creates or replaces `key` in `ns` if `expect` holds for its current
    /// version (checked and written in one transaction), durably: it
    /// returns only after the commit reached the disk. The new version is
    /// greater than every version the namespace ever had, so a version is
    /// never reused, not even after a delete.
    fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        content_type: &str,
        expect: &Precondition,
    ) -> Result<KvPut, KvError>;
    /// Deletes `key` in `ns` if `expect` holds, durably; the deleted
    /// version, or `None` if there was no such key.
    fn kv_delete(&self, ns: &str, key: &str, expect: &Precondition)
        -> Result<Option<u64>, KvError>;
    /// Up to `limit` entries of `ns` whose key starts with `prefix`, in key
    /// (byte) order, starting after the key `after` if given.
    fn kv_list(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KvMeta>, StoreError>;
    /// Deletes every entry and the version counter of `ns` (for when its
    /// user is deleted); returns how many entries there were.
    fn kv_drop_namespace(&self, ns: &str) -> Result<u64, StoreError>;
}
