//! The storage layer (DESIGN §7): narrow traits for users, server-side
//! sessions, the server's own secrets, the `&db` key-value store and the
//! broadcast broker, and their implementations: embedded (redb) and cluster (PostgreSQL).
//!
//! ```text
//!  A (login, session cache, JWT keys) ──▶ UserStore    ┐
//!  `sigma user …` (CLI)               ──▶ SessionStore ├─ Store ──▶ RedbStore: <data_dir>/sigma.redb
//!  &db (destination)                  ──▶ SecretStore  │       or
//!                                     ──▶ KvStore      ┘           PgStore: PostgreSQL ([store] url)
//! ```
//!
//! Below `A`, the destinations and the CLI; above nothing but redb and
//! PostgreSQL (`pg_store.rs`; `migrate.rs` copies the one into the other).
//! Nothing here faces the client directly: callers validate input first
//! (user names with [`valid_user_name`], session ids with
//! [`SessionId::from_cookie`]). Each part is its own trait ([`UserStore`],
//! [`SessionStore`], [`SecretStore`], [`KvStore`]), so a caller can hold
//! only what it uses; [`Store`] is all four, for the callers that hold
//! the whole layer (`Arc<dyn Store>`). [`Broker`] is the seam of
//! `&broadcast`'s fan-out ([`MemoryBroker`] in-process, [`RedisBroker`]
//! across nodes). The behaviour tests are written once against the traits
//! (`suite.rs`, `broker_suite.rs`) and run against every implementation.
//!
//! Invariants every implementation keeps:
//! - A write returns only after it is durable, except
//!   [`SessionStore::session_put`] with `durable = false`, meant for
//!   `last_seen` touches: those are visible at once but may reach the disk
//!   later ([`RedbStore`]: with the next durable commit, at the latest
//!   [`NONDURABLE_MAX_AGE`] later, or when the store is closed).
//! - The session index always agrees with the sessions, and changing or
//!   deleting a user revokes its sessions in the same transaction.
//! - A `&db` version is never reused within a namespace
//!   ([`KvStore::kv_put`]).
//!
//! Every method blocks on I/O (a durable commit is an `fsync`, or a
//! PostgreSQL round trip; `PgStore` runs its own small runtime, so a call
//! from inside another tokio runtime does not panic, it blocks): async
//! callers run them with `tokio::task::spawn_blocking`. This crate does
//! not read the wall clock: callers pass `now` and the records' times.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod apikeys;
mod broker;
#[cfg(test)]
mod broker_suite;
mod error;
mod kv;
mod migrate;
#[cfg(test)]
mod migrate_tests;
mod pg_store;
mod redb_store;
mod redis;
mod secrets;
mod sessions;
#[cfg(test)]
mod suite;
mod users;

pub use apikeys::{valid_key_hash, ApiKeyRecord, ApiKeyStore};
pub use broker::{
    Answerer, AskError, AskFuture, Broker, BrokerError, BrokerFuture, BrokerHandler, Clock,
    History, Keep, MemoryBroker, Publication, Relay, SharedCounters, StreamPosition,
    DEFAULT_HISTORY_BYTES,
};
pub use error::{KvError, StoreError};
pub use kv::{
    KvChange, KvEntry, KvListener, KvMeta, KvPut, KvStore, KvTags, Precondition,
    MAX_KV_CONTENT_TYPE,
};
pub use migrate::{migrate_redb_to_pg, MigrateReport};
pub use pg_store::{PgStore, PG_NOTIFY_CHANNEL, PG_SCHEMA_VERSION};
pub use redb_store::{RedbStore, CACHE_BYTES, DB_FILE, NONDURABLE_MAX_AGE, SCHEMA_VERSION};
pub use redis::{
    Cluster, ClusterError, ClusterStatus, RedisBroker, ASK_TIMEOUT, DEFAULT_TTL, MAX_ASKS,
    PUBLISH_QUEUE, PUBLISH_QUEUE_BYTES, REDIS_TIMEOUT,
};
pub use secrets::{SecretStore, MAX_SECRET_LEN};
pub use sessions::{
    Revocation, RevocationListener, SessionId, SessionRecord, SessionStore, SESSION_COOKIE_LEN,
};
pub use users::{
    normalise_groups, valid_group_name, valid_groups, valid_user_name, UserRecord, UserStore,
    MAX_GROUPS, MAX_USER_NAME_LEN,
};

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), StoreError> {
    getrandom::fill(buf).map_err(StoreError::Random)
}

/// The whole storage layer (DESIGN §7) as one object, for the callers
/// that hold all of it (`Arc<dyn Store>`: the server, the CLI). Callers
/// that need one part can take that part's trait instead (an
/// `Arc<dyn Store>` upcasts to `Arc<dyn SessionStore>`, …).
///
/// It adds no methods, only the rule that spans the parts: users and
/// sessions are one consistency domain (see [`UserStore`]). Every type
/// with all four parts is a `Store`.
pub trait Store:
    UserStore + SessionStore + SecretStore + KvStore + ApiKeyStore + StoreHealth + 'static
{
}

impl<T> Store for T where
    T: UserStore + SessionStore + SecretStore + KvStore + ApiKeyStore + StoreHealth + 'static
{
}

/// Whether the store can be reached, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStatus {
    /// `"redb"` or `"postgres"`.
    pub kind: &'static str,
    /// The last operation reached the store (the embedded one always does).
    pub up: bool,
    /// Operations that failed because the store could not be reached,
    /// since start.
    pub failures: u64,
    /// Cross-node `&db` change notifications are being received (always
    /// true where there are none to receive).
    pub listening: bool,
}

/// The state of a store's connection (DESIGN §7: `/healthz` reports it).
pub trait StoreHealth: Send + Sync {
    /// The current state.
    fn status(&self) -> StoreStatus;
}
