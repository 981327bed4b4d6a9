//! API keys (DESIGN §4): machine identities. A key is shown once when it
//! is made (`sgk_` + 43 base64url characters); only its SHA-256 is kept,
//! with the key's name (the identity's user) and groups.
//!
//! Below `A` (which looks keys up by hash) and the CLI's `sigma apikey
//! …`; nothing here sees a key itself.

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One key: the hex SHA-256 of the key text, its groups, when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Lower-case hex SHA-256 of the whole key (`sgk_…`), 64 characters.
    pub hash: String,
    /// The key's groups (policies' `group:` subjects), normalised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Creation time, unix seconds.
    pub created: u64,
}

/// True if `hash` is 64 lower-case hex digits.
pub fn valid_key_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The API keys, by name (a valid user name). Each method is one
/// transaction.
pub trait ApiKeyStore: Send + Sync {
    /// Stores the key `name`; `false` if a key of that name (or that hash)
    /// exists. A bad name is [`StoreError::InvalidUserName`].
    fn apikey_create(&self, name: &str, rec: &ApiKeyRecord) -> Result<bool, StoreError>;
    /// The key whose hash is `hash`: its name and record.
    fn apikey_by_hash(&self, hash: &str) -> Result<Option<(String, ApiKeyRecord)>, StoreError>;
    /// Every key, sorted by name.
    fn apikey_list(&self) -> Result<Vec<(String, ApiKeyRecord)>, StoreError>;
    /// Deletes the key `name`; `false` if there is none.
    fn apikey_delete(&self, name: &str) -> Result<bool, StoreError>;
}
