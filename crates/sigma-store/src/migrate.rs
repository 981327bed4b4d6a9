//! `sigma migrate --from DATA_DIR --to postgres://…` (DESIGN §7): copies an
//! embedded store into PostgreSQL.
//!
//! Above both implementations, below the CLI. The source is read in one
//! redb read transaction and written in one PostgreSQL transaction, so the
//! target gets all of it or nothing; a target that already has users,
//! sessions or `&db` entries is refused. Versions and the `&db` version
//! counters are kept, so ETags stay valid and no version is reused.

use crate::{PgStore, RedbStore, StoreError};

/// What [`migrate_redb_to_pg`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateReport {
    /// Users.
    pub users: usize,
    /// Sessions.
    pub sessions: usize,
    /// Secrets (signing keys, cookie keys).
    pub secrets: usize,
    /// API keys.
    pub apikeys: usize,
    /// `&db` entries.
    pub kv_entries: usize,
}

/// Copies everything in `from` into the empty `to`.
pub fn migrate_redb_to_pg(from: &RedbStore, to: &PgStore) -> Result<MigrateReport, StoreError> {
    let dump = from.dump()?;
    let report = MigrateReport {
        users: dump.users.len(),
        sessions: dump.sessions.len(),
        secrets: dump.secrets.len(),
        apikeys: dump.apikeys.len(),
        kv_entries: dump.kv.len(),
    };
    to.import(dump)?;
    Ok(report)
}
