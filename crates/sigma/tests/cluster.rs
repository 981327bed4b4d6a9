//! Several sigma nodes on one PostgreSQL (DESIGN §7, issue #17), against
//! the real binary over real sockets: a user added with `sigma user add`
//! on the cluster store logs in on either node, a session made on one node
//! works on the other, a `&db` write on one node reaches a `watch` on the
//! other, every write acknowledged by a node killed with SIGKILL is on
//! the other; losing PostgreSQL gives 503 with `Retry-After`, `/healthz` and
//! `/metrics` say so, and the node recovers by itself; `sigma migrate`
//! copies an embedded store; an unreachable database is a clear exit 1.
//! With `[cluster] redis`: broadcast across nodes in one order with the
//! right `from`, joins and leaves coalesced per user across nodes, Redis
//! cut off (a proxy) and killed and restarted (a private `redis-server`)
//! under traffic, login throttles shared.
//!
//! Each test uses a database of its own (`sigma_test_<random>`, dropped
//! afterwards) on the server of `SIGMA_TEST_POSTGRES` (a `postgres://` URL;
//! default `postgres://postgres@127.0.0.1:5432/postgres`). Without the
//! variable and without a server there the tests say so and pass;
//! `scripts/test.sh` always sets it. Redis likewise: `SIGMA_TEST_REDIS`
//! (default `redis://127.0.0.1:6379/0`), a key prefix per test.
//!
//! `cargo nextest run -p sigma --test cluster`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::ws::Ws;
use common::*;
use serde_json::{json, Value};

const HA: &str = "T127.0.0.1:0[HA]";
const DEFAULT_TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

// ----- a test database ------------------------------------------------------

fn admin(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(conn);
        let r = client.batch_execute(sql).await;
        drop(client);
        let _ = driver.await;
        r
    })
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// The server a test uses: `var`'s URL (then it must answer), else
/// `default` (where a missing server skips the test, saying so).
fn server_from_env(var: &str, default: &str) -> (String, bool) {
    match std::env::var(var) {
        Ok(u) => (u, true),
        Err(_) => (default.to_owned(), false),
    }
}

/// A database of its own, dropped with it.
struct PgDb {
    admin: String,
    name: String,
}

impl PgDb {
    fn create() -> Option<PgDb> {
        let (admin_url, required) = server_from_env("SIGMA_TEST_POSTGRES", DEFAULT_TEST_POSTGRES);
        let name = format!("sigma_test_{}_{}", std::process::id(), random_hex());
        match admin(&admin_url, &format!("CREATE DATABASE {name}")) {
            Ok(()) => Some(PgDb {
                admin: admin_url,
                name,
            }),
            Err(e) if !required => {
                eprintln!("no PostgreSQL at {admin_url} ({e}); set SIGMA_TEST_POSTGRES to run");
                None
            }
            Err(e) => panic!("SIGMA_TEST_POSTGRES: cannot create a test database: {e}"),
        }
    }

    fn url(&self) -> String {
        with_db(&self.admin, &self.name)
    }

    /// The test database's URL through `port` on loopback (the fault proxy).
    fn url_via(&self, port: u16) -> String {
        let u = self.url();
        // Replace host:port (after an optional `user@`).
        let after_scheme = u.find("://").map(|i| i + 3).unwrap_or(0);
        let rest = &u[after_scheme..];
        let host_start = rest.find('@').map(|i| i + 1).unwrap_or(0);
        let host_end = rest[host_start..]
            .find('/')
            .map(|i| host_start + i)
            .unwrap_or(rest.len());
        format!(
            "{}{}127.0.0.1:{port}{}",
            &u[..after_scheme],
            &rest[..host_start],
            &rest[host_end..]
        )
    }

