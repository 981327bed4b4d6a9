//! The storage layer's errors: [`StoreError`] for every operation and
//! [`KvError`] for the conditional `&db` writes.
//!
//! Below `A` and the destinations, which map them to a 500 or 503 (or,
//! for [`KvError::PreconditionFailed`], a 412). No message contains a
//! secret.

use std::io;
use std::path::PathBuf;

use crate::{MAX_SECRET_LEN, MAX_USER_NAME_LEN, SCHEMA_VERSION};

/// Why a store operation failed. No message contains a secret (passwords,
/// hashes, session ids, secret bytes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (a running `sigma serve`) has the database open.
    #[error("the data directory {} is in use by another sigma process", dir.display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// The data directory could not be created or is not a directory.
    #[error("cannot create the data directory {}: {source}", dir.display())]
    CreateDir {
        /// The data directory.
        dir: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The database file could not be opened (permissions, corruption, a
    /// file format this build cannot read).
    #[error("cannot open the store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: redb::DatabaseError,
    },
    /// The database was written by a newer sigma.
    #[error("the store {} has schema version {found}; this sigma reads version {SCHEMA_VERSION}", path.display())]
    UnsupportedSchema {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
    },
    /// A read, write or commit failed.
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    /// A stored record does not decode.
    #[error("store: a record in table `{table}` is malformed")]
    Malformed {
        /// The table.
        table: &'static str,
    },
    /// A record could not be encoded.
    #[error("store: cannot encode a record for table `{table}`")]
    Encode {
        /// The table.
        table: &'static str,
    },
    /// A user name outside [`crate::valid_user_name`] reached the store.
    #[error("invalid user name (1 to {MAX_USER_NAME_LEN} characters of A-Z a-z 0-9 . _ @ -)")]
    InvalidUserName,
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(getrandom::Error),
    /// A stored secret has another length than requested.
    #[error("the stored secret `{name}` has {stored} bytes, {wanted} were requested")]
    SecretLength {
        /// The secret's name.
        name: String,
        /// Its stored length.
        stored: usize,
        /// The requested length.
        wanted: usize,
    },
    /// A secret longer than [`MAX_SECRET_LEN`] or of length 0 was requested.
    #[error("a secret must be 1 to {MAX_SECRET_LEN} bytes, {0} were requested")]
    SecretSize(usize),
    /// The `[store] url` is not a PostgreSQL connection string sigma can use.
    #[error("[store] url: {0}")]
    BadUrl(String),
    /// `[store] ca` cannot be used (no certificate in it, or with
    /// `sslmode=disable`).
    #[error("[store] ca: {0}")]
    BadCa(String),
    /// PostgreSQL could not be reached when the store was opened.
    #[error("cannot reach PostgreSQL at {target}: {reason}")]
    Unreachable {
        /// Host, port and database (never the password).
        target: String,
        /// Why.
        reason: String,
    },
    /// The PostgreSQL schema was written by a newer sigma.
    #[error("the PostgreSQL store {target} has schema version {found}; this sigma reads up to version {supported}")]
    UnsupportedPgSchema {
        /// Host, port and database.
        target: String,
        /// The version found in `sigma_schema`.
        found: u64,
        /// The newest this build knows.
        supported: u64,
    },
    /// A PostgreSQL statement failed. `unavailable`: the server or the
    /// connection is gone (a retry later may work: callers answer 503).
    #[error("PostgreSQL: {message}")]
    Postgres {
        /// The server's message (never a value or a parameter).
        message: String,
        /// The database is unreachable rather than refusing the statement.
        unavailable: bool,
    },
}

impl StoreError {
    /// True when the store is (for now) unreachable, as opposed to refusing
    /// an operation: the caller answers 503 with `Retry-After` (HTTP) or
    /// closes with 1011 (WebSocket) rather than 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Postgres {
                    unavailable: true,
                    ..
                }
        )
    }
}

impl KvError {
    /// [`StoreError::is_unavailable`] of the store failure, if it is one.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_unavailable())
    }
}

/// `From<redb::…Error>` for an error type, wrapping with `$wrap`.
macro_rules! redb_error_from {
    ($target:ident, $wrap:path; $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                $wrap(e.into())
            }
        }
    )*};
}
redb_error_from!(StoreError, StoreError::Db;
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Why a conditional `&db` write failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The precondition does not hold; nothing was written.
    #[error("the precondition does not hold")]
    PreconditionFailed,
    /// An empty namespace or key, a key with NUL, or a content type
    /// longer than [`crate::MAX_KV_CONTENT_TYPE`].
    #[error("invalid namespace, key or content type")]
    Invalid,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redb::Error> for KvError {
    fn from(e: redb::Error) -> Self {
        Self::Store(e.into())
    }
}

redb_error_from!(KvError, KvError::Store;
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
