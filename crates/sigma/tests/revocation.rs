//! Sessions that really end (DESIGN §4, issue #13), against the real binary
//! over real sockets: after `POST /logout` a token from `/auth/token` is
//! refused and every WebSocket of the session — `&broadcast` (by cookie and
//! by token), `&db`, the `/ws` session socket, a proxied upstream socket —
//! closes with 4401 within a second, while other sessions keep theirs;
//! sockets close when their session expires with no request at all; tokens
//! without `sid` (an older sigma's) are refused; a deleted user's tokens
//! die across a restart; `/auth/token` is throttled per session.
//!
//! `cargo nextest run -p sigma --test revocation`.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::ws::Ws;
use common::*;
use serde_json::{json, Value};

// ----- fixtures --------------------------------------------------------------

/// A temp directory whose `data` subdirectory is sigma's data directory.
struct DataDir(PathBuf);

impl DataDir {
    fn new(tag: &str) -> Self {
        Self(temp_dir(tag))
    }
    fn path(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const HA: &str = "T127.0.0.1:0[HA]";

/// Base config: generous login limits (each test logs in several times) and
/// a `/ws` activation deadline longer than any test.
const BASE: &str = r#"
[auth]
login_per_ip_per_minute = 1000
login_per_user_per_minute = 1000
"#;

fn add_user(data: &Path, name: &str) {
    let mut cmd = sigma_cmd();
    cmd.args(["user", "add", name, "--password-stdin", "--data"])
        .arg(data);
    let (st, _, err) = run_bounded(cmd, Some(format!("pw-{name}-secret\n").as_bytes()));
    assert!(st.success(), "sigma user add {name}: {err}");
}

/// A running sigma with users `alice` and `bob`.
struct Sigma {
    // Declared before `data`: the server stops before its directory goes.
    server: Server,
    toml: String,
    data: DataDir,
}

impl Sigma {
    fn start(auth: &str, tail: &str) -> Sigma {
        Self::start_prepared(auth, tail, |_| {})
    }

    /// Like [`Sigma::start`], calling `prepare` on the data directory
    /// before the server opens it.
    fn start_prepared(auth: &str, tail: &str, prepare: impl FnOnce(&Path)) -> Sigma {
        let data = DataDir::new("revoke");
        for u in ["alice", "bob"] {
            add_user(&data.path(), u);
        }
        prepare(&data.path());
        let toml = Cfg::new()
            .tail(&format!(
                "{BASE}{auth}\n\n[worlds]\nactivation_timeout = \"60s\"\n\n{tail}"
            ))
            .toml();
        let l = Server::launch(&toml, &data.path(), HA);
        Sigma {
            server: l.server,
            toml,
            data,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Logs `user` in; the `Cookie` header value.
    fn login(&self, user: &str) -> String {
        login_as(self.addr(), user, &format!("pw-{user}-secret"))
    }

    /// Several logins at once (Argon2 is slow in debug builds).
    fn logins<const N: usize>(&self, users: [&str; N]) -> [String; N] {
        thread::scope(|s| {
            let hs = users.map(|u| s.spawn(move || self.login(u)));
            hs.map(|h| h.join().expect("login thread"))
        })
    }

    /// `POST /auth/token` with the session cookie.
    fn token_request(&self, cookie: &str) -> Resp {
        request(
            self.addr(),
            "POST",
            "/auth/token",
            &[("Cookie", cookie), ("Origin", &self.origin())],
            b"",
        )
    }

    fn token(&self, cookie: &str) -> String {
        let r = self.token_request(cookie);
        assert_eq!(r.status, 200, "token: {r:?}");
        json_body(&r)["token"]
            .as_str()
            .expect("token string")
            .to_owned()
    }

    /// `GET /auth/whoami` with a bearer token.
    fn whoami_bearer(&self, token: &str) -> Resp {
        request(
            self.addr(),
            "GET",
            "/auth/whoami",
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
    }

    fn logout(&self, cookie: &str) {
        let r = request(
            self.addr(),
            "POST",
            "/logout",
            &[("Cookie", cookie), ("Origin", &self.origin())],
            b"",
        );
        assert_eq!(r.status, 204, "logout: {r:?}");
    }

    /// A WebSocket on `path` with the cookie (and this server's Origin).
    fn ws_cookie(&self, path: &str, cookie: &str) -> Ws {
        Ws::open(
            self.addr(),
            path,
            &format!("Cookie: {cookie}\r\nOrigin: {}\r\n", self.origin()),
        )
    }

    /// A WebSocket on `path` with a bearer token.
    fn ws_bearer(&self, path: &str, token: &str) -> Ws {
        Ws::open(
            self.addr(),
            path,
            &format!("Authorization: Bearer {token}\r\n"),
        )
    }
}

// ----- HTTP helpers ----------------------------------------------------------

fn json_body(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body_str()))
}

/// A 401 `invalid_token` for `reason`.
fn assert_refused_token(r: &Resp, reason: &str) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        json_body(r),
        json!({"error": "invalid_token", "reason": reason,
               "message": sigma_core::response::error_message("invalid_token")}),
        "{r:?}"
    );
}

// ----- WebSocket client ------------------------------------------------------

/// Subscribes a `&broadcast` socket to `channel`.
fn subscribe(ws: &mut Ws, channel: &str) {
    ws.send(&json!({"type": "subscribe", "channel": channel}));
    let r = ws.recv();
    assert_eq!(r["type"], "subscribed", "{r}");
}

// ----- tests -----------------------------------------------------------------

/// The 4401 close of every socket of the logged-out session, within one
/// second of the logout's answer; nothing of `user:alice:*` reaches them.
#[test]
fn logout_ends_the_sessions_tokens_and_sockets_only() {
    let up = Cfg::new().start();
    // Routes replace the defaults: the usual ones, and the proxy.
    let tail = format!(
        r#"
[[route]]
path = "/up"
to = "http://{}/echo"
auth = "required"

[[route]]
path = "/broadcast"
to = "&broadcast"
auth = "optional"

[[route]]
path = "/db"
to = "&db"
auth = "required"

[[route]]
path = "/ws"
to = "&world"
auth = "required"

[[route]]
path = "/world"
to = "&world"
auth = "required"
"#,
        up.addr()
    );
    let s = Sigma::start("", &tail);
    let [a, a2, b] = s.logins(["alice", "alice", "bob"]);
    let token = s.token(&a);
    let r = s.whoami_bearer(&token);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_body(&r)["user"], "alice");