    /// The server's address, from the admin URL (for the proxy).
    fn server_addr(&self) -> SocketAddr {
        let cfg: tokio_postgres::Config = self.admin.parse().expect("URL");
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        use std::net::ToSocketAddrs;
        (host.as_str(), port)
            .to_socket_addrs()
            .expect("resolve")
            .next()
            .expect("an address")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = admin(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

// ----- nodes ----------------------------------------------------------------

fn config_file(url: &str) -> (PathBuf, PathBuf) {
    let toml = Cfg::new().tail(&format!("[store]\nurl = {url:?}\n")).toml();
    write_temp_config("cluster", &toml)
}

/// `sigma user add NAME --config FILE` (the cluster store).
fn add_user(cfg: &PathBuf, name: &str) {
    let mut cmd = sigma_cmd();
    cmd.args(["user", "add", name, "--password-stdin", "--config"])
        .arg(cfg);
    let (st, out, err) = run_bounded(cmd, Some(format!("pw-{name}\n").as_bytes()));
    assert!(st.success(), "sigma user add {name}: {out} {err}");
}

fn node(url: &str) -> Server {
    let toml = Cfg::new().tail(&format!("[store]\nurl = {url:?}\n")).toml();
    let data = temp_dir("node");
    Server::launch(&toml, &data, HA).server
}

fn login(addr: SocketAddr, user: &str) -> String {
    login_as(addr, user, &format!("pw-{user}"))
}

fn db_req(addr: SocketAddr, cookie: &str, method: &str, key: &str, body: &[u8]) -> Resp {
    request(
        addr,
        method,
        &format!("/db/{key}"),
        &[("Cookie", cookie)],
        body,
    )
}

/// A WebSocket on `/db` of `addr` with the session `cookie`.
fn db_ws(addr: SocketAddr, cookie: &str) -> Ws {
    Ws::open(
        addr,
        "/db",
        &format!("Cookie: {cookie}\r\nOrigin: http://{addr}\r\n"),
    )
}

/// Polls `f` until it gives `Some`, for up to `limit`.
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

// ----- the tests ------------------------------------------------------------

#[test]
fn two_nodes_share_users_sessions_and_db_watches() {
    let Some(db) = PgDb::create() else { return };
    let (_dir, cfg) = config_file(&db.url());
    add_user(&cfg, "alice");
    // The CLI lists the cluster store's users.
    let mut cmd = sigma_cmd();
    cmd.args(["user", "list", "--config"]).arg(&cfg);
    let (st, out, err) = run_bounded(cmd, None);
    assert!(st.success(), "{err}");
    assert_eq!(out, "alice\n");

    let a = node(&db.url());
    let b = node(&db.url());
    // A user added by the CLI logs in on B; A's session works on B.
    let on_b = login(b.addr(), "alice");
    let on_a = login(a.addr(), "alice");
    assert_eq!(db_req(b.addr(), &on_a, "GET", "k", b"").status, 404);
    assert_eq!(db_req(a.addr(), &on_b, "GET", "k", b"").status, 404);
    assert_eq!(
        db_req(b.addr(), "sigma_session=x", "GET", "k", b"").status,
        401
    );

    // B watches; A writes: B's watcher sees it, with A's version.
    let mut w = db_ws(b.addr(), &on_b);
    w.send(&json!({"type": "watch", "prefix": "", "id": 1}));
    assert_eq!(w.recv(), json!({"type": "result", "id": 1}));
    let r = db_req(a.addr(), &on_a, "PUT", "todo/1", b"milk");
    assert_eq!(r.status, 201, "{r:?}");
    let etag = r.header("etag").expect("etag").to_owned();
    let change = w.recv();
    assert_eq!(
        change,
        json!({"type": "change", "key": "todo/1", "etag": etag})
    );
    // B reads A's value; a conditional write on B with A's ETag works and
    // a stale one is refused on A.
    let r = db_req(b.addr(), &on_b, "GET", "todo/1", b"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"milk"[..]));
    let r = request(
        b.addr(),
        "PUT",
        "/db/todo/1",
        &[("Cookie", &on_b), ("If-Match", &etag)],
        b"eggs",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = request(
        a.addr(),
        "PUT",
        "/db/todo/1",
        &[("Cookie", &on_a), ("If-Match", &etag)],
        b"stale",
    );
    assert_eq!(r.status, 412, "{r:?}");
    // B's own write reached B's watcher once; A's delete arrives next.
    let change = w.recv();
    assert_eq!(change["type"], json!("change"), "{change}");
    assert_ne!(change["etag"], json!(null), "{change}");
    assert_eq!(db_req(a.addr(), &on_a, "DELETE", "todo/1", b"").status, 204);
    assert_eq!(
        w.recv(),
        json!({"type": "change", "key": "todo/1", "etag": null})
    );
    let h = request(b.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(
        h.body_str(),
        "ok\nstore postgres up\nstore_listen up\n",
        "{h:?}"
    );
}

/// A TCP proxy to PostgreSQL that the test can cut: while down, every
/// connection through it is shut and new ones are closed at once.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (d, c) = (Arc::clone(&down), Arc::clone(&conns));
        thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut list = c.lock().expect("lock");
                for s in [&client, &server] {
                    list.push(s.try_clone().expect("clone"));
                }
                drop(list);
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, down, conns }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.conns.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

#[test]
fn losing_postgres_gives_503_and_the_node_recovers() {
    let Some(db) = PgDb::create() else { return };
    let proxy = Proxy::start(db.server_addr());
    let url = db.url_via(proxy.port);
    let (_dir, cfg) = config_file(&url);
    add_user(&cfg, "alice");
    let n = node(&url);
    let cookie = login(n.addr(), "alice");
    assert_eq!(db_req(n.addr(), &cookie, "PUT", "k", b"1").status, 201);
    // A session made on another node, which `n` has never seen (so not
    // cached): while `n` cannot ask the store, it is neither valid nor
    // gone.
    let other = node(&db.url());
    let unseen = login(other.addr(), "alice");

    proxy.cut();
    let r = eventually(Duration::from_secs(20), "a 503", || {
        let r = db_req(n.addr(), &cookie, "PUT", "k", b"2");
        (r.status == 503).then_some(r)
    });
    assert_eq!(r.header("retry-after"), Some("5"), "{r:?}");
    assert!(r.body_str().contains("unavailable"), "{r:?}");
    // Login needs the store too: 503, not "wrong password".
    let body = json!({"user": "alice", "password": "pw-alice"}).to_string();
    let r = request(
        n.addr(),
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("5"), "{r:?}");
    let r = eventually(
        Duration::from_secs(20),
        "a 503 for the unseen session",
        || {
            let r = db_req(n.addr(), &unseen, "GET", "k", b"");
            (r.status != 200).then_some(r)
        },
    );
    assert_eq!(
        (r.status, r.header("retry-after")),
        (503, Some("5")),
        "not 401: {r:?}"
    );
    let r = request(
        n.addr(),
        "GET",
        "/db/k",
        &[("Cookie", &unseen), ("Accept", "text/html")],
        b"",
    );
    assert_eq!(r.status, 503, "a browser is not sent to /login: {r:?}");
    // What does not need the store still answers, that cookie or not.
    let r = request(n.addr(), "GET", "/echo", &[("Cookie", &unseen)], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let h = request(n.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(h.status, 200);
    assert!(h.body_str().starts_with("degraded\n"), "{h:?}");
    assert!(h.body_str().contains("store postgres down"), "{h:?}");
    let m = request(n.addr(), "GET", "/metrics", &[], b"");
    let failures = m
        .body_str()
        .lines()
        .find_map(|l| l.strip_prefix("sigma_store_unavailable_total{kind=\"postgres\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no store counter: {}", m.body_str()));
    assert!(failures >= 1);

    proxy.restore();
    // The pool reconnects by itself: the write goes through, is there.
    eventually(Duration::from_secs(20), "recovery", || {
        let r = db_req(n.addr(), &cookie, "PUT", "k", b"3");
        (r.status == 200).then_some(())
    });
    let r = db_req(n.addr(), &cookie, "GET", "k", b"");
    assert_eq!(r.body, b"3");
    assert_eq!(
        db_req(n.addr(), &unseen, "GET", "k", b"").status,
        200,
        "and then valid"
    );
    eventually(Duration::from_secs(20), "healthz ok", || {
        let h = request(n.addr(), "GET", "/healthz", &[], b"");
        h.body_str().starts_with("ok\n").then_some(())
    });
}

#[test]
fn migrate_copies_an_embedded_store() {
    let Some(db) = PgDb::create() else { return };
    let data = temp_dir("migrate");
    let mut cmd = sigma_cmd();
    cmd.args(["user", "add", "bob", "--password-stdin", "--data"])
        .arg(&data);
    let (st, _, err) = run_bounded(cmd, Some(b"pw-bob\n"));
    assert!(st.success(), "{err}");

    let mut cmd = sigma_cmd();
    cmd.args(["migrate", "--from"])
        .arg(&data)
        .args(["--to", &db.url()]);
    let (st, out, err) = run_bounded(cmd, None);
    assert!(st.success(), "{out} {err}");
    assert!(out.starts_with("migrated 1 users, 0 sessions"), "{out}");

    // bob's password works on a node of the cluster store.
    let (_dir, cfg) = config_file(&db.url());
    let mut cmd = sigma_cmd();
    cmd.args(["user", "list", "--config"]).arg(&cfg);
    let (_, out, _) = run_bounded(cmd, None);
    assert_eq!(out, "bob\n");
    let n = node(&db.url());
    login(n.addr(), "bob");

    // Again: refused, the target is not empty; exit 1.
    let mut cmd = sigma_cmd();
    cmd.args(["migrate", "--from"])
        .arg(&data)
        .args(["--to", &db.url()]);
    let (st, _, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("not empty"), "{err}");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn an_unreachable_database_is_named_and_exits_1() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("postgres://sigma:hunter2@127.0.0.1:{port}/sigma");
    let (_dir, cfg) = config_file(&url);
    let mut cmd = sigma_cmd();
    cmd.args(["serve", "--pipeline", HA, "--config"]).arg(&cfg);
    let (st, _, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach PostgreSQL at 127.0.0.1:{port}/sigma"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // A URL that is not PostgreSQL's is a config error naming the key.
    let (_dir, cfg) = config_file("mysql://x");
    let mut cmd = sigma_cmd();
    cmd.args(["check", "--config"]).arg(&cfg);
    let (st, _, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("store.url"), "{err}");
}

/// `PUT /db/KEY` on a fresh connection; the status, or `None` if the
/// node is gone before it answers.
fn try_put(addr: SocketAddr, cookie: &str, key: &str) -> Option<u16> {
    let mut t = TcpStream::connect(addr).ok()?;
    t.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    let req = format!(
        "PUT /db/{key} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{key}",
        key.len()
    );
    t.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    t.read_to_end(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf);
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn acknowledged_writes_survive_sigkill_of_their_node() {
    let Some(db) = PgDb::create() else { return };
    let (_dir, cfg) = config_file(&db.url());
    add_user(&cfg, "alice");
    let mut a = node(&db.url());
    let b = node(&db.url());
    let cookie = login(a.addr(), "alice");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, cookie, acked) = (a.addr(), cookie.clone(), Arc::clone(&acked));
            thread::spawn(move || {
                for n in 0.. {
                    let key = format!("w{w}-{n}");
                    match try_put(addr, &cookie, &key) {
                        Some(201) => acked.lock().expect("lock").push(key),
                        Some(s) => panic!("PUT {key}: status {s}"),
                        None => return,
                    }
                }
            })
        })
        .collect();
    // Kill A in the middle of the writes.
    eventually(Duration::from_secs(30), "100 acknowledged writes", || {
        (acked.lock().expect("lock").len() >= 100).then_some(())
    });
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10));
    for w in writers {
        w.join().expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 100);
    // Every acknowledged write is on B, with its value.
    let on_b = login(b.addr(), "alice");
    let mut c = Client::connect(b.addr());
    for key in &acked {
        c.send(&request_bytes(
            b.addr(),
            "GET",
            &format!("/db/{key}"),
            &[("Cookie", &on_b)],
            b"",
        ));
        let r = c.read_response();
        assert_eq!(r.status, 200, "{key} was acknowledged but is not on B");
        assert_eq!(r.body, key.as_bytes());
    }
}

#[test]
fn a_logout_or_a_deleted_user_on_one_node_closes_sockets_on_the_others_with_4401() {
    let Some(db) = PgDb::create() else { return };
    let (_dir, cfg) = config_file(&db.url());
    add_user(&cfg, "alice");
    add_user(&cfg, "bob");
    let a = node(&db.url());
    let b = node(&db.url());
    // alice logs in on A and her session holds a socket on B.
    let alice = login(a.addr(), "alice");
    let mut on_b = db_ws(b.addr(), &alice);
    let origin = format!("http://{}", a.addr());
    let r = request(
        a.addr(),
        "POST",
        "/logout",
        &[("Cookie", &alice), ("Origin", &origin)],
        b"",
    );
    assert!(r.status / 100 == 2, "logout: {r:?}");
    assert_eq!(on_b.close_code(), Some(4401), "B heard of A's logout");
    assert_eq!(db_req(b.addr(), &alice, "GET", "k", b"").status, 401);

    // bob, with sockets on both nodes, is deleted by the CLI (which talks
    // to the database, not to a server): both close.
    let bob = login(b.addr(), "bob");
    let mut bob_a = db_ws(a.addr(), &bob);
    let mut bob_b = db_ws(b.addr(), &bob);
    let mut cmd = sigma_cmd();
    cmd.args(["user", "del", "bob", "--config"]).arg(&cfg);
    let (st, _, err) = run_bounded(cmd, None);
    assert!(st.success(), "{err}");
    assert_eq!(bob_a.close_code(), Some(4401));
    assert_eq!(bob_b.close_code(), Some(4401));
}

#[test]
fn api_key_deletions_and_group_changes_reach_every_node_at_once() {
    let Some(db) = PgDb::create() else { return };
    let (_dir, cfg) = config_file(&db.url());
    add_user(&cfg, "carol");
    let a = node(&db.url());
    let b = node(&db.url());
    let cli = |args: &[&str]| {
        let mut cmd = sigma_cmd();
        cmd.args(args).arg("--config").arg(&cfg);
        let (st, out, err) = run_bounded(cmd, None);
        assert!(st.success(), "{args:?}: {err}");
        out
    };
    let whoami = |addr: SocketAddr, h: &[(&str, &str)]| -> Value {
        let r = request(addr, "GET", "/auth/whoami", h, b"");
        serde_json::from_slice(&r.body).expect("JSON")
    };
    // A key made by the CLI, used (and so cached) on both nodes.
    let out = cli(&["apikey", "add", "robot"]);
    let key = out.lines().nth(1).expect("the key").to_owned();
    let bearer = format!("Bearer {key}");
    for n in [&a, &b] {
        assert_eq!(
            whoami(n.addr(), &[("Authorization", &bearer)])["user"],
            "robot"
        );
    }
    cli(&["apikey", "del", "robot"]);
    for n in [&a, &b] {
        eventually(Duration::from_secs(5), "the key refused", || {
            let r = request(
                n.addr(),
                "GET",
                "/auth/whoami",
                &[("Authorization", &bearer)],
                b"",
            );
            (r.status == 401).then_some(())
        });
    }
    // Groups changed by the CLI: a session cached on both nodes sees them.
    let carol = login(a.addr(), "carol");
    for n in [&a, &b] {
        assert_eq!(
            whoami(n.addr(), &[("Cookie", &carol)])["groups"],
            Value::Null
        );
    }
    cli(&["user", "groups", "carol", "ops"]);
    for n in [&a, &b] {
        eventually(Duration::from_secs(5), "the new groups", || {
            (whoami(n.addr(), &[("Cookie", &carol)])["groups"] == json!(["ops"])).then_some(())
        });
    }
}

// ----- Redis: broadcast, shared throttles ------------------------------------

const DEFAULT_TEST_REDIS: &str = "redis://127.0.0.1:6379/0";

/// A key prefix of this test's own on the Redis of `SIGMA_TEST_REDIS`
/// (default `redis://127.0.0.1:6379/0`; without the variable and without a
/// server there, the tests say so and pass). Its keys expire by themselves.
struct RedisNs {
    url: String,
    prefix: String,
}

impl RedisNs {
    fn create() -> Option<RedisNs> {
        let (url, required) = server_from_env("SIGMA_TEST_REDIS", DEFAULT_TEST_REDIS);
        let ns = RedisNs {
            prefix: format!("sigma_test_{}_{}:", std::process::id(), random_hex()),
            url,
        };
        let answers = TcpStream::connect_timeout(&ns.addr(), Duration::from_secs(3))
            .and_then(|mut t| {
                t.set_read_timeout(Some(IO_TIMEOUT))?;
                t.write_all(b"PING\r\n")?;
                let mut b = [0u8; 5];
                t.read_exact(&mut b)?;
                Ok(&b == b"+PONG")
            })
            .unwrap_or(false);
        match (answers, required) {
            (true, _) => Some(ns),
            (false, false) => {
                eprintln!("no Redis at {}; set SIGMA_TEST_REDIS to run", ns.url);
                None
            }
            (false, true) => panic!("SIGMA_TEST_REDIS={}: no Redis answers", ns.url),
        }
    }

    /// The server's address (for the fault proxy).
    fn addr(&self) -> SocketAddr {
        let rest = self.url.split_once("://").map_or(&*self.url, |(_, r)| r);
        let host = rest.split('/').next().unwrap_or(rest);
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        use std::net::ToSocketAddrs;
        let with_port = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:6379")
        };
        with_port
            .to_socket_addrs()
            .expect("resolve")
            .next()
            .expect("an address")
    }

    /// The URL through `port` on loopback (the fault proxy).
    fn url_via(&self, port: u16) -> String {
        let db = self.url.rsplit_once('/').map_or("0", |(_, d)| d);
        format!("redis://127.0.0.1:{port}/{db}")
    }
}

fn random_hex() -> String {
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).expect("random");
    r.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node on the PostgreSQL of `pg` and the Redis `redis` under `prefix`.
fn cluster_node(pg: &str, redis: &str, prefix: &str, extra: &str) -> Server {
    let toml = Cfg::new()
        .tail(&format!(
            "{extra}\n[store]\nurl = {pg:?}\n\n[cluster]\nredis = {redis:?}\nprefix = {prefix:?}\n"
        ))
        .toml();
    Server::launch(&toml, &temp_dir("node"), HA).server
}

/// Two nodes on one fresh database and one Redis prefix, with `users`
/// added and `extra` in both configs; `None` (the test passes, saying
/// so) where the tests have no PostgreSQL or Redis.
struct Pair {
    a: Server,
    b: Server,
    /// The config's directory, the Redis prefix and the database: bind
    /// it (`_keep`, not `..`) so that they live as long as the nodes.
    _keep: (PathBuf, RedisNs, PgDb),
}

fn pair(users: &[&str], extra: &str) -> Option<Pair> {
    let db = PgDb::create()?;
    let redis = RedisNs::create()?;
    let (dir, cfg) = config_file(&db.url());
    for u in users {
        add_user(&cfg, u);
    }
    let a = cluster_node(&db.url(), &redis.url, &redis.prefix, extra);
    let b = cluster_node(&db.url(), &redis.url, &redis.prefix, extra);
    Some(Pair {
        a,
        b,
        _keep: (dir, redis, db),
    })
}

/// A `/broadcast` socket of `cookie` on `addr`, subscribed to `channel`.
fn subscriber(addr: SocketAddr, cookie: &str, channel: &str) -> Ws {
    let mut ws = Ws::open(
        addr,
        "/broadcast",
        &format!("Cookie: {cookie}\r\nOrigin: http://{addr}\r\n"),
    );
    ws.send(&json!({"type": "subscribe", "channel": channel}));
    let r = ws.recv();
    assert_eq!(r["type"], "subscribed", "{r}");
    ws
}

fn http_publish(addr: SocketAddr, cookie: &str, channel: &str, data: &Value) -> Resp {
    let origin = format!("http://{addr}");
    request(
        addr,
        "POST",
        &format!("/broadcast/{channel}"),
        &[
            ("Cookie", cookie),
            ("Origin", &origin),
            ("Content-Type", "application/json"),
        ],
        data.to_string().as_bytes(),
    )
}

#[test]
fn broadcast_crosses_nodes_in_one_order_with_the_right_from() {
    let Some(Pair { a, b, _keep }) = pair(&["alice", "bob"], "") else {
        return;
    };
    let alice = login(a.addr(), "alice");
    let bob = login(b.addr(), "bob");
    let mut on_a = subscriber(a.addr(), &alice, "public:room");
    let mut on_b = subscriber(b.addr(), &bob, "public:room");
    // Publishers on both nodes at once, over WebSocket and HTTP.
    let mut pub_a = subscriber(a.addr(), &alice, "public:other");
    let b_addr = b.addr();
    let bob2 = bob.clone();
    let http = thread::spawn(move || {
        (0..20)
            .map(|i| {
                let r = http_publish(b_addr, &bob2, "public:room", &json!({"b": i}));
                assert_eq!(r.status, 202, "{r:?}");
                let v: Value = serde_json::from_slice(&r.body).expect("json");
                v["seq"].as_u64().expect("seq")
            })
            .collect::<Vec<u64>>()
    });
    for i in 0..20 {
        pub_a.send(&json!({"type": "publish", "channel": "public:room", "data": {"a": i}}));
    }
    let http_seqs = http.join().expect("publisher");
    let take = |ws: &mut Ws| -> Vec<(u64, String, Value)> {
        (0..40)
            .map(|_| {
                let m = ws.recv();
                assert_eq!(
                    (&m["type"], &m["channel"]),
                    (&json!("message"), &json!("public:room")),
                    "{m}"
                );
                let from = m["from"].as_str().expect("from").to_owned();
                (m["seq"].as_u64().expect("seq"), from, m["data"].clone())
            })
            .collect()
    };
    let got_a = take(&mut on_a);
    let got_b = take(&mut on_b);
    assert_eq!(got_a, got_b, "both nodes deliver one order");
    let seqs: Vec<u64> = got_a.iter().map(|m| m.0).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    for (seq, from, data) in &got_a {
        let want = if data.get("a").is_some() {
            "alice"
        } else {
            "bob"
        };
        assert_eq!(from, want, "seq {seq}: {data}");
        if let Some(i) = data.get("b").and_then(Value::as_u64) {
            assert_eq!(
                http_seqs[i as usize], *seq,
                "the 202 names the delivered seq"
            );
        }
    }
    // Each publisher's own messages keep their order.
    for key in ["a", "b"] {
        let mine: Vec<u64> = got_a
            .iter()
            .filter_map(|m| m.2.get(key)?.as_u64())
            .collect();
        assert_eq!(mine, (0..20).collect::<Vec<u64>>());
    }
    // A private channel stays private across nodes: bob cannot publish on
    // alice's, alice receives hers on B.
    let mut mine_b = subscriber(b.addr(), &alice, "user:alice:inbox");
    assert_eq!(
        http_publish(a.addr(), &bob, "user:alice:inbox", &json!(1)).status,
        403
    );
    assert_eq!(
        http_publish(a.addr(), &alice, "user:alice:inbox", &json!("hi")).status,
        202
    );
    let m = mine_b.recv();
    assert_eq!(
        (&m["from"], &m["data"]),
        (&json!("alice"), &json!("hi")),
        "{m}"
    );
    let h = request(a.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(
        h.body_str(),
        "ok\nstore postgres up\nstore_listen up\nredis up\nredis_pubsub up\n",
        "{h:?}"
    );
}

#[test]
fn presence_history_and_recovery_span_the_nodes() {
    let Some(Pair { a, b, _keep }) = pair(&["alice", "bob"], "") else {
        return;
    };
    let alice = login(a.addr(), "alice");
    let bob = login(b.addr(), "bob");
    let _alice_a = subscriber(a.addr(), &alice, "public:lobby");
    let _alice_b = subscriber(b.addr(), &alice, "public:lobby");
    let mut bob_b = subscriber(b.addr(), &bob, "public:lobby");
    // Presence counts every node's sockets (its writes are asynchronous:
    // asked until they are in).
    let want = json!([{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}]);
    let mut asker = subscriber(a.addr(), &alice, "public:ask");
    eventually(Duration::from_secs(10), "presence of both nodes", || {
        asker.send(&json!({"type": "presence", "channel": "public:lobby", "id": 1}));
        let p = asker.recv();
        assert_eq!(
            (&p["type"], &p["id"]),
            (&json!("presence"), &json!(1)),
            "{p}"
        );
        (p["users"] == want).then_some(())
    });
    // bob leaves node B; what is published meanwhile on A he recovers
    // on A, in one epoch shared by the nodes.
    let m = {
        assert_eq!(
            http_publish(a.addr(), &alice, "public:lobby", &json!(1)).status,
            202
        );
        bob_b.recv()
    };
    drop(bob_b);
    for i in 2..=4 {
        assert_eq!(
            http_publish(b.addr(), &alice, "public:lobby", &json!(i)).status,
            202
        );
    }
    let mut ws = Ws::open(
        a.addr(),
        "/broadcast",
        &format!("Cookie: {bob}\r\nOrigin: http://{}\r\n", a.addr()),
    );
    let since = json!({"seq": m["seq"], "epoch": epoch_of(&mut asker, "public:lobby")});
    ws.send(&json!({"type": "subscribe", "channel": "public:lobby", "since": since}));
    let ack = ws.recv();
    assert_eq!(
        (&ack["type"], &ack["recovered"]),
        (&json!("subscribed"), &json!(true)),
        "{ack}"
    );
    let got: Vec<Value> = (0..3).map(|_| ws.recv()["data"].clone()).collect();
    assert_eq!(got, [json!(2), json!(3), json!(4)]);
    // `history` on B says the same.
    let mut on_b = subscriber(b.addr(), &bob, "public:x");
    on_b.send(&json!({"type": "history", "channel": "public:lobby", "limit": 2}));
    let h = on_b.recv();
    assert_eq!(h["epoch"], ack["epoch"], "{h}");
    let data: Vec<&Value> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(data, [&json!(3), &json!(4)]);
}

/// `join_leave` across nodes: a watcher on A hears bob's join when his
/// first socket anywhere subscribes (on B), nothing when his second one
/// subscribes (on A) or when one of the two leaves, and his leave once
/// both are gone. "Nothing" is shown without sleeping: a node hands a
/// join or leave to Redis before the presence entry of the socket that
/// made it (in order), so once `presence` shows the socket, whatever it
/// announced was published before a message published then, which the
/// watcher must get next.
#[test]
fn joins_and_leaves_span_the_nodes() {
    let jl = "[broadcast]\njoin_leave = true\n";
    let Some(Pair { a, b, _keep }) = pair(&["alice", "bob"], jl) else {
        return;
    };
    let alice = login(a.addr(), "alice");
    let bob = login(b.addr(), "bob");
    let mut watcher = subscriber(a.addr(), &alice, "public:room");
    let mut asker = subscriber(a.addr(), &alice, "public:ask");
    let mut bobs = |n: u64| {
        eventually(Duration::from_secs(10), "bob's presence", || {
            asker.send(&json!({"type": "presence", "channel": "public:room"}));
            let p = asker.recv();
            assert_eq!(p["type"], "presence", "{p}");
            let users = p["users"].as_array().expect("users");
            let bob = users.iter().find(|u| u["user"] == "bob");
            let got = bob.map_or(0, |u| u["connections"].as_u64().expect("count"));
            (got == n).then_some(())
        })
    };
    let nothing_but_a_mark = |watcher: &mut Ws, i: u64| {
        assert_eq!(
            http_publish(a.addr(), &alice, "public:room", &json!({"mark": i})).status,
            202
        );
        let m = watcher.recv();
        assert_eq!(
            (&m["type"], &m["data"]),
            (&json!("message"), &json!({"mark": i})),
            "{m}"
        );
    };
    let bob_b = subscriber(b.addr(), &bob, "public:room");
    let join = watcher.recv();
    assert_eq!(
        join,
        json!({"type": "join", "channel": "public:room", "user": "bob"}),
        "bob's first socket, on B, is heard on A (alice's own join is not)"
    );
    let bob_a = subscriber(a.addr(), &bob, "public:room");
    bobs(2);
    nothing_but_a_mark(&mut watcher, 1);
    drop(bob_b);
    bobs(1);
    nothing_but_a_mark(&mut watcher, 2);
    drop(bob_a);
    let leave = watcher.recv();
    assert_eq!(
        leave,
        json!({"type": "leave", "channel": "public:room", "user": "bob"}),
        "bob's last socket is gone"
    );
}

/// The epoch of `channel`, as a `history` answer on `ws` tells it.
fn epoch_of(ws: &mut Ws, channel: &str) -> Value {
    ws.send(&json!({"type": "history", "channel": channel, "limit": 0}));
    let h = ws.recv();
    assert_eq!(h["type"], "history", "{h}");
    h["epoch"].clone()
}

#[test]
fn losing_redis_closes_subscribers_with_1011_and_publish_gets_503_then_recovers() {
    let Some(db) = PgDb::create() else { return };
    let Some(redis) = RedisNs::create() else {
        return;
    };
    let proxy = Proxy::start(redis.addr());
    let url = redis.url_via(proxy.port);
    let (_dir, cfg) = config_file(&db.url());
    add_user(&cfg, "alice");
    let a = cluster_node(&db.url(), &url, &redis.prefix, "");
    // B reaches Redis directly: it keeps working while A's link is cut.
    let b = cluster_node(&db.url(), &redis.url, &redis.prefix, "");
    let alice = login(a.addr(), "alice");
    let mut sub = subscriber(a.addr(), &alice, "public:x");
    let mut db_sock = db_ws(a.addr(), &alice);
    assert_eq!(
        http_publish(b.addr(), &alice, "public:x", &json!(1)).status,
        202
    );
    assert_eq!(sub.recv()["data"], json!(1));

    proxy.cut();
    let (code, _) = sub.closed_by(Instant::now() + Duration::from_secs(20));
    assert_eq!(
        code,
        Some(1011),
        "a subscriber that may miss messages is told"
    );
    let r = eventually(Duration::from_secs(20), "a 503", || {
        let r = http_publish(a.addr(), &alice, "public:x", &json!(2));
        (r.status == 503).then_some(r)
    });
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert!(r.body_str().contains("unavailable"), "{r:?}");
    // A new subscription is refused; it does not hang.
    let mut late = Ws::open(
        a.addr(),
        "/broadcast",
        &format!("Cookie: {alice}\r\nOrigin: http://{}\r\n", a.addr()),
    );
    late.send(&json!({"type": "subscribe", "channel": "public:x"}));
    let e = late.recv();
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("unavailable")),
        "{e}"
    );
    // What does not need Redis goes on: the store, login, &db, B.
    db_sock.assert_open("&db socket on A");
    assert_eq!(db_req(a.addr(), &alice, "PUT", "k", b"v").status, 201);
    login(a.addr(), "alice");
    assert_eq!(
        http_publish(b.addr(), &alice, "public:x", &json!(3)).status,
        202
    );
    let h = request(a.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(h.status, 200);
    assert!(h.body_str().starts_with("degraded\n"), "{h:?}");
    assert!(h.body_str().contains("redis_pubsub down"), "{h:?}");
    let m = request(a.addr(), "GET", "/metrics", &[], b"").body_str();
    let counter = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name}: {m}"))
    };
    assert!(counter("sigma_redis_lost_total ") >= 1);
    assert!(counter("sigma_redis_unavailable_total ") >= 1);
    assert_eq!(counter("sigma_redis_up{conn=\"pubsub\"} "), 0);

    proxy.restore();
    eventually(Duration::from_secs(30), "healthz ok", || {
        let h = request(a.addr(), "GET", "/healthz", &[], b"");
        h.body_str().starts_with("ok\n").then_some(())
    });
    // Subscribed again on A, a publish on B arrives: recovered by itself.
    let mut again = subscriber(a.addr(), &alice, "public:x");
    let r = http_publish(b.addr(), &alice, "public:x", &json!(4));
    assert_eq!(r.status, 202, "{r:?}");
    let m = again.recv();
    assert_eq!(m["data"], json!(4), "{m}");
    assert_eq!(
        http_publish(a.addr(), &alice, "public:x", &json!(5)).status,
        202
    );
    assert_eq!(again.recv()["data"], json!(5));
}

#[test]
fn login_throttles_are_shared_by_the_nodes() {
    let limits = "[auth]\nlogin_failures_per_user_per_minute = 4\n";
    let Some(Pair { a, b, _keep }) = pair(&["alice"], limits) else {
        return;
    };
    let attempt = |addr: SocketAddr, pw: &str| {
        let body = json!({"user": "alice", "password": pw}).to_string();
        request(
            addr,
            "POST",
            "/login",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    // Two wrong passwords on each node: each node alone allows four.
    for addr in [a.addr(), b.addr(), a.addr(), b.addr()] {
        assert_eq!(attempt(addr, "wrong").status, 401);
    }
    // The fifth failure anywhere is refused: the budget was shared, even
    // with the right password (the node's own budget is not spent).
    for addr in [a.addr(), b.addr()] {
        let r = attempt(addr, "pw-alice");
        assert_eq!(r.status, 429, "{r:?}");
        let secs: u64 = r
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
    }
}

/// Unpadded base64url, as worlds speak it.
fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A session socket on `addr`, activated: `hello` answered by `welcome`.
fn session_socket(addr: SocketAddr, cookie: &str) -> Ws {
    let mut ws = Ws::open(
        addr,
        "/ws",
        &format!("Cookie: {cookie}\r\nOrigin: http://{addr}\r\n"),
    );
    ws.send(&json!({"type": "hello", "lamport": 1}));
    let w = ws.recv();
    assert_eq!(w["type"], "welcome", "{w}");
    ws
}

/// The worker's `GET /world/echo.js` for `key`'s world with `cookie`, on `addr`.
fn worker_fetch(
    addr: SocketAddr,
    session: &str,
    key: &ed25519_dalek::SigningKey,
    cookie: &str,
) -> Resp {
    use ed25519_dalek::Signer as _;
    let world = b64(key.verifying_key().as_bytes());
    let initiate = json!({"cookie": cookie, "world": world, "command": "echo"}).to_string();
    let sig = key.sign(initiate.as_bytes()).to_bytes();
    let target = format!(
        "/world/echo.js?initiate={}&sig={}",
        b64(initiate.as_bytes()),
        b64(&sig)
    );
    let origin = format!("http://{addr}");
    request(
        addr,
        "GET",
        &target,
        &[("Cookie", session), ("Origin", &origin)],
        b"",
    )
}

#[test]
fn a_world_forked_on_one_node_starts_from_another_and_runs_on_its_socket() {
    use ed25519_dalek::Signer as _;
    let Some(Pair { mut a, b, _keep }) = pair(&["alice", "bob"], "") else {
        return;
    };
    let alice = login(a.addr(), "alice");
    let mut ws = session_socket(a.addr(), &alice);
    let new_key = || {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("random");
        ed25519_dalek::SigningKey::from_bytes(&seed)
    };
    let key = new_key();
    let world = b64(key.verifying_key().as_bytes());
    ws.send(&json!({"type": "fork", "world": world, "command": "echo", "lamport": 2}));
    let fork = ws.recv();
    assert_eq!(fork["type"], "fork-cookie", "{fork}");
    let cookie = fork["cookie"].as_str().expect("cookie").to_owned();

    // The load balancer sends the worker's fetch to B: B asks A (the
    // cookie's node), the world starts on A's socket, B serves the code.
    let r = worker_fetch(b.addr(), &alice, &key, &cookie);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    // The world runs on the socket on A.
    let lamport = 10u64;
    let body = "hello from the worker";
    let signed = format!("{world}\n{lamport}\n{body}");
    let sig = b64(&key.sign(signed.as_bytes()).to_bytes());
    ws.send(
        &json!({"type": "world", "world": world, "lamport": lamport, "body": body, "sig": sig}),
    );
    let echoed = ws.recv();
    assert_eq!(
        (&echoed["type"], &echoed["world"], &echoed["body"]),
        (&json!("world"), &json!(world), &json!(body)),
        "{echoed}"
    );
    // Single use, whichever node the replay lands on; another user's
    // session never opens the cookie.
    for addr in [b.addr(), a.addr()] {
        let r = worker_fetch(addr, &alice, &key, &cookie);
        assert_eq!(r.status, 409, "{r:?}");
    }
    let bob = login(b.addr(), "bob");
    let key2 = new_key();
    let world2 = b64(key2.verifying_key().as_bytes());
    ws.send(&json!({"type": "fork", "world": world2, "command": "echo", "lamport": 20}));
    let fork2 = ws.recv();
    let cookie2 = fork2["cookie"].as_str().expect("cookie").to_owned();
    let r = worker_fetch(b.addr(), &bob, &key2, &cookie2);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.body).contains("bad_cookie"),
        "{r:?}"
    );

    // A dies: an initiate of its cookie on B is a quick 503 with
    // Retry-After (its socket is gone with it), not a hang.
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10));
    let started = Instant::now();
    let r = worker_fetch(b.addr(), &alice, &key2, &cookie2);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("world_node_unavailable"),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 it signed
