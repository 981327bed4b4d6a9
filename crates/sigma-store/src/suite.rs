//! The behaviour tests of the storage traits, written once against
//! [`Store`] and run against every implementation.
//!
//! Test-only; below everything else in the crate. Each test takes a
//! [`Fixture`] (a fresh, empty store) and uses nothing but the traits, so
//! it says what any implementation must do (redb and PostgreSQL).
//! What only one implementation can show (a file lock, a crash, a
//! reopen) stays in that implementation's own tests. Adding an
//! implementation is one line at the bottom of this file:
//! `store_suite!(name: fixture_expression);`.

use std::collections::HashSet;
use std::sync::Arc;

use crate::{
    KvEntry, KvError, KvMeta, KvPut, KvStore, KvTags, Precondition, SessionId, SessionRecord,
    Store, StoreError, UserRecord, MAX_KV_CONTENT_TYPE, MAX_SECRET_LEN,
};

/// A fresh, empty store for one test, and what to do when the test is
/// done with it (remove a temporary directory, drop a schema).
pub(crate) struct Fixture {
    store: Option<Arc<dyn Store>>,
    cleanup: Option<Box<dyn FnOnce()>>,
}

impl Fixture {
    /// A store that needs no cleaning up.
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store: Some(store),
            cleanup: None,
        }
    }

    /// No store: the implementation's server is not there and not
    /// required (see `pg_store::tests`); every test passes at once.
    pub(crate) fn skipped() -> Self {
        Self {
            store: None,
            cleanup: None,
        }
    }

    /// A store whose leftovers `cleanup` removes after it is dropped.
    pub(crate) fn with_cleanup(store: Arc<dyn Store>, cleanup: impl FnOnce() + 'static) -> Self {
        Self {
            store: Some(store),
            cleanup: Some(Box::new(cleanup)),
        }
    }

    fn s(&self) -> &dyn Store {
        &**self.shared_ref()
    }

    fn shared_ref(&self) -> &Arc<dyn Store> {
        self.store
            .as_ref()
            .expect("the store lives as long as the fixture")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The store first: redb (say) holds its file until dropped.
        self.store = None;
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

/// Declares `mod $name` with one `#[test]` per behaviour test, each on a
/// fresh store from `$fixture` (an expression giving a [`Fixture`]).
macro_rules! store_suite {
    ($name:ident: $fixture:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            store_suite!(@tests $fixture;
                users_crud,
                user_groups,
                apikeys,
                user_names_are_checked,
                sessions_crud_and_index,
                password_change_and_delete_revoke_sessions,
                creating_a_user_clears_stale_sessions,
                purge_expired,
                secrets,
                secret_created_once_under_contention,
                kv_reads_before_any_write,
                kv_crud_versions_and_preconditions,
                kv_namespaces_are_separate,
                kv_list_by_prefix_in_pages,
                usable_as_trait_objects,
            );
        }
    };
    (@tests $fixture:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let fixture: $crate::suite::Fixture = $fixture;
                if fixture.store.is_some() {
                    $crate::suite::$test(&fixture);
                }
            }
        )*
    };
}

pub(crate) fn user(phc: &str) -> UserRecord {
    UserRecord {
        phc: phc.into(),
        created: 1_700_000_000,
        groups: Vec::new(),
    }
}

pub(crate) fn session(user: &str, expires: u64) -> SessionRecord {
    SessionRecord {
        user: user.into(),
        provider: "password".into(),
        created: 100,
        last_seen: 100,
        expires,
        groups: Vec::new(),
    }
}

pub(crate) fn id(b: u8) -> SessionId {
    SessionId([b; 32])
}

pub(crate) fn users_crud(f: &Fixture) {
    let s = f.s();
    assert_eq!(s.user_count().unwrap(), 0);
    assert_eq!(s.user_list().unwrap(), Vec::<String>::new());
    assert_eq!(s.user_get("bob").unwrap(), None);
    assert!(s.user_create("bob", &user("h1")).unwrap());
    assert!(!s.user_create("bob", &user("other")).unwrap());
    assert!(s.user_create("alice", &user("h2")).unwrap());
    assert!(s.user_create("Zed", &user("h3")).unwrap());
    assert_eq!(s.user_get("bob").unwrap(), Some(user("h1")));
    assert_eq!(s.user_count().unwrap(), 3);
    assert_eq!(s.user_list().unwrap(), vec!["Zed", "alice", "bob"]);
    assert!(s.user_set_password("bob", "h9").unwrap());
    assert_eq!(s.user_get("bob").unwrap().unwrap().phc, "h9");
    assert_eq!(s.user_get("bob").unwrap().unwrap().created, 1_700_000_000);
    assert!(!s.user_set_password("nobody", "h").unwrap());
    assert!(s.user_delete("bob").unwrap());
    assert!(!s.user_delete("bob").unwrap());
    assert_eq!(s.user_get("bob").unwrap(), None);
    assert_eq!(s.user_count().unwrap(), 2);
    assert!(matches!(
        s.user_create("a b", &user("h")),
        Err(StoreError::InvalidUserName)
    ));
}