    // The logged-out session's sockets.
    let mut bc = s.ws_cookie("/broadcast", &a);
    subscribe(&mut bc, "user:alice:inbox");
    let mut bt = s.ws_bearer("/broadcast", &token);
    subscribe(&mut bt, "user:alice:inbox");
    let mut db = s.ws_cookie("/db", &a);
    db.send(&json!({"type": "watch", "prefix": "", "id": 1}));
    assert_eq!(db.recv(), json!({"type": "result", "id": 1}));
    let mut world = s.ws_cookie("/ws", &a);
    let mut proxied = s.ws_cookie("/up", &a);
    proxied.send(&json!({"echo": 1}));
    assert_eq!(proxied.recv(), json!({"echo": 1}));
    // Another session of alice, and bob's: they must stay.
    let mut other = s.ws_cookie("/broadcast", &a2);
    subscribe(&mut other, "user:alice:inbox");
    let mut bobs = s.ws_cookie("/broadcast", &b);
    subscribe(&mut bobs, "public:lobby");

    s.logout(&a);
    let deadline = Instant::now() + Duration::from_secs(1);
    // Published after the logout: must reach alice's other session only.
    let r = request(
        s.addr(),
        "POST",
        "/broadcast/user:alice:inbox",
        &[
            ("Cookie", &a2),
            ("Origin", &s.origin()),
            ("Content-Type", "application/json"),
        ],
        br#""after logout""#,
    );
    assert_eq!(r.status, 202, "{r:?}");
    for (what, ws) in [
        ("broadcast (cookie)", &mut bc),
        ("broadcast (token)", &mut bt),
        ("db watch", &mut db),
        ("/ws session socket", &mut world),
        ("proxied upstream", &mut proxied),
    ] {
        let (code, before) = ws.closed_by(deadline);
        assert_eq!(code, Some(4401), "{what}");
        assert!(
            before.iter().all(|m| m["type"] != "message"),
            "{what} got a delivery after logout: {before:?}"
        );
    }
    // The other sessions: open, and alice's other one got the message.
    let m = other.recv();
    assert_eq!(
        (&m["type"], &m["channel"], &m["data"]),
        (
            &json!("message"),
            &json!("user:alice:inbox"),
            &json!("after logout")
        )
    );
    bobs.assert_open("bob's socket");

