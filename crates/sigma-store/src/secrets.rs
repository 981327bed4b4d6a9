//! The server's own secrets (JWT signing keys, cookie keys, …): random
//! bytes created once and kept.
//!
//! Below `A` and the destinations that sign or seal things; never derived
//! from client input. No `Debug`, `Display` or error of this crate shows a
//! secret's bytes.

use crate::StoreError;

/// Longest secret [`SecretStore::secret`] creates.
pub const MAX_SECRET_LEN: usize = 4096;

/// The server's secrets, by name.
pub trait SecretStore: Send + Sync {
    /// The secret `name`; if it does not exist, `len` fresh random bytes
    /// are stored durably first (once, even when callers race). Fails with
    /// [`StoreError::SecretLength`] if it exists with another length and
    /// with [`StoreError::SecretSize`] unless `1 <= len <= MAX_SECRET_LEN`.
    fn secret(&self, name: &str, len: usize) -> Result<Vec<u8>, StoreError>;
}