pub(crate) fn user_groups(f: &Fixture) {
    let s = f.s();
    let g = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut rec = user("h1");
    rec.groups = g(&["admins", "ops"]);
    assert!(s.user_create("carol", &rec).unwrap());
    assert_eq!(
        s.user_get("carol").unwrap().unwrap().groups,
        g(&["admins", "ops"])
    );
    s.session_put(&id(7), &session("carol", 4_000_000_000_000), true)
        .unwrap();
    assert!(s.user_set_groups("carol", &g(&["ops"])).unwrap());
    assert_eq!(s.user_get("carol").unwrap().unwrap().groups, g(&["ops"]));
    // Groups change; sessions stay, the password stays.
    assert!(s.session_get(&id(7)).unwrap().is_some());
    assert_eq!(s.user_get("carol").unwrap().unwrap().phc, "h1");
    assert!(s.user_set_groups("carol", &[]).unwrap());
    assert!(s.user_get("carol").unwrap().unwrap().groups.is_empty());
    assert!(!s.user_set_groups("nobody", &g(&["x"])).unwrap());
    // A session keeps the groups its login brought.
    let mut rec = session("carol", 4_000_000_000_000);
    rec.groups = g(&["oidc-team"]);
    s.session_put(&id(8), &rec, true).unwrap();
    assert_eq!(
        s.session_get(&id(8)).unwrap().unwrap().groups,
        g(&["oidc-team"])
    );
}

pub(crate) fn apikeys(f: &Fixture) {
    let s = f.s();
    let rec = |h: &str| crate::ApiKeyRecord {
        hash: h.repeat(64),
        groups: vec!["bots".into()],
        created: 5,
    };
    assert!(s.apikey_list().unwrap().is_empty());
    assert!(s.apikey_create("robot", &rec("a")).unwrap());
    assert!(!s.apikey_create("robot", &rec("b")).unwrap(), "same name");
    assert!(!s.apikey_create("other", &rec("a")).unwrap(), "same hash");
    assert_eq!(
        s.apikey_by_hash(&"a".repeat(64)).unwrap(),
        Some(("robot".to_owned(), rec("a")))
    );
    assert_eq!(s.apikey_by_hash(&"c".repeat(64)).unwrap(), None);
    assert!(s.apikey_create("beta", &rec("b")).unwrap());
    let names: Vec<String> = s
        .apikey_list()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["beta", "robot"]);
    assert!(s.apikey_delete("robot").unwrap());
    assert!(!s.apikey_delete("robot").unwrap());
    assert_eq!(s.apikey_by_hash(&"a".repeat(64)).unwrap(), None);
    // The hash is free again once its key is gone.
    assert!(s.apikey_create("again", &rec("a")).unwrap());
    assert!(matches!(
        s.apikey_create("a b", &rec("d")),
        Err(StoreError::InvalidUserName)
    ));
}

pub(crate) fn user_names_are_checked(f: &Fixture) {
    let s = f.s();
    for bad in ["", &"x".repeat(65), "a/b", "a\0", "é"] {
        assert!(
            matches!(
                s.user_create(bad, &user("h")),
                Err(StoreError::InvalidUserName)
            ),
            "{bad:?}"
        );
    }
    assert_eq!(s.user_count().unwrap(), 0);
    assert!(s.user_create(&"x".repeat(64), &user("h")).unwrap());
}

