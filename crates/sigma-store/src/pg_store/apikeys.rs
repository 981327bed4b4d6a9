//! [`crate::ApiKeyStore`] on PostgreSQL: the `apikeys` table (schema 2).

use super::{col, pg_text, to_i64, to_u64, PgStore};
use crate::{valid_user_name, ApiKeyRecord, ApiKeyStore, StoreError};

/// A row of `SELECT name, hash, groups, created FROM apikeys`.
fn key_from_row(row: &tokio_postgres::Row) -> Result<(String, ApiKeyRecord), StoreError> {
    const T: &str = "apikeys";
    Ok((
        col(row, 0, T)?,
        ApiKeyRecord {
            hash: col(row, 1, T)?,
            groups: col(row, 2, T)?,
            created: to_u64(col(row, 3, T)?, T)?,
        },
    ))
}

impl ApiKeyStore for PgStore {
    fn apikey_create(&self, name: &str, rec: &ApiKeyRecord) -> Result<bool, StoreError> {
        if !valid_user_name(name) {
            return Err(StoreError::InvalidUserName);
        }
        let (name, hash, groups, created) = (
            name.to_owned(),
            rec.hash.clone(),
            rec.groups.clone(),
            to_i64(rec.created, "apikeys")?,
        );
        self.run(move |c| async move {
            let n = c
                .execute(
                    "INSERT INTO apikeys (name, hash, groups, created) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&name, &hash, &groups, &created],
                )
                .await?;
            Ok(n > 0)
        })
    }

    fn apikey_by_hash(&self, hash: &str) -> Result<Option<(String, ApiKeyRecord)>, StoreError> {
        if !pg_text(hash) {
            return Ok(None);
        }
        let hash = hash.to_owned();
        self.run(move |c| async move {
            let Some(row) = c
                .query_opt(
                    "SELECT name, hash, groups, created FROM apikeys WHERE hash = $1",
                    &[&hash],
                )
                .await?
            else {
                return Ok(None);
            };
            key_from_row(&row).map(Some)
        })
    }

    fn apikey_list(&self) -> Result<Vec<(String, ApiKeyRecord)>, StoreError> {
        self.run(|c| async move {
            let rows = c
                .query(
                    "SELECT name, hash, groups, created FROM apikeys ORDER BY name",
                    &[],
                )
                .await?;
            rows.iter().map(key_from_row).collect()
        })
    }

    fn apikey_delete(&self, name: &str) -> Result<bool, StoreError> {
        if !pg_text(name) {
            return Ok(false);
        }
        let name = name.to_owned();
        self.run(move |c| async move {
            let n = c
                .execute("DELETE FROM apikeys WHERE name = $1", &[&name])
                .await?;
            Ok(n > 0)
        })
    }
}
