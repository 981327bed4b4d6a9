//! The `sigma migrate` round trip: everything written to redb reads the
//! same from PostgreSQL afterwards, through the traits.

use std::sync::Arc;

use crate::pg_store::tests::TestDb;
use crate::suite::{id, session, user};
use crate::*;

#[test]
fn redb_to_postgres_round_trip() {
    let Some(db) = TestDb::create() else { return };
    let from = RedbStore::in_memory().unwrap();
    from.user_create("alice", &user("h1")).unwrap();
    let mut bob = user("h2");
    bob.groups = vec!["ops".into()];
    from.user_create("bob", &bob).unwrap();
    let key = ApiKeyRecord {
        hash: "a".repeat(64),
        groups: vec!["bots".into()],
        created: 7,
    };
    from.apikey_create("robot", &key).unwrap();
    from.session_put(&id(1), &session("alice", 5000), true)
        .unwrap();
    from.session_put(&id(2), &session("bob", 6000), true)
        .unwrap();
    let jwt = from.secret("jwt", 32).unwrap();
    let any = Precondition::none();
    from.kv_put("alice", "a/1", b"one", "text/plain", &any)
        .unwrap();
    from.kv_put("alice", "a/2", &[0, 255], "application/octet-stream", &any)
        .unwrap();
    from.kv_put("alice", "gone", b"x", "", &any).unwrap();
    from.kv_delete("alice", "gone", &any).unwrap();
    from.kv_put("\u{1}shared:room", "k", b"s", "", &any)
        .unwrap();

    let to = Arc::new(db.store());
    // A node that ran before the migration made its own secret: replaced.
    to.secret("jwt", 32).unwrap();
    let r = migrate_redb_to_pg(&from, &to).unwrap();
    assert_eq!(
        r,
        MigrateReport {
            users: 2,
            sessions: 2,
            secrets: 1,
            apikeys: 1,
            kv_entries: 3
        }
    );
    assert_eq!(to.user_list().unwrap(), ["alice", "bob"]);
    // Groups and API keys come along.
    assert_eq!(to.user_get("bob").unwrap(), Some(bob));
    assert_eq!(
        to.apikey_by_hash(&"a".repeat(64)).unwrap(),
        Some(("robot".to_owned(), key))
    );
    assert_eq!(
        to.session_get(&id(1)).unwrap(),
        Some(session("alice", 5000))
    );
    assert_eq!(to.sessions_of_user("bob").unwrap(), vec![id(2)]);
    assert_eq!(to.secret("jwt", 32).unwrap(), jwt);
    assert_eq!(
        to.kv_get("alice", "a/2").unwrap(),
        from.kv_get("alice", "a/2").unwrap()
    );
    assert_eq!(
        to.kv_list("alice", "", None, 10).unwrap(),
        from.kv_list("alice", "", None, 10).unwrap()
    );
    assert_eq!(
        to.kv_get("\u{1}shared:room", "k").unwrap().unwrap().value,
        b"s"
    );
    // The counter came along: the next version is 4 (after the deleted
    // `gone`), not 1.
    assert_eq!(to.kv_put("alice", "new", b"", "", &any).unwrap().version, 4);
    // A second migration into the now non-empty store is refused.
    let err = migrate_redb_to_pg(&from, &to).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}
