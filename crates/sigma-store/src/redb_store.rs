//! The embedded default store: [`RedbStore`], one redb file under the data
//! directory (DESIGN §7).
//!
//! Below `A`, the destinations and the CLI, behind [`crate::Store`]. It
//! keeps four tables: `users` (name → record), `sessions` (id → record),
//! `sessions_by_user` (name → ids, the index that makes "revoke all of a
//! user's sessions" cheap) and `secrets` (name → random bytes), plus
//! `meta` (schema version). The key-value store of `&db` adds `kv`
//! ((namespace, key) → versioned entry) and `kv_seq` (namespace → last
//! version given out). Every method blocks on disk I/O; it never reads
//! the wall clock (only `Instant` for [`NONDURABLE_MAX_AGE`]).

use std::fmt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, MultimapTableDefinition, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::kv::kv_valid;
use crate::{
    random_bytes, valid_user_name, KvEntry, KvError, KvMeta, KvPut, KvStore, Precondition,
    SecretStore, SessionId, SessionRecord, SessionStore, StoreError, UserRecord, UserStore,
    MAX_KV_CONTENT_TYPE, MAX_SECRET_LEN,
};

/// The database file inside the data directory.
pub const DB_FILE: &str = "sigma.redb";
/// Longest a non-durable commit may wait for a durable one: a
/// `session_put(durable = false)` later than this after the last durable
/// commit is made durable itself.
pub const NONDURABLE_MAX_AGE: Duration = Duration::from_secs(5);
/// redb's page cache (an upper bound; it grows with use).
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const SESSIONS_BY_USER: MultimapTableDefinition<&str, &[u8]> =
    MultimapTableDefinition::new("sessions_by_user");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// API keys: name → record (JSON), and hash → name.
const APIKEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("apikeys");
const APIKEY_HASHES: TableDefinition<&str, &str> = TableDefinition::new("apikey_hashes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `&db` entries: (namespace, key) → [`encode_kv_entry`] bytes.
const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// `&db` version counters: namespace → the last version given out.
const KV_SEQ: TableDefinition<&str, u64> = TableDefinition::new("kv_seq");

/// Encodes a `&db` entry: version (u64 little-endian), content type length
/// (one byte), content type, value.
fn encode_kv_entry(version: u64, content_type: &str, value: &[u8]) -> Result<Vec<u8>, KvError> {
    let ct_len = u8::try_from(content_type.len()).map_err(|_| KvError::Invalid)?;
    let mut out = Vec::with_capacity(9 + content_type.len() + value.len());
    out.extend_from_slice(&version.to_le_bytes());
    out.push(ct_len);
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(value);
    Ok(out)
}

/// The parts of an encoded `&db` entry: version, content type, value.
fn decode_kv_entry(b: &[u8]) -> Result<(u64, &str, &[u8]), StoreError> {
    let malformed = || StoreError::Malformed { table: "kv" };
    let (version, rest) = b.split_first_chunk::<8>().ok_or_else(malformed)?;
    let (ct_len, rest) = rest.split_first().ok_or_else(malformed)?;
    let (ct, value) = rest
        .split_at_checked(usize::from(*ct_len))
        .ok_or_else(malformed)?;
    let ct = std::str::from_utf8(ct).map_err(|_| malformed())?;
    Ok((u64::from_le_bytes(*version), ct, value))
}

/// The version of the entry `key` of `ns` in `kv`, if it exists.
fn kv_current(
    kv: &redb::Table<'_, (&'static str, &'static str), &'static [u8]>,
    ns: &str,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    let Some(old) = kv.get((ns, key))? else {
        return Ok(None);
    };
    let (version, _, _) = decode_kv_entry(old.value())?;
    Ok(Some(version))
}

/// The embedded default store: one redb file, `<data_dir>/sigma.redb`.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    /// When the last durable commit finished (for [`NONDURABLE_MAX_AGE`]).
    last_durable: Mutex<Instant>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(table: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|_| StoreError::Encode { table })
}