/// (`server.pem`, `server.key`), in `dir`.
fn test_pki(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    let paths = (
        dir.join("ca.pem"),
        dir.join("redis.pem"),
        dir.join("redis.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

#[test]
fn nodes_reach_redis_over_tls_with_their_own_ca() {
    let Some(db) = PgDb::create() else { return };
    let (dir, cfg) = config_file(&db.url());
    add_user(&cfg, "alice");
    let (ca, cert, key) = test_pki(&dir);
    let redis = PrivateRedis::with_tls(Some((cert, key)));
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    // A node of this Redis, with `ca_line` in its [cluster].
    let node_with = |ca_line: &str| {
        let toml = Cfg::new()
            .tail(&format!(
                "[store]\nurl = {:?}\n\n[cluster]\nredis = {url:?}\nprefix = \"tls:\"\n{ca_line}\n",
                db.url()
            ))
            .toml();
        Server::launch(&toml, &temp_dir("tls-node"), HA).server
    };
    let ca_line = format!("redis_ca = {:?}", ca.display().to_string());
    let a = node_with(&ca_line);
    let b = node_with(&ca_line);
    let alice = login(a.addr(), "alice");
    let mut on_a = subscriber(a.addr(), &alice, "public:tls");
    let r = http_publish(b.addr(), &alice, "public:tls", &json!("over tls"));
    assert_eq!(r.status, 202, "{r:?}");
    let m = on_a.recv();
    assert_eq!(m["data"], "over tls", "{m}");
    let h = request(b.addr(), "GET", "/healthz", &[], b"");
    assert!(
        h.body_str().contains("redis up\nredis_pubsub up\n"),
        "{h:?}"
    );
    // Without the CA the server's certificate is not trusted: the node
    // starts degraded and says so, and never talks to it in the clear.
    let c = node_with("");
    let h = request(c.addr(), "GET", "/healthz", &[], b"");
    assert!(h.body_str().contains("redis down"), "{h:?}");
    let r = http_publish(c.addr(), &alice, "public:tls", &json!("x"));
    assert_eq!(r.status, 503, "{r:?}");
}

/// A private PostgreSQL that takes TLS connections only (`hostssl`
/// lines alone in `pg_hba.conf`), with `cert` and `key`, on a free
/// loopback port; stopped with it.
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

/// Runs `cmd` as the `postgres` user when this is root (the server
/// refuses to run as root).
fn as_postgres(program: &std::path::Path) -> std::process::Command {
    if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Makes `path` (recursively) the `postgres` user's when this is root.
fn give_to_postgres(path: &std::path::Path) {
    if is_root() {
        let st = std::process::Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(st.success());
    }
}

impl TlsPostgres {
    fn start(dir: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> TlsPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries (scripts/test.sh installs Debian's postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("initdb (scripts/test.sh installs Debian's postgresql)");
        let root = dir.join("pg");
        std::fs::create_dir_all(&root).expect("mkdir");
        let data = root.join("data");
        give_to_postgres(dir);
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Plain TCP has no line: only TLS connections get in.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba");
        std::fs::copy(cert, data.join("server.crt")).expect("cert");
        std::fs::copy(key, data.join("server.key")).expect("key");
        give_to_postgres(&data);
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c ssl=on -c fsync=off",
            root.display()
        );
        let out = as_postgres(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(root.join("server.log"))
            .args(["-w", "-t", "30", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(root.join("server.log")).unwrap_or_default()
        );
        TlsPostgres { bin, data, port }
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[test]
fn the_store_reaches_postgres_over_tls_with_its_own_ca() {
    // Only where the tests have a PostgreSQL (its binaries are then here).
    let Some(_db) = PgDb::create() else { return };
    let dir = temp_dir("pg-tls");
    let (ca, cert, key) = test_pki(&dir);
    let pg = TlsPostgres::start(&dir, &cert, &key);
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let with_ca = |ca_line: &str| {
        let toml = Cfg::new()
            .tail(&format!("[store]\nurl = {url:?}\n{ca_line}\n"))
            .toml();
        write_temp_config("pg-tls", &toml)
    };
    let (_d1, cfg) = with_ca(&format!("ca = {:?}", ca.display().to_string()));
    // The CLI and the server, over TLS.
    add_user(&cfg, "alice");
    let toml = std::fs::read_to_string(&cfg).expect("config");
    let n = Server::launch(&toml, &temp_dir("pg-tls-node"), HA).server;
    let alice = login(n.addr(), "alice");
    assert_eq!(db_req(n.addr(), &alice, "PUT", "k", b"v").status, 201);
    let h = request(n.addr(), "GET", "/healthz", &[], b"");
    assert!(h.body_str().contains("store postgres up"), "{h:?}");
    // Plain TCP is refused by this server: a clear exit 1, naming it.
    let (_d2, plain) = with_ca("");
    let mut cmd = sigma_cmd();
    cmd.args(["serve", "--pipeline", HA, "--config"])
        .arg(&plain);
    let (st, _, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("no encryption"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}/postgres", pg.port)),
        "the server is named: {err}"
    );
    // TLS asked for, without the CA: the certificate is not trusted.
    let (_d3, untrusted) = write_temp_config(
        "pg-tls",
        &Cfg::new()
            .tail(&format!("[store]\nurl = \"{url}?sslmode=require\"\n"))
            .toml(),
    );
    let mut cmd = sigma_cmd();
    cmd.args(["serve", "--pipeline", HA, "--config"])
        .arg(&untrusted);
    let (st, _, err) = run_bounded(cmd, None);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A CA file that is not one: named.
    let (_d4, bad) = with_ca(&format!(
        "ca = {:?}",
        cert.with_extension("key").display().to_string()
    ));
    let mut cmd = sigma_cmd();
    cmd.args(["serve", "--pipeline", HA, "--config"]).arg(&bad);
    let (st, _, err) = run_bounded(cmd, None);
    assert_ne!(st.code(), Some(0), "{err}");
    assert!(err.contains("[store] ca"), "{err}");
}

/// A private `redis-server` (no persistence) on a free loopback port,
/// killed with it; [`PrivateRedis::kill`] and [`PrivateRedis::start`] stop
/// and restart it on the same port.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
    /// TLS only (`--tls-port`): the certificate and key files.
    tls: Option<(PathBuf, PathBuf)>,
}

impl PrivateRedis {
    fn new() -> PrivateRedis {
        Self::with_tls(None)
    }

    fn with_tls(tls: Option<(PathBuf, PathBuf)>) -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut r = PrivateRedis {
            port,
            child: None,
            tls,
        };
        r.start();
        r
    }

    fn start(&mut self) {
        let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("redis-server is not installed (scripts/test.sh installs Debian's)");
        let mut cmd = std::process::Command::new(bin);
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        if self.tls.is_some() {
            // Listening is enough: the test's TLS clients say the rest.
            eventually(Duration::from_secs(10), "redis-server to listen", || {
                TcpStream::connect(("127.0.0.1", self.port)).ok().map(drop)
            });
            return;
        }
        eventually(Duration::from_secs(10), "redis-server to answer", || {
            let mut t = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
            t.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
            t.write_all(b"PING\r\n").ok()?;
            let mut b = [0u8; 5];
            t.read_exact(&mut b).ok()?;
            (&b == b"+PONG").then_some(())
        });
    }

    /// SIGKILL: everything it held is gone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The seqs of `ws`'s messages until its close: the close code and them.
fn until_close(ws: &mut Ws) -> (Option<u16>, Vec<u64>) {
    let (code, before) = ws.closed_by(Instant::now() + Duration::from_secs(20));
    let seqs = before
        .iter()
        .filter(|m| m["type"] == "message")
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    (code, seqs)
}

#[test]
fn redis_killed_and_restarted_under_traffic_the_nodes_recover_by_themselves() {
    if std::env::var("SIGMA_TEST_REDIS").is_err() && RedisNs::create().is_none() {
        return; // no Redis here at all, so no redis-server either
    }
    let Some(db) = PgDb::create() else { return };
    let mut redis = PrivateRedis::new();
    let (_dir, cfg) = config_file(&db.url());
    add_user(&cfg, "alice");
    let a = cluster_node(&db.url(), &redis.url(), "sigma:", "");
    let b = cluster_node(&db.url(), &redis.url(), "sigma:", "");
    let alice = login(a.addr(), "alice");
    let mut on_a = subscriber(a.addr(), &alice, "public:t");
    let mut on_b = subscriber(b.addr(), &alice, "public:t");
    // Traffic: B publishes until it is told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (b_addr, cookie, halt) = (b.addr(), alice.clone(), Arc::clone(&stop));
    let traffic = thread::spawn(move || {
        let mut acked = Vec::new();
        let mut refused = 0u32;
        while !halt.load(Ordering::SeqCst) {
            let r = http_publish(b_addr, &cookie, "public:t", &json!(acked.len()));
            match r.status {
                202 => {
                    let v: Value = serde_json::from_slice(&r.body).expect("json");
                    acked.push(v["seq"].as_u64().expect("seq"));
                }
                503 => refused += 1,
                s => panic!("publish: {s} {r:?}"),
            }
        }
        (acked, refused)
    });
    // Some traffic reaches both subscribers, then Redis dies.
    for ws in [&mut on_a, &mut on_b] {
        for _ in 0..5 {
            assert_eq!(ws.recv()["type"], "message");
        }
    }
    redis.kill();
    for ws in [&mut on_a, &mut on_b] {
        let (code, seqs) = until_close(ws);
        assert_eq!(code, Some(1011), "told it may have missed messages");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "no gap before the close: {seqs:?}"
        );
    }
    for n in [&a, &b] {
        eventually(Duration::from_secs(20), "degraded", || {
            let h = request(n.addr(), "GET", "/healthz", &[], b"");
            h.body_str().contains("redis_pubsub down").then_some(())
        });
        // The store, and what needs only it, go on.
        assert_eq!(db_req(n.addr(), &alice, "PUT", "k", b"v").status / 100, 2);
    }
    let r = http_publish(a.addr(), &alice, "public:t", &json!("down"));
    assert_eq!(
        (r.status, r.header("retry-after")),
        (503, Some("1")),
        "{r:?}"
    );
    stop.store(true, Ordering::SeqCst);
    let (acked, _) = traffic.join().expect("traffic");
    assert!(acked.len() >= 5, "{acked:?}");
    redis.start();
    for n in [&a, &b] {
        eventually(Duration::from_secs(30), "healthz ok", || {
            let h = request(n.addr(), "GET", "/healthz", &[], b"");
            h.body_str().starts_with("ok\n").then_some(())
        });
    }
    // Back, with nothing of before: the same channel restarts at seq 1 (a
    // new epoch), and both nodes deliver it in one order.
    let mut on_a = subscriber(a.addr(), &alice, "public:t");
    let mut on_b = subscriber(b.addr(), &alice, "public:t");
    for i in 0..3 {
        let r = http_publish(b.addr(), &alice, "public:t", &json!(i));
        assert_eq!(r.status, 202, "{r:?}");
    }
    for ws in [&mut on_a, &mut on_b] {
        let seqs: Vec<u64> = (0..3)
            .map(|_| ws.recv()["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }
}