    // The token is dead: for requests and for new sockets.
    assert_refused_token(&s.whoami_bearer(&token), "session_ended");
    let refused = Ws::try_open(
        s.addr(),
        "/broadcast",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    let head = refused.err().expect("upgrade with a dead token");
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    // So is the cookie; the other session's token still works.
    assert!(Ws::try_open(
        s.addr(),
        "/db",
        &format!("Cookie: {a}\r\nOrigin: {}\r\n", s.origin())
    )
    .is_err());
    let t2 = s.token(&a2);
    assert_eq!(s.whoami_bearer(&t2).status, 200);
}

/// A socket of a session that expires (idle) closes with 4401 on its own:
/// no request notices it, the sweeper does.
#[test]
fn an_expired_sessions_sockets_close_without_any_request() {
    let s = Sigma::start("session_idle_timeout = \"2s\"", "");
    let a = s.login("alice");
    let token = s.token(&a);
    let mut bc = s.ws_cookie("/broadcast", &a);
    // The last use of the session: this upgrade.
    let mut bt = s.ws_bearer("/broadcast", &token);
    let last_use = Instant::now();
    subscribe(&mut bt, "user:alice:x");
    let deadline = last_use + Duration::from_secs(2) + Duration::from_secs(1);
    for (what, ws) in [("cookie", &mut bc), ("token", &mut bt)] {
        let (code, _) = ws.closed_by(deadline);
        assert_eq!(code, Some(4401), "{what}");
    }
    // Not before the session could have expired (the upgrade before
    // `last_use` touched it at most a request's time earlier).
    assert!(
        last_use.elapsed() >= Duration::from_millis(1500),
        "closed too early: {:?}",
        last_use.elapsed()
    );
    assert_refused_token(&s.whoami_bearer(&token), "session_ended");
}

/// Tokens without `sid` (issued by an older sigma, same key) and tokens
/// naming a session that never existed are refused.
#[test]
fn tokens_without_a_live_sid_are_refused() {
    let mut seed = [0u8; 32];
    let s = Sigma::start_prepared("", "", |data| {
        use sigma::store::SecretStore as _;
        let store = sigma::store::RedbStore::open(data).expect("store");
        let got = store.secret("jwt-ed25519-seed", 32).expect("seed");
        seed.copy_from_slice(&got);
    });
    let iss = sigma::auth::jwt::Issuer::new(
        &seed,
        "sigma".into(),
        "sigma".into(),
        Duration::from_secs(600),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // The same key: a token with a live sid from the server verifies.
    let a = s.login("alice");
    let live = s.token(&a);
    assert_eq!(s.whoami_bearer(&live).status, 200);
    let (old, _) = iss.issue("alice", now);
    assert_refused_token(&s.whoami_bearer(&old), "missing_sid");
    let (made_up, _) = iss.issue_for_session("alice", "AAAAAAAAAAAAAAAAAAAAAA", now);
    assert_refused_token(&s.whoami_bearer(&made_up), "session_ended");
    let (bad, _) = iss.issue_for_session("alice", "not a handle", now);
    assert_refused_token(&s.whoami_bearer(&bad), "invalid_sid");
    // The live token's sid under another user's name: refused.
    let payload = live.split('.').nth(1).expect("payload");
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("claims");
    let sid = claims["sid"].as_str().expect("sid claim");
    // The handle is not the session id (the cookie).
    assert!(!a.contains(sid), "sid must not reveal the session id");
    let (as_bob, _) = iss.issue_for_session("bob", sid, now);
    assert_refused_token(&s.whoami_bearer(&as_bob), "session_ended");
}

/// A deleted user's token dies (across the restart `sigma user del` needs,
/// since it cannot run beside a server): the store lookup of an uncached
/// `sid` finds no session.
#[test]
fn a_deleted_users_token_is_refused_after_restart() {
    let mut s = Sigma::start("", "");
    let [a, b] = s.logins(["alice", "bob"]);
    let (ta, tb) = (s.token(&a), s.token(&b));
    s.server.signal("TERM");
    let (st, _) = s.server.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "sigma exited with {st}");
    let mut cmd = sigma_cmd();
    cmd.args(["user", "del", "alice", "--data"])
        .arg(s.data.path());
    let (st, _, err) = run_bounded(cmd, None);
    assert!(st.success(), "sigma user del: {err}");
    let l = Server::launch(&s.toml, &s.data.path(), HA);
    s.server = l.server;
    assert_refused_token(&s.whoami_bearer(&ta), "session_ended");
    // Bob's session survived the restart, and so did his token.
    assert_eq!(s.whoami_bearer(&tb).status, 200);
}

/// `/auth/token` is throttled per session: a burst past the quota gets
/// 429 with `Retry-After`; another session of the same user is not held
/// back by it.
#[test]
fn token_requests_are_throttled_per_session() {
    let s = Sigma::start("token_per_session_per_minute = 3", "");
    let [a, a2] = s.logins(["alice", "alice"]);
    for n in 0..3 {
        let r = s.token_request(&a);
        assert_eq!(r.status, 200, "token {n}: {r:?}");
    }
    let r = s.token_request(&a);
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(json_body(&r)["error"], "too_many_requests");
    let after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {r:?}"));
    // 3 a minute: one more every 20 s.
    assert!((1..=20).contains(&after), "Retry-After {after}");
    assert_eq!(s.token_request(&a2).status, 200);
}
