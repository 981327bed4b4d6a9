//! `[db]`: the limits of the `&db` destination (the last stage of T → H →
//! A → router → destination).

use serde::Deserialize;

use sigma_core::de::positive;

/// Largest `&db` value, in bytes, unless `db.max_value` says otherwise.
pub const DEFAULT_DB_MAX_VALUE: usize = 1024 * 1024;
/// Longest `&db` key, in bytes, unless `db.max_key` says otherwise.
pub const DEFAULT_DB_MAX_KEY: usize = 512;

/// `[db]`: the limits of the `&db` key-value store (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// Largest value, in bytes (a larger `PUT` gets 413).
    #[serde(deserialize_with = "positive")]
    pub max_value: usize,
    /// Longest key, in bytes (after percent-decoding).
    #[serde(deserialize_with = "positive")]
    pub max_key: usize,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            max_value: DEFAULT_DB_MAX_VALUE,
            max_key: DEFAULT_DB_MAX_KEY,
        }
    }
}

/// A shared `&db` namespace (route keys `namespace` and `writers`): every
/// user the route admits (`auth`, `users`) may read it; `writers`, if set,
/// limits who may write (`PUT`, `DELETE`), else everyone admitted may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedNamespace {
    /// Its name: 1–64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Who may write, if not everyone the route admits (never empty).
    pub writers: Option<Vec<String>>,
}
