//! The cluster store: [`PgStore`], the storage traits on PostgreSQL
//! (DESIGN §7), for several sigma nodes sharing one database.
//!
//! ```text
//!  sync trait call ──▶ PgStore::run ──spawn──▶ own tokio runtime ──▶ deadpool pool ──▶ PostgreSQL
//!        ◀── std channel ◀── result after COMMIT ◀──┘
//!  listener task: LISTEN sigma_kv ──▶ KvChange from other nodes ──▶ KvListener (the &db watchers)
//! ```
//!
//! Below `A`, the destinations and the CLI, beside [`crate::RedbStore`]
//! behind [`crate::Store`]; the same behaviour suite (`suite.rs`) runs
//! against both. tokio-postgres with deadpool-postgres: the async driver
//! the ecosystem uses, with a small, dependency-light pool that
//! reconnects by itself (a broken connection is dropped, the next `get`
//! opens a new one); sqlx would bring its own pool, macros and runtime
//! glue we do not need for a dozen fixed statements.
//!
//! The traits are blocking (callers run them on `spawn_blocking`), so
//! the store owns a small tokio runtime: each call is spawned there and
//! its result comes back over a std channel. That works from any thread,
//! inside or outside another runtime.
//!
//! Schema: `sigma_schema` (applied versions) and the tables of
//! [`MIGRATIONS`], created and migrated at open under an advisory lock
//! (several nodes may start at once). `&db`: a write locks its
//! namespace's counter row (`kv_seq`) first, so the writes of one
//! namespace are serialised across nodes; the precondition is checked on
//! the locked state, an `If-Match` write is an `UPDATE … WHERE version =
//! $n`, and the change is announced with `pg_notify` in the same
//! transaction (PostgreSQL delivers it only after the commit, in commit
//! order). A call returns only after `COMMIT` succeeded
//! (`synchronous_commit` as the server has it, `on` by default; only
//! `session_put(durable = false)` sets it `off` for its transaction).
//! Strings and byte orders: text columns use `COLLATE "C"`, so listings
//! are in byte order as on redb.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};

use crate::kv::kv_valid;

use crate::{
    random_bytes, valid_user_name, KvChange, KvEntry, KvError, KvListener, KvMeta, KvPut, KvStore,
    Precondition, SecretStore, SessionId, SessionRecord, SessionStore, StoreError, StoreHealth,
    StoreStatus, UserRecord, UserStore, MAX_KV_CONTENT_TYPE, MAX_SECRET_LEN,
};

/// The newest schema version this build knows (the length of
/// `MIGRATIONS`).
pub const PG_SCHEMA_VERSION: u64 = 3;
/// The `LISTEN`/`NOTIFY` channel of `&db` changes.
pub const PG_NOTIFY_CHANNEL: &str = "sigma_kv";
/// The `LISTEN`/`NOTIFY` channel of session revocations.
pub const PG_REVOKE_CHANNEL: &str = "sigma_revoke";
/// Connections in the pool.
const POOL_SIZE: usize = 16;
/// Longest wait for a pooled connection, and for a new connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection backoff of the listener: from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// `pg_advisory_xact_lock` key held while migrating ("SIGMA").
const MIGRATE_LOCK: i64 = 0x0053_4947_4d41;

/// The migrations, in order: migration `i` (from 0) brings the schema to
/// version `i + 1`. Never edit one that shipped; add the next.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    name     TEXT COLLATE "C" PRIMARY KEY,
    phc      TEXT NOT NULL,
    created  BIGINT NOT NULL,
    groups   TEXT[] NOT NULL DEFAULT '{}'
);
CREATE TABLE sessions (
    id        BYTEA PRIMARY KEY,
    user_name TEXT COLLATE "C" NOT NULL,
    provider  TEXT NOT NULL,
    created   BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    expires   BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_name);
