//! PostgreSQL test databases, and what only [`PgStore`] can show (two
//! handles on one database, a lost connection, the schema version).
//!
//! Every test gets a database of its own, `sigma_test_<random>`, created
//! on the server of `SIGMA_TEST_POSTGRES` (default
//! [`DEFAULT_TEST_POSTGRES`]) and dropped afterwards. Without the
//! variable and without a server there, the tests say so and pass (plain
//! `cargo test` on a machine without PostgreSQL); `scripts/test.sh` always
//! sets the variable, and then an unreachable server fails them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::suite::{id, session, user, Fixture};

/// The variable naming the test server (an admin connection string).
pub(crate) const TEST_POSTGRES_ENV: &str = "SIGMA_TEST_POSTGRES";
/// Where the tests look without it.
pub(crate) const DEFAULT_TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs `sql` over a fresh connection to `cfg`.
fn admin(cfg: &tokio_postgres::Config, sql: &str) -> Result<(), tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = cfg.connect(NoTls).await?;
        let driver = tokio::spawn(conn);
        let r = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        r
    })
}

/// A database of its own on the test server, dropped with it.
pub(crate) struct TestDb {
    admin: tokio_postgres::Config,
    name: String,
}

impl TestDb {
    /// A fresh database; `None` (with a note on stderr) when no server is
    /// configured and none answers at the default address.
    pub(crate) fn create() -> Option<Self> {
        let (url, required) = match std::env::var(TEST_POSTGRES_ENV) {
            Ok(u) => (u, true),
            Err(_) => (DEFAULT_TEST_POSTGRES.to_owned(), false),
        };
        let mut cfg: tokio_postgres::Config = url.parse().expect("SIGMA_TEST_POSTGRES parses");
        cfg.connect_timeout(Duration::from_secs(5));
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut r = [0u8; 6];
        random_bytes(&mut r).expect("random");
        let name = format!(
            "sigma_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            r.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        match admin(&cfg, &format!("CREATE DATABASE {name}")) {
            Ok(()) => Some(Self { admin: cfg, name }),
            Err(e) if !required => {
                eprintln!(
                    "no PostgreSQL at {DEFAULT_TEST_POSTGRES} ({e}); set {TEST_POSTGRES_ENV} \
                     (scripts/test.sh does) to run the PostgreSQL store tests"
                );
                None
            }
            Err(e) => panic!("{TEST_POSTGRES_ENV}: cannot create a test database: {e}"),
        }
    }

    /// The connection config of the test database.
    pub(crate) fn config(&self) -> tokio_postgres::Config {
        let mut cfg = self.admin.clone();
        cfg.dbname(&self.name);
        cfg
    }

