//! The key-value store behind `&db` (DESIGN §6): entries, versions and
//! conditional writes.
//!
//! Below the `&db` destination, which parses `If-Match` / `If-None-Match`
//! into a [`Precondition`] and checks names and sizes first. Nothing here
//! stores anything: the storage is a [`KvStore`] implementation.

/// Longest content type stored with a `&db` value, in bytes.
pub const MAX_KV_CONTENT_TYPE: usize = 255;

use crate::{KvError, StoreError};

/// A `&db` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The value, as stored.
    pub value: Vec<u8>,
    /// The content type given when it was stored.
    pub content_type: String,
    /// Its version (the `ETag` is `"v<version>"`).
    pub version: u64,
}

/// A `&db` entry in a listing: no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMeta {
    /// The key.
    pub key: String,
    /// Its version.
    pub version: u64,
    /// The value's length in bytes.
    pub size: u64,
}

/// What [`KvStore::kv_put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPut {
    /// The key did not exist before.
    pub created: bool,
    /// The new version.
    pub version: u64,
}

/// A set of versions in a precondition: `*` (any existing version) or a
/// list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvTags {
    /// `*`: the key exists, whatever its version.
    Any,
    /// One of these versions (an empty list matches nothing).
    Versions(Vec<u64>),
}

impl KvTags {
    /// True when a key at version `current` (`None`: absent) is in the set.
    pub fn matches(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (_, None) => false,
            (Self::Any, Some(_)) => true,
            (Self::Versions(v), Some(c)) => v.contains(&c),
        }
    }
}

/// The conditions of a conditional write (RFC 9110 §13.1.1, §13.1.2):
/// with none set, it always holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    /// `If-Match`: the current version must be in the set.
    pub if_match: Option<KvTags>,
    /// `If-None-Match`: the current version must not be in the set
    /// (`Any`: the key must not exist).
    pub if_none_match: Option<KvTags>,
}

impl Precondition {
    /// Holds unconditionally.
    pub fn none() -> Self {
        Self::default()
    }

    /// Holds only when the key does not exist (`If-None-Match: *`).
    pub fn absent() -> Self {
        Self {
            if_match: None,
            if_none_match: Some(KvTags::Any),
        }
    }

    /// Holds only when the key is at `version`.
    pub fn version(version: u64) -> Self {
        Self {
            if_match: Some(KvTags::Versions(vec![version])),
            if_none_match: None,
        }
    }

    /// True when it holds for a key at version `current` (`None`: absent).
    pub fn holds(&self, current: Option<u64>) -> bool {
        self.if_match.as_ref().is_none_or(|m| m.matches(current))
            && self
                .if_none_match
                .as_ref()
                .is_none_or(|n| !n.matches(current))
    }
}

/// A `&db` change made by another process on the same store (another
/// sigma node on the same PostgreSQL), for the local watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvChange {
    /// The namespace.
    pub ns: String,
    /// The key.
    pub key: String,
    /// The new version; `None` for a delete.
    pub version: Option<u64>,
}

/// Told of every [`KvChange`] from elsewhere; returns `false` once it
/// wants no more (its receiver is gone), and is then dropped.
pub type KvListener = Box<dyn Fn(&KvChange) -> bool + Send + Sync>;

/// True for a namespace and key a store accepts: both non-empty, no NUL
/// in the key.
pub(crate) fn kv_valid(ns: &str, key: &str) -> bool {
    !ns.is_empty() && !key.is_empty() && !key.contains('\0')
}

/// The key-value store of `&db` (DESIGN §6): versioned entries in
/// namespaces (one per user). Each method is one transaction.
pub trait KvStore: Send + Sync {
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
    /// Registers `listener` for the changes other processes commit to the
    /// same store (`watch` across nodes); `false` if this store has no
    /// other writers (the embedded store: every change is local, and the
    /// caller already knows it). Changes are delivered in commit order,
    /// after their commit; the caller's own writes are not repeated.
    fn kv_listen_remote(&self, listener: KvListener) -> bool {
        drop(listener);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn preconditions() {
        let none = Precondition::none();
        assert!(none.holds(None) && none.holds(Some(1)));
        let absent = Precondition::absent();
        assert!(absent.holds(None) && !absent.holds(Some(1)));
        let v = Precondition::version(2);
        assert!(v.holds(Some(2)) && !v.holds(Some(1)) && !v.holds(None));
        let not_2 = Precondition {
            if_match: None,
            if_none_match: Some(KvTags::Versions(vec![2])),
        };
        assert!(not_2.holds(None) && not_2.holds(Some(1)) && !not_2.holds(Some(2)));
        let empty = KvTags::Versions(vec![]);
        assert!(!empty.matches(Some(1)) && !empty.matches(None));
    }
}