CREATE INDEX sessions_by_expiry ON sessions (expires);
CREATE TABLE secrets (
    name  TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE kv (
    ns           TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    value        BYTEA NOT NULL,
    content_type TEXT NOT NULL,
    version      BIGINT NOT NULL,
    PRIMARY KEY (ns, key)
);
CREATE TABLE kv_seq (
    ns   TEXT COLLATE "C" PRIMARY KEY,
    last BIGINT NOT NULL
);
"#,
    r#"
CREATE TABLE apikeys (
    name    TEXT COLLATE "C" PRIMARY KEY,
    hash    TEXT NOT NULL UNIQUE,
    groups  TEXT[] NOT NULL DEFAULT '{}',
    created BIGINT NOT NULL
);
"#,
    r#"
ALTER TABLE sessions ADD COLUMN groups TEXT[] NOT NULL DEFAULT '{}';
"#,
];

/// The payload of a `sigma_kv` notification.
#[derive(Serialize, Deserialize)]
struct Notice {
    /// The writing store's random id (its own notices are skipped).
    n: u64,
    s: String,
    k: String,
    v: Option<u64>,
}

/// What the listener and the calls share.
struct Shared {
    up: AtomicBool,
    listening: AtomicBool,
    failures: AtomicU64,
    listeners: Mutex<Vec<KvListener>>,
    revocations: Mutex<Vec<crate::RevocationListener>>,
    node: u64,
}

/// The payload of a `sigma_revoke` notification.
#[derive(Serialize, Deserialize)]
struct RevokeNotice {
    /// The announcing store's random id (its own notices are skipped).
    n: u64,
    r: crate::Revocation,
}

/// The storage traits on PostgreSQL: `[store] url = "postgres://…"`.
pub struct PgStore {
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    target: String,
    shared: Arc<Shared>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Never blocks, so a store may be dropped inside async code.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// `host:port/dbname` of a config, without user or password.
fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg
        .get_dbname()
        .or(cfg.get_user())
        .unwrap_or("postgres")
        .to_owned();
    format!("{host}:{port}/{db}")
}

/// The message of a driver error: the server's (never its detail, which
/// may quote values), else the driver's and its cause.
fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// True when the error means the server or the connection is gone.
fn pg_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // Connection exceptions, insufficient resources, operator
        // intervention (admin shutdown, terminated backend, starting up).
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")
        }
        None => true,
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres {
            message: pg_message(&e),
            unavailable: pg_unavailable(&e),
        }
    }
}

impl From<tokio_postgres::Error> for KvError {
    fn from(e: tokio_postgres::Error) -> Self {
        KvError::Store(e.into())
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => e.into(),
        e => StoreError::Postgres {
            message: format!("no connection: {e}"),
            unavailable: true,
        },
    }
}

fn to_i64(v: u64, table: &'static str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Encode { table })
}

fn to_u64(v: i64, table: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Malformed { table })
}

/// Column `i` of `row` as `T`, or [`StoreError::Malformed`].
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
    table: &'static str,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(|_| StoreError::Malformed { table })
}

fn session_from_row(row: &tokio_postgres::Row) -> Result<SessionRecord, StoreError> {
    const T: &str = "sessions";
    Ok(SessionRecord {
        user: col(row, 0, T)?,
        provider: col(row, 1, T)?,
        created: to_u64(col(row, 2, T)?, T)?,
        last_seen: to_u64(col(row, 3, T)?, T)?,
        expires: to_u64(col(row, 4, T)?, T)?,
        groups: col(row, 5, T)?,
    })
}

/// Whether `s` can be a PostgreSQL text value (no NUL).
fn pg_text(s: &str) -> bool {
    !s.contains('\0')
}