pub(crate) fn sessions_crud_and_index(f: &Fixture) {
    let s = f.s();
    assert_eq!(s.session_get(&id(1)).unwrap(), None);
    s.session_put(&id(1), &session("alice", 1000), true)
        .unwrap();
    s.session_put(&id(2), &session("alice", 1000), false)
        .unwrap();
    s.session_put(&id(3), &session("bob", 1000), true).unwrap();
    assert_eq!(s.session_get(&id(1)).unwrap(), Some(session("alice", 1000)));
    assert_eq!(s.session_get(&id(2)).unwrap(), Some(session("alice", 1000)));
    let mut a = s.sessions_of_user("alice").unwrap();
    a.sort_by_key(|i| i.0);
    assert_eq!(a, vec![id(1), id(2)]);
    assert_eq!(s.sessions_of_user("bob").unwrap(), vec![id(3)]);
    assert_eq!(s.sessions_of_user("nobody").unwrap(), vec![]);

    // A touch replaces the record.
    let mut touched = session("alice", 1000);
    touched.last_seen = 200;
    s.session_put(&id(1), &touched, false).unwrap();
    assert_eq!(s.session_get(&id(1)).unwrap(), Some(touched));
    assert_eq!(s.sessions_of_user("alice").unwrap().len(), 2);

    // Re-assigning a session to another user moves it in the index.
    s.session_put(&id(2), &session("bob", 1000), true).unwrap();
    assert_eq!(s.sessions_of_user("alice").unwrap(), vec![id(1)]);
    assert_eq!(s.sessions_of_user("bob").unwrap().len(), 2);

    assert!(s.session_delete(&id(1)).unwrap());
    assert!(!s.session_delete(&id(1)).unwrap());
    assert_eq!(s.session_get(&id(1)).unwrap(), None);
    assert_eq!(s.sessions_of_user("alice").unwrap(), vec![]);
}

pub(crate) fn password_change_and_delete_revoke_sessions(f: &Fixture) {
    let s = f.s();
    s.user_create("alice", &user("h")).unwrap();
    s.user_create("bob", &user("h")).unwrap();
    s.session_put(&id(1), &session("alice", 1000), true)
        .unwrap();
    s.session_put(&id(2), &session("alice", 1000), false)
        .unwrap();
    s.session_put(&id(3), &session("bob", 1000), true).unwrap();
    assert!(s.user_set_password("alice", "h2").unwrap());
    assert_eq!(s.session_get(&id(1)).unwrap(), None);
    assert_eq!(s.session_get(&id(2)).unwrap(), None);
    assert_eq!(s.sessions_of_user("alice").unwrap(), vec![]);
    assert!(s.session_get(&id(3)).unwrap().is_some());

    s.session_put(&id(4), &session("bob", 1000), true).unwrap();
    assert!(s.user_delete("bob").unwrap());
    assert_eq!(s.session_get(&id(3)).unwrap(), None);
    assert_eq!(s.session_get(&id(4)).unwrap(), None);
    assert_eq!(s.sessions_of_user("bob").unwrap(), vec![]);
}

pub(crate) fn creating_a_user_clears_stale_sessions(f: &Fixture) {
    let s = f.s();
    // A session left behind for a name nobody has (yet).
    s.session_put(&id(1), &session("carol", 1000), true)
        .unwrap();
    assert!(s.user_create("carol", &user("h")).unwrap());
    assert_eq!(s.session_get(&id(1)).unwrap(), None);
    assert_eq!(s.sessions_of_user("carol").unwrap(), vec![]);
    // An existing user's sessions are not touched by a failed create.
    s.session_put(&id(2), &session("carol", 1000), true)
        .unwrap();
    assert!(!s.user_create("carol", &user("other")).unwrap());
    assert!(s.session_get(&id(2)).unwrap().is_some());
}

pub(crate) fn purge_expired(f: &Fixture) {
    let s = f.s();
    assert_eq!(s.sessions_purge_expired(10_000).unwrap(), 0);
    s.session_put(&id(1), &session("alice", 100), true).unwrap();
    s.session_put(&id(2), &session("alice", 200), true).unwrap();
    s.session_put(&id(3), &session("bob", 300), true).unwrap();
    assert_eq!(s.sessions_purge_expired(99).unwrap(), 0);
    // `expires` is the first instant the session is dead.
    assert_eq!(s.sessions_purge_expired(200).unwrap(), 2);
    assert_eq!(s.session_get(&id(1)).unwrap(), None);
    assert_eq!(s.session_get(&id(2)).unwrap(), None);
    assert!(s.session_get(&id(3)).unwrap().is_some());
    assert_eq!(s.sessions_of_user("alice").unwrap(), vec![]);
    assert_eq!(s.sessions_of_user("bob").unwrap(), vec![id(3)]);
}

pub(crate) fn secrets(f: &Fixture) {
    let s = f.s();
    let a = s.secret("jwt", 32).unwrap();
    assert_eq!(a.len(), 32);
    assert_ne!(a, vec![0u8; 32]);
    assert_eq!(s.secret("jwt", 32).unwrap(), a);
    let b = s.secret("cookie", 64).unwrap();
    assert_eq!(b.len(), 64);
    assert_ne!(a, b[..32]);
    assert!(matches!(
        s.secret("jwt", 16),
        Err(StoreError::SecretLength {
            stored: 32,
            wanted: 16,
            ..
        })
    ));
    assert!(matches!(s.secret("x", 0), Err(StoreError::SecretSize(0))));
    assert!(matches!(
        s.secret("x", MAX_SECRET_LEN + 1),
        Err(StoreError::SecretSize(_))
    ));
    assert_eq!(s.secret("x", MAX_SECRET_LEN).unwrap().len(), MAX_SECRET_LEN);
    assert_eq!(s.secret("jwt", 32).unwrap(), a);
}