fn decode<T: for<'de> Deserialize<'de>>(table: &'static str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|_| StoreError::Malformed { table })
}

fn session_id_from(b: &[u8]) -> Result<SessionId, StoreError> {
    <[u8; 32]>::try_from(b)
        .map(SessionId)
        .map_err(|_| StoreError::Malformed {
            table: "sessions_by_user",
        })
}

impl RedbStore {
    /// Opens (creating if needed) the store in `data_dir`: the directory is
    /// created with mode 0700 and the database file with mode 0600. Fails
    /// with [`StoreError::Locked`] if another process has it open.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|source| StoreError::CreateDir {
                dir: data_dir.to_owned(),
                source,
            })?;
        let path = data_dir.join(DB_FILE);
        // Created here so that the file is never readable by others, even
        // for a moment; redb initialises an empty file.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: e.into(),
            })?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| match source {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                    dir: data_dir.to_owned(),
                },
                source => StoreError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let store = Self {
            db,
            path,
            last_durable: Mutex::new(Instant::now()),
        };
        store.init()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A store that lives in memory only and is lost when dropped: for
    /// `sigma check`, which builds the route table without touching the
    /// data directory (a running server holds its lock), and for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let path = PathBuf::from(":memory:");
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let store = Self {
            db,
            path,
            last_durable: Mutex::new(Instant::now()),
        };
        store.init()?;
        Ok(store)
    }

    /// Creates the tables and checks the schema version.
    fn init(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(v) if v == SCHEMA_VERSION => {}
                Some(found) => {
                    return Err(StoreError::UnsupportedSchema {
                        path: self.path.clone(),
                        found,
                    })
                }
            }
            txn.open_table(USERS)?;
            txn.open_table(SESSIONS)?;
            txn.open_multimap_table(SESSIONS_BY_USER)?;
            txn.open_table(SECRETS)?;
            txn.open_table(APIKEYS)?;
            txn.open_table(APIKEY_HASHES)?;
        }
        self.commit(txn, true)
    }

    /// Changes the record of user `name` in one transaction (revoking its
    /// sessions with it if `revoke`); `false` if there is no such user.
    fn update_user(
        &self,
        name: &str,
        revoke: bool,
        change: impl FnOnce(&mut UserRecord),
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut users = txn.open_table(USERS)?;
            let Some(old) = users.get(name)? else {
                return Ok(false);
            };
            let mut rec: UserRecord = decode("users", old.value())?;
            drop(old);
            change(&mut rec);
            let bytes = encode("users", &rec)?;
            users.insert(name, bytes.as_slice())?;
            if revoke {
                Self::revoke_all(&txn, name)?;
            }
        }
        self.commit(txn, true)?;
        Ok(true)
    }

    fn commit(&self, mut txn: redb::WriteTransaction, durable: bool) -> Result<(), StoreError> {
        let mut last = self
            .last_durable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let durable = durable || last.elapsed() >= NONDURABLE_MAX_AGE;
        if !durable {
            txn.set_durability(Durability::None)?;
        }
        txn.commit()?;
        if durable {
            *last = Instant::now();
        }
        Ok(())
    }

    /// Deletes every session of `user` inside `txn`; returns how many.
    fn revoke_all(txn: &redb::WriteTransaction, user: &str) -> Result<u64, StoreError> {
        let mut index = txn.open_multimap_table(SESSIONS_BY_USER)?;
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut n = 0;
        for id in index.remove_all(user)? {
            let id = id?;
            if sessions.remove(id.value())?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

impl UserStore for RedbStore {
    fn user_get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let users = txn.open_table(USERS)?;
        let rec = users.get(name)?;
        rec.map(|v| decode("users", v.value())).transpose()
    }

    fn user_create(&self, name: &str, rec: &UserRecord) -> Result<bool, StoreError> {
        if !valid_user_name(name) {
            return Err(StoreError::InvalidUserName);
        }
        let bytes = encode("users", rec)?;
        let txn = self.db.begin_write()?;
        {
            let mut users = txn.open_table(USERS)?;
            if users.get(name)?.is_some() {
                return Ok(false);
            }
            users.insert(name, bytes.as_slice())?;
            // No stale sessions of an earlier user of the same name.
            Self::revoke_all(&txn, name)?;
        }
        self.commit(txn, true)?;
        Ok(true)
    }

    fn user_set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError> {
        self.update_user(name, true, |rec| rec.phc = phc.to_owned())
    }

    fn user_set_groups(&self, name: &str, groups: &[String]) -> Result<bool, StoreError> {
        self.update_user(name, false, |rec| rec.groups = groups.to_vec())
    }

    fn user_delete(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut users = txn.open_table(USERS)?;
            if users.remove(name)?.is_none() {
                return Ok(false);
            }
            Self::revoke_all(&txn, name)?;
        }
        self.commit(txn, true)?;
        Ok(true)
    }

    fn user_list(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let users = txn.open_table(USERS)?;
        let mut names = Vec::new();
        for entry in users.range::<&str>(..)? {
            let (k, _) = entry?;
            names.push(k.value().to_owned());
        }
        // redb orders `&str` keys by their bytes; sort anyway so the
        // contract does not rest on that.
        names.sort();
        Ok(names)
    }

    fn user_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(USERS)?.len()?)
    }
}