impl PgStore {
    /// Connects to the PostgreSQL of `url` (`postgres://user@host:port/db`
    /// or `host=… dbname=…`), creates or migrates the schema and starts
    /// listening for other nodes' `&db` changes. Fails with
    /// [`StoreError::Unreachable`] naming the server if it does not answer
    /// within a few seconds.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_tls(url, None)
    }

    /// [`PgStore::connect`] over TLS when the URL says `sslmode=require`
    /// or `ca` is given: the server's certificate must chain to the PEM
    /// roots `ca` (else the system's) and name the host. Otherwise plain
    /// TCP, as `sslmode=prefer` (the default) allows.
    pub fn connect_tls(url: &str, ca: Option<&[u8]>) -> Result<Self, StoreError> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::BadUrl(e.to_string()))?;
        let tls = tls::choose(&mut cfg, ca)?;
        match tls {
            Some(c) => Self::connect_over(cfg, tokio_postgres_rustls::MakeRustlsConnect::new(c)),
            None => Self::connect_over(cfg, NoTls),
        }
    }

    /// [`PgStore::connect`] with a parsed configuration, without TLS.
    pub fn connect_with(cfg: tokio_postgres::Config) -> Result<Self, StoreError> {
        Self::connect_over(cfg, NoTls)
    }

    fn connect_over<T>(mut cfg: tokio_postgres::Config, tls: T) -> Result<Self, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync + 'static,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(POOL_TIMEOUT);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("sigma");
        }
        let target = describe(&cfg);
        let unreachable = |reason: String| StoreError::Unreachable {
            target: target.clone(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sigma-pg")
            .enable_all()
            .build()
            .map_err(|e| unreachable(format!("cannot start the runtime: {e}")))?;
        let mgr = Manager::from_config(
            cfg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            let _guard = rt.enter();
            Pool::builder(mgr)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(POOL_TIMEOUT))
                .create_timeout(Some(POOL_TIMEOUT))
                .recycle_timeout(Some(POOL_TIMEOUT))
                .build()
                .map_err(|e| unreachable(e.to_string()))?
        };
        let mut node = [0u8; 8];
        random_bytes(&mut node)?;
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            listening: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            listeners: Mutex::new(Vec::new()),
            revocations: Mutex::new(Vec::new()),
            node: u64::from_le_bytes(node),
        });
        let store = Self {
            rt: Some(rt),
            pool,
            target: target.clone(),
            shared,
        };
        store.migrate().map_err(|e| match e {
            StoreError::Postgres {
                message,
                unavailable: true,
            } => unreachable(message),
            // Refused at start (authentication, pg_hba.conf): name the server.
            StoreError::Postgres {
                message,
                unavailable: false,
            } => StoreError::Postgres {
                message: format!("{target}: {message}"),
                unavailable: false,
            },
            e => e,
        })?;
        if let Some(rt) = &store.rt {
            rt.spawn(listen(cfg, tls, Arc::clone(&store.shared)));
        }
        Ok(store)
    }

    /// `host:port/dbname` (no credentials), for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `f` with a pooled connection on the store's runtime and waits
    /// for its result. Counts failures that mean "unreachable".
    fn run<T, E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static + AsUnavailable,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let gone = || StoreError::Postgres {
            message: "the store is shut down".into(),
            unavailable: true,
        };
        let Some(rt) = &self.rt else {
            return Err(gone().into());
        };
        let pool = self.pool.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let r = match pool.get().await {
                Ok(c) => f(c).await,
                Err(e) => Err(pool_error(e).into()),
            };
            let _ = tx.send(r);
        });
        let r = rx.recv().map_err(|_| gone())?;
        match &r {
            Err(e) if e.as_unavailable() => {
                self.shared.up.store(false, Ordering::Relaxed);
                self.shared.failures.fetch_add(1, Ordering::Relaxed);
            }
            _ => self.shared.up.store(true, Ordering::Relaxed),
        }
        r
    }

    /// Creates the schema or brings it to [`PG_SCHEMA_VERSION`].
    fn migrate(&self) -> Result<(), StoreError> {
        let target = self.target.clone();
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS sigma_schema (
                     version    BIGINT PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await?;
            let row = tx
                .query_one("SELECT COALESCE(max(version), 0) FROM sigma_schema", &[])
                .await?;
            let found = to_u64(col(&row, 0, "sigma_schema")?, "sigma_schema")?;
            if found > PG_SCHEMA_VERSION {
                return Err(StoreError::UnsupportedPgSchema {
                    target,
                    found,
                    supported: PG_SCHEMA_VERSION,
                });
            }
            for (i, sql) in MIGRATIONS.iter().enumerate() {
                let version = i as u64 + 1;
                if version <= found {
                    continue;
                }
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO sigma_schema (version) VALUES ($1)",
                    &[&to_i64(version, "sigma_schema")?],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Copies `dump` into this store in one transaction (for `sigma
    /// migrate`); refuses a store that already has users, sessions or
    /// `&db` entries.
    pub(crate) fn import(&self, dump: crate::redb_store::Dump) -> Result<(), StoreError> {
        let target = self.target.clone();
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let row = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM sessions)
                          + (SELECT count(*) FROM kv)",
                    &[],
                )
                .await?;
            let n: i64 = col(&row, 0, "users")?;
            if n > 0 {
                return Err(StoreError::BadUrl(format!(
                    "the PostgreSQL store {target} is not empty ({n} users, sessions and &db \
                     entries); migrate into an empty database"
                )));
            }
            for (name, u) in &dump.users {
                tx.execute(
                    "INSERT INTO users (name, phc, created, groups) VALUES ($1, $2, $3, $4)",
                    &[name, &u.phc, &to_i64(u.created, "users")?, &u.groups],
                )
                .await?;
            }
            for (name, k) in &dump.apikeys {
                tx.execute(
                    "INSERT INTO apikeys (name, hash, groups, created) VALUES ($1, $2, $3, $4)",
                    &[name, &k.hash, &k.groups, &to_i64(k.created, "apikeys")?],
                )
                .await?;
            }
            for (id, s) in &dump.sessions {
                tx.execute(
                    "INSERT INTO sessions (id, user_name, provider, created, last_seen, expires, groups)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &id.0.as_slice(),
                        &s.user,
                        &s.provider,
                        &to_i64(s.created, "sessions")?,
                        &to_i64(s.last_seen, "sessions")?,
                        &to_i64(s.expires, "sessions")?,
                        &s.groups,
                    ],
                )
                .await?;
            }
            for (name, value) in &dump.secrets {
                // A secret the target made at its own start (a node that
                // ran before the migration) is replaced: the source's keys
                // signed the sessions and tokens being moved.
                tx.execute(
                    "INSERT INTO secrets (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[name, value],
                )
                .await?;
            }
            for (ns, key, e) in &dump.kv {
                tx.execute(
                    "INSERT INTO kv (ns, key, value, content_type, version)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        ns,
                        key,
                        &e.value,
                        &e.content_type,
                        &to_i64(e.version, "kv")?,
                    ],
                )
                .await?;
            }
            for (ns, last) in &dump.kv_seq {
                tx.execute(
                    "INSERT INTO kv_seq (ns, last) VALUES ($1, $2)
                     ON CONFLICT (ns) DO UPDATE SET last = EXCLUDED.last",
                    &[ns, &to_i64(*last, "kv_seq")?],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

/// Errors `run` can classify.
trait AsUnavailable {
    fn as_unavailable(&self) -> bool;
}

impl AsUnavailable for StoreError {
    fn as_unavailable(&self) -> bool {
        self.is_unavailable()
    }
}

impl AsUnavailable for KvError {
    fn as_unavailable(&self) -> bool {
        self.is_unavailable()
    }
}

/// The listener: one connection of its own doing `LISTEN sigma_kv`,
/// handing other nodes' changes to the registered [`KvListener`]s;
/// reconnects with backoff when the connection is lost. Changes committed
/// while it is disconnected are not replayed (watchers are told of
/// changes, they do not get a log).
async fn listen<T>(cfg: tokio_postgres::Config, tls: T, shared: Arc<Shared>)
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync + 'static,
    T::TlsConnect: Send + Sync,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        if let Ok((client, mut conn)) = cfg.connect(tls.clone()).await {
            let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                        if ntx.send(n).is_err() {
                            break;
                        }
                    }
                }
            });
            if client
                .batch_execute(&format!(
                    "LISTEN {PG_NOTIFY_CHANNEL}; LISTEN {PG_REVOKE_CHANNEL}"
                ))
                .await
                .is_ok()
            {
                shared.listening.store(true, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
                while let Some(n) = nrx.recv().await {
                    if n.channel() == PG_REVOKE_CHANNEL {
                        dispatch_revocation(&shared, n.payload());
                    } else {
                        dispatch(&shared, n.payload());
                    }
                }
                shared.listening.store(false, Ordering::Relaxed);
            }
            driver.abort();
            drop(client);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Hands one revocation notice to the listeners (not our own).
fn dispatch_revocation(shared: &Shared, payload: &str) {
    let Ok(notice) = serde_json::from_str::<RevokeNotice>(payload) else {
        return;
    };
    if notice.n == shared.node {
        return;
    }
    let listeners = shared
        .revocations
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for l in listeners.iter() {
        l(&notice.r);
    }
}

/// Hands one notification to the listeners (not our own).
fn dispatch(shared: &Shared, payload: &str) {
    let Ok(notice) = serde_json::from_str::<Notice>(payload) else {
        return;
    };
    if notice.n == shared.node {
        return;
    }
    let change = KvChange {
        ns: notice.s,
        key: notice.k,
        version: notice.v,
    };
    let mut listeners = shared
        .listeners
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    listeners.retain(|l| l(&change));
}

impl StoreHealth for PgStore {
    fn status(&self) -> StoreStatus {
        StoreStatus {
            kind: "postgres",
            up: self.shared.up.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
            listening: self.shared.listening.load(Ordering::Relaxed),
        }
    }
}

impl UserStore for PgStore {
    fn user_get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        if !pg_text(name) {
            return Ok(None);
        }
        let name = name.to_owned();
        self.run(move |c| async move {
            let Some(row) = c
                .query_opt(
                    "SELECT phc, created, groups FROM users WHERE name = $1",
                    &[&name],
                )
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(UserRecord {
                phc: col(&row, 0, "users")?,
                created: to_u64(col(&row, 1, "users")?, "users")?,
                groups: col(&row, 2, "users")?,
            }))
        })
    }

    fn user_create(&self, name: &str, rec: &UserRecord) -> Result<bool, StoreError> {
        if !valid_user_name(name) {
            return Err(StoreError::InvalidUserName);
        }
        let (name, phc, created, groups) = (
            name.to_owned(),
            rec.phc.clone(),
            to_i64(rec.created, "users")?,
            rec.groups.clone(),
        );
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO users (name, phc, created, groups) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &phc, &created, &groups],
                )
                .await?;
            if n == 0 {
                return Ok(false);
            }
            // No stale sessions of an earlier user of the same name.
            tx.execute("DELETE FROM sessions WHERE user_name = $1", &[&name])
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn user_set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError> {
        if !pg_text(name) {
            return Ok(false);
        }
        let (name, phc) = (name.to_owned(), phc.to_owned());
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let n = tx
                .execute("UPDATE users SET phc = $2 WHERE name = $1", &[&name, &phc])
                .await?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute("DELETE FROM sessions WHERE user_name = $1", &[&name])
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn user_set_groups(&self, name: &str, groups: &[String]) -> Result<bool, StoreError> {
        if !pg_text(name) {
            return Ok(false);
        }
        let (name, groups) = (name.to_owned(), groups.to_vec());
        self.run(move |c| async move {
            let n = c
                .execute(
                    "UPDATE users SET groups = $2 WHERE name = $1",
                    &[&name, &groups],
                )
                .await?;
            Ok(n > 0)
        })
    }

    fn user_delete(&self, name: &str) -> Result<bool, StoreError> {
        if !pg_text(name) {
            return Ok(false);
        }
        let name = name.to_owned();
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let n = tx
                .execute("DELETE FROM users WHERE name = $1", &[&name])
                .await?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute("DELETE FROM sessions WHERE user_name = $1", &[&name])
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn user_list(&self) -> Result<Vec<String>, StoreError> {
        self.run(|c| async move {
            let rows = c.query("SELECT name FROM users ORDER BY name", &[]).await?;
            rows.iter().map(|r| col(r, 0, "users")).collect()
        })
    }

    fn user_count(&self) -> Result<u64, StoreError> {
        self.run(|c| async move {
            let row = c.query_one("SELECT count(*) FROM users", &[]).await?;
            to_u64(col(&row, 0, "users")?, "users")
        })
    }
}

impl SessionStore for PgStore {
    fn session_get(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.0;
        self.run(move |c| async move {
            let row = c
                .query_opt(
                    "SELECT user_name, provider, created, last_seen, expires, groups
                     FROM sessions WHERE id = $1",
                    &[&id.as_slice()],
                )
                .await?;
            row.as_ref().map(session_from_row).transpose()
        })
    }

    fn session_put(
        &self,
        id: &SessionId,
        rec: &SessionRecord,
        durable: bool,
    ) -> Result<(), StoreError> {
        if !pg_text(&rec.user) || !pg_text(&rec.provider) {
            return Err(StoreError::Encode { table: "sessions" });
        }
        let id = id.0;
        let rec = rec.clone();
        let times = [
            to_i64(rec.created, "sessions")?,
            to_i64(rec.last_seen, "sessions")?,
            to_i64(rec.expires, "sessions")?,
        ];
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            if !durable {
                // A `last_seen` touch: visible at once, on disk a moment later.
                tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
                    .await?;
            }
            let [created, last_seen, expires] = times;
            tx.execute(
                "INSERT INTO sessions (id, user_name, provider, created, last_seen, expires, groups)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET user_name = EXCLUDED.user_name,
                     provider = EXCLUDED.provider, created = EXCLUDED.created,
                     last_seen = EXCLUDED.last_seen, expires = EXCLUDED.expires,
                     groups = EXCLUDED.groups",
                &[
                    &id.as_slice(),
                    &rec.user,
                    &rec.provider,
                    &created,
                    &last_seen,
                    &expires,
                    &rec.groups,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn session_delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let id = id.0;
        self.run(move |c| async move {
            let n = c
                .execute("DELETE FROM sessions WHERE id = $1", &[&id.as_slice()])
                .await?;
            Ok(n > 0)
        })
    }

    fn sessions_of_user(&self, user: &str) -> Result<Vec<SessionId>, StoreError> {
        if !pg_text(user) {
            return Ok(Vec::new());
        }
        let user = user.to_owned();
        self.run(move |c| async move {
            let rows = c
                .query("SELECT id FROM sessions WHERE user_name = $1", &[&user])
                .await?;
            rows.iter()
                .map(|r| {
                    let b: &[u8] = col(r, 0, "sessions")?;
                    <[u8; 32]>::try_from(b)
                        .map(SessionId)
                        .map_err(|_| StoreError::Malformed { table: "sessions" })
                })
                .collect()
        })
    }

    fn sessions_purge_expired(&self, now_unix: u64) -> Result<u64, StoreError> {
        let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
        self.run(move |c| async move {
            Ok(
                c.execute("DELETE FROM sessions WHERE expires <= $1", &[&now])
                    .await?,
            )
        })
    }

    fn announce_revocation(&self, revocation: &crate::Revocation) -> Result<(), StoreError> {
        let payload = serde_json::to_string(&RevokeNotice {
            n: self.shared.node,
            r: revocation.clone(),
        })
        .map_err(|_| StoreError::Encode { table: "sessions" })?;
        if !pg_text(&payload) {
            return Err(StoreError::Encode { table: "sessions" });
        }
        self.run(move |c| async move {
            c.execute("SELECT pg_notify($1, $2)", &[&PG_REVOKE_CHANNEL, &payload])
                .await?;
            Ok(())
        })
    }

    fn listen_revocations(&self, listener: crate::RevocationListener) -> bool {
        self.shared
            .revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
        true
    }
}

impl SecretStore for PgStore {
    fn secret(&self, name: &str, len: usize) -> Result<Vec<u8>, StoreError> {
        if len == 0 || len > MAX_SECRET_LEN {
            return Err(StoreError::SecretSize(len));
        }
        if !pg_text(name) {
            return Err(StoreError::Encode { table: "secrets" });
        }
        let name = name.to_owned();
        self.run(move |c| async move {
            let check = |stored: Vec<u8>| {
                if stored.len() == len {
                    Ok(stored)
                } else {
                    Err(StoreError::SecretLength {
                        name: name.clone(),
                        stored: stored.len(),
                        wanted: len,
                    })
                }
            };
            const GET: &str = "SELECT value FROM secrets WHERE name = $1";
            if let Some(row) = c.query_opt(GET, &[&name]).await? {
                return check(col(&row, 0, "secrets")?);
            }
            let mut value = vec![0u8; len];
            random_bytes(&mut value)?;
            // The first writer wins; a racing one waits for its commit and
            // then reads what it wrote.
            c.execute(
                "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &value],
            )
            .await?;
            let row = c.query_one(GET, &[&name]).await?;
            check(col(&row, 0, "secrets")?)
        })
    }
}

impl KvStore for PgStore {
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<KvEntry>, StoreError> {
        if !kv_valid(ns, key) || !pg_text(ns) {
            return Ok(None);
        }
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.run(move |c| async move {
            let Some(row) = c
                .query_opt(
                    "SELECT value, content_type, version FROM kv WHERE ns = $1 AND key = $2",
                    &[&ns, &key],
                )
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(KvEntry {
                value: col(&row, 0, "kv")?,
                content_type: col(&row, 1, "kv")?,
                version: to_u64(col(&row, 2, "kv")?, "kv")?,
            }))
        })
    }

    fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        content_type: &str,
        expect: &Precondition,
    ) -> Result<KvPut, KvError> {
        if !kv_valid(ns, key)
            || !pg_text(ns)
            || !pg_text(content_type)
            || content_type.len() > MAX_KV_CONTENT_TYPE
        {
            return Err(KvError::Invalid);
        }
        let (ns, key, value, ct) = (
            ns.to_owned(),
            key.to_owned(),
            value.to_vec(),
            content_type.to_owned(),
        );
        let expect = expect.clone();
        let node = self.shared.node;
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            // Locks the namespace: its writes are serialised, on every node.
            let row = tx
                .query_one(
                    "INSERT INTO kv_seq (ns, last) VALUES ($1, 0)
                     ON CONFLICT (ns) DO UPDATE SET last = kv_seq.last RETURNING last",
                    &[&ns],
                )
                .await?;
            let last = to_u64(col(&row, 0, "kv_seq")?, "kv_seq")?;
            let current = match tx
                .query_opt(
                    "SELECT version FROM kv WHERE ns = $1 AND key = $2",
                    &[&ns, &key],
                )
                .await?
            {
                Some(row) => Some(to_u64(col(&row, 0, "kv")?, "kv")?),
                None => None,
            };
            if !expect.holds(current) {
                // Dropping the transaction rolls it back.
                return Err(KvError::PreconditionFailed);
            }
            let version = last
                .max(current.unwrap_or(0))
                .checked_add(1)
                .ok_or(StoreError::Malformed { table: "kv_seq" })?;
            let v = to_i64(version, "kv")?;
            tx.execute("UPDATE kv_seq SET last = $2 WHERE ns = $1", &[&ns, &v])
                .await?;
            match current {
                Some(cur) => {
                    // The conditional UPDATE of DESIGN §7.
                    let n = tx
                        .execute(
                            "UPDATE kv SET value = $3, content_type = $4, version = $5
                             WHERE ns = $1 AND key = $2 AND version = $6",
                            &[&ns, &key, &value, &ct, &v, &to_i64(cur, "kv")?],
                        )
                        .await?;
                    if n != 1 {
                        return Err(KvError::PreconditionFailed);
                    }
                }
                None => {
                    tx.execute(
                        "INSERT INTO kv (ns, key, value, content_type, version)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&ns, &key, &value, &ct, &v],
                    )
                    .await?;
                }
            }
            notify(&tx, node, &ns, &key, Some(version)).await?;
            tx.commit().await?;
            Ok(KvPut {
                created: current.is_none(),
                version,
            })
        })
    }

    fn kv_delete(
        &self,
        ns: &str,
        key: &str,
        expect: &Precondition,
    ) -> Result<Option<u64>, KvError> {
        if !kv_valid(ns, key) || !pg_text(ns) {
            return Err(KvError::Invalid);
        }
        let (ns, key) = (ns.to_owned(), key.to_owned());
        let expect = expect.clone();
        let node = self.shared.node;
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let current = match tx
                .query_opt(
                    "SELECT version FROM kv WHERE ns = $1 AND key = $2 FOR UPDATE",
                    &[&ns, &key],
                )
                .await?
            {
                Some(row) => Some(to_u64(col(&row, 0, "kv")?, "kv")?),
                None => None,
            };
            if !expect.holds(current) {
                return Err(KvError::PreconditionFailed);
            }
            let Some(cur) = current else {
                return Ok(None);
            };
            tx.execute("DELETE FROM kv WHERE ns = $1 AND key = $2", &[&ns, &key])
                .await?;
            notify(&tx, node, &ns, &key, None).await?;
            tx.commit().await?;
            Ok(Some(cur))
        })
    }

    fn kv_list(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KvMeta>, StoreError> {
        if limit == 0 || !pg_text(ns) || !pg_text(prefix) || !after.is_none_or(pg_text) {
            return Ok(Vec::new());
        }
        let (ns, prefix, after) = (ns.to_owned(), prefix.to_owned(), after.map(str::to_owned));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| async move {
            let rows = c
                .query(
                    "SELECT key, version, octet_length(value) FROM kv
                     WHERE ns = $1 AND key >= $2 AND starts_with(key, $2)
                       AND ($3::text IS NULL OR key > $3)
                     ORDER BY key LIMIT $4",
                    &[&ns, &prefix, &after, &limit],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let size: i32 = col(r, 2, "kv")?;
                    Ok(KvMeta {
                        key: col(r, 0, "kv")?,
                        version: to_u64(col(r, 1, "kv")?, "kv")?,
                        size: u64::try_from(size)
                            .map_err(|_| StoreError::Malformed { table: "kv" })?,
                    })
                })
                .collect()
        })
    }

    fn kv_drop_namespace(&self, ns: &str) -> Result<u64, StoreError> {
        if !pg_text(ns) {
            return Ok(0);
        }
        let ns = ns.to_owned();
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            // The counter row first: it is the namespace's write lock.
            tx.execute("DELETE FROM kv_seq WHERE ns = $1", &[&ns])
                .await?;
            let n = tx.execute("DELETE FROM kv WHERE ns = $1", &[&ns]).await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn kv_listen_remote(&self, listener: KvListener) -> bool {
        self.shared
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
        true
    }
}

/// Announces a `&db` change inside `tx` (delivered after its commit).
async fn notify(
    tx: &deadpool_postgres::Transaction<'_>,
    node: u64,
    ns: &str,
    key: &str,
    version: Option<u64>,
) -> Result<(), StoreError> {
    let payload = serde_json::to_string(&Notice {
        n: node,
        s: ns.to_owned(),
        k: key.to_owned(),
        v: version,
    })
    .map_err(|_| StoreError::Encode { table: "kv" })?;
    tx.execute("SELECT pg_notify($1, $2)", &[&PG_NOTIFY_CHANNEL, &payload])
        .await?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
mod tls;

mod apikeys;