pub(crate) fn secret_created_once_under_contention(f: &Fixture) {
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(f.shared_ref());
            std::thread::spawn(move || s.secret("k", 32).unwrap())
        })
        .collect();
    let got: HashSet<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got.len(), 1);
}

fn kv_put(s: &dyn KvStore, ns: &str, key: &str, v: &[u8], pre: &Precondition) -> KvPut {
    s.kv_put(ns, key, v, "text/plain", pre).unwrap()
}

pub(crate) fn kv_reads_before_any_write(f: &Fixture) {
    let s = f.s();
    assert_eq!(s.kv_get("alice", "k").unwrap(), None);
    assert_eq!(s.kv_list("alice", "", None, 10).unwrap(), vec![]);
    assert_eq!(s.kv_drop_namespace("alice").unwrap(), 0);
}

pub(crate) fn kv_crud_versions_and_preconditions(f: &Fixture) {
    let s = f.s();
    let any = Precondition::none();
    let p1 = kv_put(s, "alice", "k", b"one", &any);
    assert_eq!(
        p1,
        KvPut {
            created: true,
            version: 1
        }
    );
    let e = s.kv_get("alice", "k").unwrap().unwrap();
    assert_eq!(
        e,
        KvEntry {
            value: b"one".to_vec(),
            content_type: "text/plain".into(),
            version: 1
        }
    );
    // Create-only fails on an existing key; nothing changes.
    assert!(matches!(
        s.kv_put("alice", "k", b"x", "", &Precondition::absent()),
        Err(KvError::PreconditionFailed)
    ));
    // If-Match with the wrong version fails, with the right one works.
    assert!(matches!(
        s.kv_put("alice", "k", b"x", "", &Precondition::version(7)),
        Err(KvError::PreconditionFailed)
    ));
    assert_eq!(s.kv_get("alice", "k").unwrap(), Some(e));
    let p2 = kv_put(s, "alice", "k", b"two", &Precondition::version(1));
    assert_eq!(
        p2,
        KvPut {
            created: false,
            version: 2
        }
    );
    assert_eq!(s.kv_get("alice", "k").unwrap().unwrap().value, b"two");
    // If-Match: * needs the key to exist.
    let star = Precondition {
        if_match: Some(KvTags::Any),
        if_none_match: None,
    };
    assert!(matches!(
        s.kv_put("alice", "nope", b"x", "", &star),
        Err(KvError::PreconditionFailed)
    ));
    // A list matches any of its versions.
    let list = Precondition {
        if_match: Some(KvTags::Versions(vec![9, 2])),
        if_none_match: None,
    };
    assert_eq!(kv_put(s, "alice", "k", b"3", &list).version, 3);
    // Delete: conditional, then 'gone'.
    assert!(matches!(
        s.kv_delete("alice", "k", &Precondition::version(2)),
        Err(KvError::PreconditionFailed)
    ));
    assert_eq!(
        s.kv_delete("alice", "k", &Precondition::version(3))
            .unwrap(),
        Some(3)
    );
    assert_eq!(s.kv_delete("alice", "k", &any).unwrap(), None);
    assert_eq!(s.kv_get("alice", "k").unwrap(), None);
    // A deleted key's versions are never reused.
    let p4 = kv_put(s, "alice", "k", b"again", &Precondition::absent());
    assert_eq!(
        p4,
        KvPut {
            created: true,
            version: 4
        }
    );
    // Invalid input is refused, not stored.
    for (ns, key, ct) in [("", "k", ""), ("a", "", ""), ("a", "k\0", "")] {
        assert!(matches!(
            s.kv_put(ns, key, b"", ct, &any),
            Err(KvError::Invalid)
        ));
    }
    assert!(matches!(s.kv_delete("a", "", &any), Err(KvError::Invalid)));
    let long_ct = "x".repeat(MAX_KV_CONTENT_TYPE + 1);
    assert!(matches!(
        s.kv_put("a", "k", b"", &long_ct, &any),
        Err(KvError::Invalid)
    ));
    assert_eq!(s.kv_get("a", "k").unwrap(), None);
    let ct = "x".repeat(MAX_KV_CONTENT_TYPE);
    kv_put(s, "a", "k", b"", &Precondition::none());
    s.kv_put("a", "k2", b"", &ct, &any).unwrap();
    assert_eq!(s.kv_get("a", "k2").unwrap().unwrap().content_type, ct);
}