impl SessionStore for RedbStore {
    fn session_get(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let sessions = txn.open_table(SESSIONS)?;
        let rec = sessions.get(id.0.as_slice())?;
        rec.map(|v| decode("sessions", v.value())).transpose()
    }

    fn session_put(
        &self,
        id: &SessionId,
        rec: &SessionRecord,
        durable: bool,
    ) -> Result<(), StoreError> {
        let bytes = encode("sessions", rec)?;
        let txn = self.db.begin_write()?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut index = txn.open_multimap_table(SESSIONS_BY_USER)?;
            let old = sessions.insert(id.0.as_slice(), bytes.as_slice())?;
            if let Some(old) = old {
                let old: SessionRecord = decode("sessions", old.value())?;
                if old.user != rec.user {
                    index.remove(old.user.as_str(), id.0.as_slice())?;
                }
            }
            index.insert(rec.user.as_str(), id.0.as_slice())?;
        }
        self.commit(txn, durable)
    }

    fn session_delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let Some(old) = sessions.remove(id.0.as_slice())? else {
                return Ok(false);
            };
            let old: SessionRecord = decode("sessions", old.value())?;
            let mut index = txn.open_multimap_table(SESSIONS_BY_USER)?;
            index.remove(old.user.as_str(), id.0.as_slice())?;
        }
        self.commit(txn, true)?;
        Ok(true)
    }

    fn sessions_of_user(&self, user: &str) -> Result<Vec<SessionId>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_multimap_table(SESSIONS_BY_USER)?;
        let mut ids = Vec::new();
        for id in index.get(user)? {
            ids.push(session_id_from(id?.value())?);
        }
        Ok(ids)
    }

    fn sessions_purge_expired(&self, now_unix: u64) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut expired = Vec::new();
            for entry in sessions.range::<&[u8]>(..)? {
                let (k, v) = entry?;
                let rec: SessionRecord = decode("sessions", v.value())?;
                if rec.expires <= now_unix {
                    expired.push((k.value().to_vec(), rec.user));
                }
            }
            if expired.is_empty() {
                return Ok(0);
            }
            let mut index = txn.open_multimap_table(SESSIONS_BY_USER)?;
            for (id, user) in expired {
                sessions.remove(id.as_slice())?;
                index.remove(user.as_str(), id.as_slice())?;
                n += 1;
            }
        }
        self.commit(txn, true)?;
        Ok(n)
    }
}

impl crate::StoreHealth for RedbStore {
    fn status(&self) -> crate::StoreStatus {
        crate::StoreStatus {
            kind: "redb",
            up: true,
            failures: 0,
            listening: true,
        }
    }
}