    /// A store on it.
    pub(crate) fn store(&self) -> PgStore {
        PgStore::connect_with(self.config()).expect("PgStore on the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The behaviour suite's fixture: a store on a fresh database.
pub(crate) fn fixture() -> Fixture {
    let Some(db) = TestDb::create() else {
        return Fixture::skipped();
    };
    let store = Arc::new(db.store());
    Fixture::with_cleanup(store, move || drop(db))
}

/// Waits up to 10 s for `rx` to give something.
fn recv<T>(rx: &std::sync::mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("nothing arrived within 10 s")
}

#[test]
fn two_handles_share_everything_and_watch_each_other() {
    let Some(db) = TestDb::create() else { return };
    let a = db.store();
    let b = db.store();
    let (tx, rx) = std::sync::mpsc::channel();
    assert!(b.kv_listen_remote(Box::new(move |c| tx.send(c.clone()).is_ok())));
    // The listener connects in the background: wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.status().listening {
        assert!(Instant::now() < deadline, "the listener never connected");
        std::thread::yield_now();
    }
    assert!(a.user_create("alice", &user("h")).unwrap());
    assert_eq!(b.user_get("alice").unwrap(), Some(user("h")));
    a.session_put(&id(1), &session("alice", 1000), true)
        .unwrap();
    assert_eq!(b.session_get(&id(1)).unwrap(), Some(session("alice", 1000)));
    assert_eq!(a.secret("jwt", 32).unwrap(), b.secret("jwt", 32).unwrap());

    let p = a
        .kv_put("alice", "k", b"v", "text/plain", &Precondition::none())
        .unwrap();
    assert_eq!(
        recv(&rx),
        KvChange {
            ns: "alice".into(),
            key: "k".into(),
            version: Some(p.version)
        }
    );
    // B's own writes are not echoed to B; A's conditional write on B's
    // version works, and the delete arrives, in commit order.
    let p2 = b
        .kv_put("alice", "k", b"w", "text/plain", &Precondition::version(1))
        .unwrap();
    assert!(matches!(
        a.kv_put("alice", "k", b"x", "", &Precondition::version(1)),
        Err(KvError::PreconditionFailed)
    ));
    a.kv_put("alice", "k", b"x", "", &Precondition::version(p2.version))
        .unwrap();
    a.kv_delete("alice", "k", &Precondition::none()).unwrap();
    assert_eq!(recv(&rx).version, Some(3));
    assert_eq!(recv(&rx).version, None);
    assert!(rx.try_recv().is_err());
}

#[test]
fn concurrent_conditional_writes_from_two_handles() {
    // Both handles race to create the same key and to bump it from the
    // same version: exactly one of each pair wins.
    let Some(db) = TestDb::create() else { return };
    let stores = [Arc::new(db.store()), Arc::new(db.store())];
    for round in 0..20u64 {
        let key = format!("k{round}");
        let handles: Vec<_> = stores
            .iter()
            .map(|s| {
                let s = Arc::clone(s);
                let key = key.clone();
                std::thread::spawn(move || {
                    s.kv_put("ns", &key, b"v", "", &Precondition::absent())
                        .is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1, "round {round}");
    }
    let v = stores[0].kv_get("ns", "k0").unwrap().unwrap().version;
    let handles: Vec<_> = stores
        .iter()
        .map(|s| {
            let s = Arc::clone(s);
            std::thread::spawn(move || {
                s.kv_put("ns", "k0", b"w", "", &Precondition::version(v))
                    .is_ok()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1);
    // 20 creates and 1 update: 21 versions, none reused.
    assert_eq!(stores[1].kv_get("ns", "k0").unwrap().unwrap().version, 21);
}

#[test]
fn reopen_keeps_the_schema_and_refuses_a_newer_one() {
    let Some(db) = TestDb::create() else { return };
    drop(db.store());
    let s = db.store();
    assert!(s.user_create("x", &user("h")).unwrap());
    drop(s);
    admin(
        &db.config(),
        "INSERT INTO sigma_schema (version) VALUES (99)",
    )
    .unwrap();
    let err = PgStore::connect_with(db.config()).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedPgSchema { found: 99, .. }),
        "{err:?}"
    );
}

#[test]
fn unreachable_server_is_named() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PgStore::connect(&format!("postgres://u:secretpw@127.0.0.1:{port}/db")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    assert!(msg.contains(&format!("127.0.0.1:{port}/db")), "{msg}");
    assert!(!msg.contains("secretpw"), "{msg}");
    assert!(err.is_unavailable());
    let err = PgStore::connect("postgres://h:notaport/db").unwrap_err();
    assert!(matches!(err, StoreError::BadUrl(_)), "{err:?}");
}

#[test]
fn terminated_connections_are_unavailable_then_recover() {
    let Some(db) = TestDb::create() else { return };
    let s = db.store();
    assert!(s.user_create("a", &user("h")).unwrap());
    let kill = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    );
    admin(&db.admin, &kill).unwrap();
    // The pool hands out the dead connection once at most per slot; the
    // store reports it as unavailable (503 for the callers), then heals.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_failure = false;
    loop {
        match s.user_get("a") {
            Ok(u) => {
                assert_eq!(u, Some(user("h")));
                break;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "{e:?}");
                saw_failure = true;
            }
        }
        assert!(Instant::now() < deadline, "never recovered");
    }
    let st = s.status();
    assert!(st.up);
    assert_eq!(st.kind, "postgres");
    if saw_failure {
        assert!(st.failures >= 1);
    }
    // The listener reconnects too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.status().listening {
        assert!(Instant::now() < deadline, "the listener never came back");
        std::thread::yield_now();
    }
}