pub(crate) fn kv_namespaces_are_separate(f: &Fixture) {
    let s = f.s();
    kv_put(s, "alice", "k", b"a", &Precondition::none());
    assert_eq!(s.kv_get("bob", "k").unwrap(), None);
    // Versions count per namespace.
    assert_eq!(
        kv_put(s, "bob", "k", b"b", &Precondition::none()).version,
        1
    );
    assert_eq!(s.kv_get("alice", "k").unwrap().unwrap().value, b"a");
    assert_eq!(
        s.kv_delete("bob", "k", &Precondition::none()).unwrap(),
        Some(1)
    );
    assert!(s.kv_get("alice", "k").unwrap().is_some());
}

pub(crate) fn kv_list_by_prefix_in_pages(f: &Fixture) {
    let s = f.s();
    for k in ["a", "a/1", "a/2", "a/3", "ab", "b", "b/1"] {
        kv_put(s, "alice", k, k.as_bytes(), &Precondition::none());
    }
    kv_put(s, "alf", "a/9", b"x", &Precondition::none());
    kv_put(s, "alicf", "a/0", b"x", &Precondition::none());
    let keys = |v: Vec<KvMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.kv_list("alice", "a", None, 100).unwrap()),
        ["a", "a/1", "a/2", "a/3", "ab"]
    );
    assert_eq!(
        keys(s.kv_list("alice", "a/", None, 100).unwrap()),
        ["a/1", "a/2", "a/3"]
    );
    assert_eq!(keys(s.kv_list("alice", "", None, 100).unwrap()).len(), 7);
    assert_eq!(
        keys(s.kv_list("alice", "c", None, 100).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        keys(s.kv_list("alice", "a/", None, 2).unwrap()),
        ["a/1", "a/2"]
    );
    assert_eq!(
        keys(s.kv_list("alice", "a/", Some("a/2"), 2).unwrap()),
        ["a/3"]
    );
    // `after` before the prefix starts at the prefix.
    assert_eq!(
        keys(s.kv_list("alice", "b", Some("a"), 10).unwrap()),
        ["b", "b/1"]
    );
    assert_eq!(
        keys(s.kv_list("alice", "", None, 0).unwrap()),
        Vec::<String>::new()
    );
    let m = s.kv_list("alice", "a/1", None, 10).unwrap();
    assert_eq!(
        m,
        vec![KvMeta {
            key: "a/1".into(),
            version: 2,
            size: 3
        }]
    );
    assert_eq!(s.kv_drop_namespace("alice").unwrap(), 7);
    assert_eq!(
        keys(s.kv_list("alice", "", None, 100).unwrap()),
        Vec::<String>::new()
    );
    assert!(s.kv_get("alf", "a/9").unwrap().is_some());
    assert!(s.kv_get("alicf", "a/0").unwrap().is_some());
    assert_eq!(s.kv_drop_namespace("nobody").unwrap(), 0);
    // A dropped namespace counts its versions from 1 again.
    assert_eq!(
        kv_put(s, "alice", "a", b"new", &Precondition::absent()).version,
        1
    );
}

pub(crate) fn usable_as_trait_objects(f: &Fixture) {
    let s: Arc<dyn Store> = Arc::clone(f.shared_ref());
    assert!(s.user_create("x", &user("h")).unwrap());
    assert_eq!(s.user_list().unwrap(), vec!["x"]);
    // Each part upcasts to its own narrow trait.
    let sessions: Arc<dyn crate::SessionStore> = s.clone();
    sessions
        .session_put(&id(9), &session("x", 1000), true)
        .unwrap();
    let users: Arc<dyn crate::UserStore> = s.clone();
    assert!(users.user_delete("x").unwrap());
    assert_eq!(sessions.session_get(&id(9)).unwrap(), None);
    let kv: Arc<dyn KvStore> = s.clone();
    assert_eq!(kv.kv_get("x", "k").unwrap(), None);
    let secrets: Arc<dyn crate::SecretStore> = s;
    assert_eq!(secrets.secret("s", 8).unwrap().len(), 8);
}

// The implementations. A new one adds its line here.
store_suite!(redb_file: crate::redb_store::tests::file_fixture());
store_suite!(redb_memory: Fixture::new(Arc::new(crate::RedbStore::in_memory().unwrap())));
store_suite!(postgres: crate::pg_store::tests::fixture());