impl crate::ApiKeyStore for RedbStore {
    fn apikey_create(&self, name: &str, rec: &crate::ApiKeyRecord) -> Result<bool, StoreError> {
        if !valid_user_name(name) {
            return Err(StoreError::InvalidUserName);
        }
        let txn = self.db.begin_write()?;
        {
            let mut keys = txn.open_table(APIKEYS)?;
            let mut hashes = txn.open_table(APIKEY_HASHES)?;
            if keys.get(name)?.is_some() || hashes.get(rec.hash.as_str())?.is_some() {
                return Ok(false);
            }
            let bytes = encode("apikeys", rec)?;
            keys.insert(name, bytes.as_slice())?;
            hashes.insert(rec.hash.as_str(), name)?;
        }
        self.commit(txn, true)?;
        Ok(true)
    }

    fn apikey_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<(String, crate::ApiKeyRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let hashes = txn.open_table(APIKEY_HASHES)?;
        let Some(name) = hashes.get(hash)?.map(|v| v.value().to_owned()) else {
            return Ok(None);
        };
        let keys = txn.open_table(APIKEYS)?;
        let Some(v) = keys.get(name.as_str())? else {
            return Ok(None);
        };
        let rec: crate::ApiKeyRecord = decode("apikeys", v.value())?;
        Ok(Some((name, rec)))
    }

    fn apikey_list(&self) -> Result<Vec<(String, crate::ApiKeyRecord)>, StoreError> {
        let txn = self.db.begin_read()?;
        let keys = txn.open_table(APIKEYS)?;
        let mut out = Vec::new();
        for row in keys.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), decode("apikeys", v.value())?));
        }
        Ok(out)
    }

    fn apikey_delete(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut keys = txn.open_table(APIKEYS)?;
            let Some(old) = keys.remove(name)? else {
                return Ok(false);
            };
            let rec: crate::ApiKeyRecord = decode("apikeys", old.value())?;
            drop(old);
            txn.open_table(APIKEY_HASHES)?.remove(rec.hash.as_str())?;
        }
        self.commit(txn, true)?;
        Ok(true)
    }
}

impl SecretStore for RedbStore {
    fn secret(&self, name: &str, len: usize) -> Result<Vec<u8>, StoreError> {
        if len == 0 || len > MAX_SECRET_LEN {
            return Err(StoreError::SecretSize(len));
        }
        let check = |stored: Vec<u8>| {
            if stored.len() == len {
                Ok(stored)
            } else {
                Err(StoreError::SecretLength {
                    name: name.to_owned(),
                    stored: stored.len(),
                    wanted: len,
                })
            }
        };
        {
            let txn = self.db.begin_read()?;
            let secrets = txn.open_table(SECRETS)?;
            if let Some(v) = secrets.get(name)? {
                return check(v.value().to_vec());
            }
        }
        let txn = self.db.begin_write()?;
        let value = {
            let mut secrets = txn.open_table(SECRETS)?;
            // Another thread may have created it since the read.
            if let Some(v) = secrets.get(name)? {
                return check(v.value().to_vec());
            }
            let mut value = vec![0u8; len];
            random_bytes(&mut value)?;
            secrets.insert(name, value.as_slice())?;
            value
        };
        self.commit(txn, true)?;
        Ok(value)
    }
}

