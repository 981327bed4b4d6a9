//! Which store a process uses (DESIGN §7): `[store] url` names a
//! PostgreSQL database, else the embedded redb store in `data_dir`; and
//! `sigma migrate`, which copies the one into the other.
//!
//! Part of the `sigma` shell, called by `main` (serve, migrate) and the
//! CLI (`sigma user …`) before anything is served.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::config::StoreConfig;
use crate::store::{migrate_redb_to_pg, MigrateReport, PgStore, RedbStore, Store, StoreError};

/// Opens the store `store` names: PostgreSQL (connected and migrated;
/// [`StoreError::Unreachable`] names the server if it does not answer) or
/// redb in `data_dir` (locked while open).
pub fn open(store: &StoreConfig, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match &store.url {
        Some(url) => {
            let ca = match &store.ca {
                Some(path) => Some(
                    sigma_core::namedfile::read(path)
                        .map_err(|e| StoreError::BadCa(e.to_string()))?,
                ),
                None => None,
            };
            Ok(Arc::new(PgStore::connect_tls(url, ca.as_deref())?))
        }
        None => Ok(Arc::new(RedbStore::open(data_dir)?)),
    }
}

/// `sigma migrate --from DATA_DIR --to URL`: copies the embedded store in
/// `from` into the (empty) PostgreSQL database `to`, all or nothing, and
/// says what it copied on `out`.
pub fn migrate(from: &Path, to: &str, out: &mut dyn Write) -> anyhow::Result<MigrateReport> {
    if !from.join(crate::store::DB_FILE).is_file() {
        anyhow::bail!(
            "--from {}: no sigma store there (no {})",
            from.display(),
            crate::store::DB_FILE
        );
    }
    let source = RedbStore::open(from)?;
    let target = PgStore::connect(to)?;
    let r = migrate_redb_to_pg(&source, &target)?;
    writeln!(
        out,
        "migrated {} users, {} sessions, {} secrets, {} API keys and {} &db entries from {} to {}",
        r.users,
        r.sessions,
        r.secrets,
        r.apikeys,
        r.kv_entries,
        from.display(),
        target.target()
    )?;
    Ok(r)
}