impl KvStore for RedbStore {
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let kv = match txn.open_table(KV) {
            Ok(t) => t,
            // Created by the first write.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(v) = kv.get((ns, key))? else {
            return Ok(None);
        };
        let (version, content_type, value) = decode_kv_entry(v.value())?;
        Ok(Some(KvEntry {
            value: value.to_vec(),
            content_type: content_type.to_owned(),
            version,
        }))
    }

    fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        content_type: &str,
        expect: &Precondition,
    ) -> Result<KvPut, KvError> {
        if !kv_valid(ns, key) || content_type.len() > MAX_KV_CONTENT_TYPE {
            return Err(KvError::Invalid);
        }
        let txn = self.db.begin_write()?;
        let put = {
            let mut kv = txn.open_table(KV)?;
            let mut seq = txn.open_table(KV_SEQ)?;
            let current = kv_current(&kv, ns, key)?;
            if !expect.holds(current) {
                // Dropping the transaction aborts it.
                return Err(KvError::PreconditionFailed);
            }
            let last = seq.get(ns)?.map(|v| v.value()).unwrap_or(0);
            // Every version is above the key's current one even if the
            // counter were behind (it never is).
            let version = last
                .max(current.unwrap_or(0))
                .checked_add(1)
                .ok_or(StoreError::Malformed { table: "kv_seq" })?;
            seq.insert(ns, version)?;
            let bytes = encode_kv_entry(version, content_type, value)?;
            kv.insert((ns, key), bytes.as_slice())?;
            KvPut {
                created: current.is_none(),
                version,
            }
        };
        self.commit(txn, true)?;
        Ok(put)
    }

    fn kv_delete(
        &self,
        ns: &str,
        key: &str,
        expect: &Precondition,
    ) -> Result<Option<u64>, KvError> {
        if !kv_valid(ns, key) {
            return Err(KvError::Invalid);
        }
        let txn = self.db.begin_write()?;
        let deleted = {
            let mut kv = txn.open_table(KV)?;
            let current = kv_current(&kv, ns, key)?;
            if !expect.holds(current) {
                return Err(KvError::PreconditionFailed);
            }
            if current.is_none() {
                return Ok(None);
            }
            kv.remove((ns, key))?;
            current
        };
        self.commit(txn, true)?;
        Ok(deleted)
    }

    fn kv_list(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KvMeta>, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read()?;
        let kv = match txn.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // The keys with `prefix` are contiguous from `prefix` on.
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded((ns, a)),
            _ => Bound::Included((ns, prefix)),
        };
        let mut out = Vec::new();
        for entry in kv.range::<(&str, &str)>((lower, Bound::Unbounded))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let (k_ns, k_key) = k.value();
            if k_ns != ns || !k_key.starts_with(prefix) {
                break;
            }
            let (version, _, value) = decode_kv_entry(v.value())?;
            out.push(KvMeta {
                key: k_key.to_owned(),
                version,
                size: value.len() as u64,
            });
        }
        Ok(out)
    }

    fn kv_drop_namespace(&self, ns: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let n = {
            let mut kv = txn.open_table(KV)?;
            let mut keys = Vec::new();
            for entry in kv.range::<(&str, &str)>((ns, "")..)? {
                let (k, _) = entry?;
                let (k_ns, k_key) = k.value();
                if k_ns != ns {
                    break;
                }
                keys.push(k_key.to_owned());
            }
            for k in &keys {
                kv.remove((ns, k.as_str()))?;
            }
            txn.open_table(KV_SEQ)?.remove(ns)?;
            keys.len() as u64
        };
        self.commit(txn, true)?;
        Ok(n)
    }
}

/// Everything in a store, for `sigma migrate` (crate::migrate).
#[derive(Debug, Default)]
pub(crate) struct Dump {
    pub(crate) users: Vec<(String, UserRecord)>,
    pub(crate) sessions: Vec<(SessionId, SessionRecord)>,
    pub(crate) secrets: Vec<(String, Vec<u8>)>,
    pub(crate) apikeys: Vec<(String, crate::ApiKeyRecord)>,
    /// (namespace, key, entry).
    pub(crate) kv: Vec<(String, String, KvEntry)>,
    /// namespace → the last version given out.
    pub(crate) kv_seq: Vec<(String, u64)>,
}

impl RedbStore {
    /// Reads the whole store in one read transaction.
    pub(crate) fn dump(&self) -> Result<Dump, StoreError> {
        let txn = self.db.begin_read()?;
        let mut d = Dump::default();
        for entry in txn.open_table(USERS)?.range::<&str>(..)? {
            let (k, v) = entry?;
            d.users
                .push((k.value().to_owned(), decode("users", v.value())?));
        }
        for entry in txn.open_table(SESSIONS)?.range::<&[u8]>(..)? {
            let (k, v) = entry?;
            let id = <[u8; 32]>::try_from(k.value())
                .map(SessionId)
                .map_err(|_| StoreError::Malformed { table: "sessions" })?;
            d.sessions.push((id, decode("sessions", v.value())?));
        }
        for entry in txn.open_table(SECRETS)?.range::<&str>(..)? {
            let (k, v) = entry?;
            d.secrets.push((k.value().to_owned(), v.value().to_vec()));
        }
        for entry in txn.open_table(APIKEYS)?.range::<&str>(..)? {
            let (k, v) = entry?;
            d.apikeys
                .push((k.value().to_owned(), decode("apikeys", v.value())?));
        }
        match txn.open_table(KV) {
            Ok(kv) => {
                for entry in kv.range::<(&str, &str)>(..)? {
                    let (k, v) = entry?;
                    let (ns, key) = k.value();
                    let (version, ct, value) = decode_kv_entry(v.value())?;
                    d.kv.push((
                        ns.to_owned(),
                        key.to_owned(),
                        KvEntry {
                            value: value.to_vec(),
                            content_type: ct.to_owned(),
                            version,
                        },
                    ));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match txn.open_table(KV_SEQ) {
            Ok(seq) => {
                for entry in seq.range::<&str>(..)? {
                    let (k, v) = entry?;
                    d.kv_seq.push((k.value().to_owned(), v.value()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(d)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "sigma-store-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    struct TempStore {
        dir: PathBuf,
        store: Option<RedbStore>,
    }

    impl TempStore {
        fn new(tag: &str) -> Self {
            let dir = temp_dir(tag);
            let store = RedbStore::open(&dir).unwrap();
            Self {
                dir,
                store: Some(store),
            }
        }
        fn s(&self) -> &RedbStore {
            self.store.as_ref().unwrap()
        }
        fn reopen(&mut self) {
            self.store = None;
            self.store = Some(RedbStore::open(&self.dir).unwrap());
        }
    }

    /// The behaviour suite's fixture (`crate::suite`): a file-backed store
    /// in a fresh temporary directory, removed afterwards.
    pub(crate) fn file_fixture() -> crate::suite::Fixture {
        let dir = temp_dir("suite");
        let store = Arc::new(RedbStore::open(&dir).unwrap());
        crate::suite::Fixture::with_cleanup(store, move || {
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            self.store = None;
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    use crate::suite::{id, session, user};

    #[test]
    fn reopen_keeps_everything() {
        let mut t = TempStore::new("reopen");
        t.s().user_create("alice", &user("h")).unwrap();
        t.s()
            .session_put(&id(1), &session("alice", 1000), true)
            .unwrap();
        // A non-durable touch is made durable when the store closes.
        let mut touched = session("alice", 1000);
        touched.last_seen = 500;
        t.s().session_put(&id(1), &touched, false).unwrap();
        let jwt = t.s().secret("jwt", 32).unwrap();
        let cookie = t.s().secret("cookie", 64).unwrap();
        t.reopen();
        assert_eq!(t.s().secret("jwt", 32).unwrap(), jwt);
        assert_eq!(t.s().secret("cookie", 64).unwrap(), cookie);
        assert_eq!(t.s().user_get("alice").unwrap(), Some(user("h")));
        assert_eq!(t.s().session_get(&id(1)).unwrap(), Some(touched));
        assert_eq!(t.s().sessions_of_user("alice").unwrap(), vec![id(1)]);
    }

    #[test]
    fn second_open_is_locked_with_a_plain_message() {
        let t = TempStore::new("locked");
        let err = RedbStore::open(&t.dir).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("is in use by another sigma process")
                && msg.contains(&*t.dir.to_string_lossy()),
            "{msg}"
        );
    }

    #[test]
    fn data_dir_and_file_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = TempStore::new("perms");
        let dir_mode = std::fs::metadata(&t.dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let file_mode = std::fs::metadata(t.dir.join(DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(file_mode & 0o077, 0);
    }

    #[test]
    fn open_fails_cleanly_on_a_bad_directory() {
        let dir = temp_dir("notadir");
        std::fs::write(&dir, b"file").unwrap();
        let err = RedbStore::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
        let _ = std::fs::remove_file(&dir);

        let dir = temp_dir("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = RedbStore::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Env var naming the directory the crash child writes to.
    const CRASH_CHILD_ENV: &str = "STORE_TEST_CRASH_CHILD_DIR";

    /// The child half of `durable_writes_survive_a_crash`: does nothing
    /// unless started by it.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let s = RedbStore::open(Path::new(&dir)).unwrap();
        s.user_create("alice", &user("h")).unwrap();
        s.session_put(&id(1), &session("alice", 1000), true)
            .unwrap();
        s.secret("jwt", 32).unwrap();
        s.session_put(&id(2), &session("alice", 1000), true)
            .unwrap();
        assert!(s.session_delete(&id(2)).unwrap());
        // No drop, no close: the process dies here.
        std::process::abort();
    }

    #[test]
    fn durable_writes_survive_a_crash() {
        let dir = temp_dir("crash");
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "redb_store::tests::crash_child", "--nocapture"])
            .env(CRASH_CHILD_ENV, &dir)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the child did not crash: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), Some(6), "{:?}", out.status); // SIGABRT
        }
        let s = RedbStore::open(&dir).unwrap();
        assert_eq!(s.user_get("alice").unwrap(), Some(user("h")));
        assert_eq!(s.session_get(&id(1)).unwrap(), Some(session("alice", 1000)));
        assert_eq!(s.session_get(&id(2)).unwrap(), None);
        assert_eq!(s.sessions_of_user("alice").unwrap(), vec![id(1)]);
        assert_eq!(s.secret("jwt", 32).unwrap().len(), 32);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn in_memory_has_no_file() {
        let s = RedbStore::in_memory().unwrap();
        assert_eq!(s.path(), Path::new(":memory:"));
        assert!(s.user_create("x", &user("h")).unwrap());
    }

    fn kv_put(s: &RedbStore, ns: &str, key: &str, v: &[u8], pre: &Precondition) -> KvPut {
        s.kv_put(ns, key, v, "text/plain", pre).unwrap()
    }

    #[test]
    fn kv_reopen_keeps_entries_and_counters() {
        let mut t = TempStore::new("kv-reopen");
        kv_put(t.s(), "alice", "k", b"v", &Precondition::none());
        kv_put(t.s(), "alice", "k", b"w", &Precondition::none());
        t.s()
            .kv_delete("alice", "k", &Precondition::none())
            .unwrap();
        kv_put(t.s(), "alice", "j", &[0, 255, 1], &Precondition::none());
        t.reopen();
        let e = t.s().kv_get("alice", "j").unwrap().unwrap();
        assert_eq!((e.value, e.version), (vec![0, 255, 1], 3));
        assert_eq!(
            kv_put(t.s(), "alice", "k", b"x", &Precondition::absent()).version,
            4
        );
    }

    #[test]
    fn kv_entry_decoding_rejects_garbage() {
        let enc = encode_kv_entry(5, "a/b", b"xyz").unwrap();
        assert_eq!(decode_kv_entry(&enc).unwrap(), (5, "a/b", &b"xyz"[..]));
        for bad in [&enc[..3], &enc[..8], &enc[..10]] {
            assert!(decode_kv_entry(bad).is_err());
        }
        let mut bad_utf8 = enc.clone();
        bad_utf8[9] = 0xff;
        assert!(decode_kv_entry(&bad_utf8).is_err());
    }
}
