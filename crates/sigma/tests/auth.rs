//! `A`, the identity gate (DESIGN §4, §9), against the real binary over real
//! sockets: password login (form and JSON), the session cookie, whoami,
//! logout, sessions across a restart, idle and absolute expiry, uniform
//! failures, login throttling, session rotation, cross-site protection,
//! identity-header stripping, the reply rule (`&crossed`), route access
//! (`auth`, `users`, `[H]` listeners) and the login page.
//!
//! Needs the `test-destinations` feature (`&crossed`, `&inspect`;
//! `required-features` in Cargo.toml, so plain `cargo test` skips it):
//! `cargo nextest run -p sigma --features test-destinations --test auth`.
//!
//! Argon2id verification is slow in debug builds (most of a second per
//! login), so each test logs in as few times as it can, and independent
//! logins run in parallel.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ----- fixtures --------------------------------------------------------------

/// A temp directory whose `data` subdirectory is sigma's data directory;
/// removed on drop.
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

/// A running sigma with its data directory and the admin password.
struct Sigma {
    // Declared before `data`: the server stops before its directory goes.
    server: Server,
    addrs: Vec<SocketAddr>,
    admin_pw: String,
    toml: String,
    pipeline: String,
    data: DataDir,
}

impl Sigma {
    /// A fresh data directory (so sigma creates `admin` and prints its
    /// password) and `tail` (`[auth]`, `[[route]]`s) as config.
    fn start(tail: &str) -> Sigma {
        Self::start_with(tail, HA, &[])
    }

    /// Like [`Sigma::start`] on `pipeline`; `users` are added with the CLI
    /// first (then sigma creates no `admin` of its own).
    fn start_with(tail: &str, pipeline: &str, users: &[(&str, &str)]) -> Sigma {
        let data = DataDir::new("auth");
        for (name, pw) in users {
            add_user(&data.path(), name, pw);
        }
        let toml = Cfg::new().tail(tail).toml();
        let l = Server::launch(&toml, &data.path(), pipeline);
        let admin_pw = admin_password(&l.stdout);
        if users.is_empty() {
            assert!(
                admin_pw.is_some(),
                "no admin password on first start: {:?}",
                l.stdout
            );
        }
        Sigma {
            server: l.server,
            addrs: l.addrs,
            admin_pw: admin_pw.unwrap_or_default(),
            toml,
            pipeline: pipeline.to_owned(),
            data,
        }
    }

    /// The first listener (`[HA]`).
    fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// This server's own origin, as a browser on it would send it.
    fn origin(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Stops the server with SIGTERM, waits for it to exit, and starts a
    /// new one on the same data directory and config.
    fn restart(&mut self) -> Vec<String> {
        self.server.signal("TERM");
        let (st, _) = self.server.wait_exit(Duration::from_secs(15));
        assert!(st.success(), "sigma exited with {st} after SIGTERM");
        let l = Server::launch(&self.toml, &self.data.path(), &self.pipeline);
        self.server = l.server;
        self.addrs = l.addrs;
        l.stdout
    }

    /// Logs `admin` in with JSON; the session id.
    fn admin_session(&self) -> String {
        let r = login_json(self.addr(), "admin", &self.admin_pw, &[]);
        assert_eq!(r.status, 200, "admin login: {r:?}");
        session_id(&r)
    }
}

/// `created user admin with password PW` from first-start stdout.
fn admin_password(stdout: &[String]) -> Option<String> {
    stdout.iter().find_map(|l| {
        l.strip_prefix("created user admin with password ")
            .map(|p| p.trim().to_owned())
    })
}

/// `sigma user add NAME --password-stdin --data DIR`.
fn add_user(data: &std::path::Path, name: &str, pw: &str) {
    let mut cmd = sigma_cmd();
    cmd.args(["user", "add", name, "--password-stdin", "--data"])
        .arg(data);
    let (st, _, err) = run_bounded(cmd, Some(format!("{pw}\n").as_bytes()));
    assert!(st.success(), "sigma user add {name}: {err}");
}

// ----- HTTP helpers ----------------------------------------------------------

fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(addr, "GET", path, headers, b"")
}

/// `Cookie: sigma_session=ID`.
fn cookie(id: &str) -> String {
    format!("sigma_session={id}")
}

fn login_json(addr: SocketAddr, user: &str, pw: &str, headers: &[(&str, &str)]) -> Resp {
    let body = json!({"user": user, "password": pw}).to_string();
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(addr, "POST", "/login", &h, body.as_bytes())
}

fn login_form(
    addr: SocketAddr,
    user: &str,
    pw: &str,
    next: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut s = form_urlencoded::Serializer::new(String::new());
    s.append_pair("user", user).append_pair("password", pw);
    if let Some(n) = next {
        s.append_pair("next", n);
    }
    let body = s.finish();
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    request(addr, "POST", "/login", &h, body.as_bytes())
}

fn json_body(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", r.body_str()))
}

/// `GET /auth/whoami`, with the session `id` if given.
fn whoami(addr: SocketAddr, id: Option<&str>) -> Value {
    let c = id.map(cookie);
    let mut h = Vec::new();
    if let Some(c) = &c {
        h.push(("Cookie", c.as_str()));
    }
    let r = get_with(addr, "/auth/whoami", &h);
    assert_eq!(r.status, 200, "whoami: {r:?}");
    json_body(&r)
}

fn anonymous() -> Value {
    json!({"user": null, "provider": null})
}

fn logged_in(user: &str) -> Value {
    json!({"user": user, "provider": "password"})
}

/// The parsed `sigma_session` `Set-Cookie`: value and attributes (names
/// lowercased, values as sent).
struct SetCookie {
    value: String,
    attrs: Vec<(String, String)>,
}

impl SetCookie {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }
}

/// The one `Set-Cookie: sigma_session=…` of `r`.
fn set_cookie(r: &Resp) -> SetCookie {
    let all: Vec<&str> = r
        .headers_named("set-cookie")
        .into_iter()
        .filter(|v| v.trim_start().starts_with("sigma_session="))
        .collect();
    assert_eq!(all.len(), 1, "one sigma_session cookie expected: {r:?}");
    let mut parts = all[0].split(';').map(str::trim);
    let first = parts.next().unwrap_or("");
    let value = first
        .strip_prefix("sigma_session=")
        .expect("cookie name")
        .to_owned();
    let attrs = parts
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), v.trim().to_owned()),
            None => (p.to_ascii_lowercase(), String::new()),
        })
        .collect();
    SetCookie { value, attrs }
}

/// The session id a successful login set.
fn session_id(r: &Resp) -> String {
    set_cookie(r).value
}

/// 43 characters of unpadded base64url: 256 random bits.
fn assert_session_id_shape(id: &str) {
    assert_eq!(id.len(), 43, "session id {id:?} is not 43 chars");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "session id {id:?} is not base64url"
    );
}

/// The attributes every session cookie must have.
fn assert_cookie_attrs(c: &SetCookie, max_age: u64, secure: bool) {
    assert!(c.has("httponly"), "no HttpOnly: {:?}", c.attrs);
    assert!(
        c.attr("samesite")
            .is_some_and(|v| v.eq_ignore_ascii_case("lax")),
        "not SameSite=Lax: {:?}",
        c.attrs
    );
    assert_eq!(c.attr("path"), Some("/"), "Path: {:?}", c.attrs);
    assert_eq!(
        c.attr("max-age"),
        Some(max_age.to_string().as_str()),
        "Max-Age: {:?}",
        c.attrs
    );
    assert_eq!(c.has("secure"), secure, "Secure: {:?}", c.attrs);
    assert!(
        !c.has("domain"),
        "a Domain widens the cookie: {:?}",
        c.attrs
    );
}

/// The whole response as text (status line, headers, body).
fn resp_text(r: &Resp) -> String {
    let mut s = format!("{} {} {}\n", r.version, r.status, r.reason);
    for (n, v) in &r.headers {
        s.push_str(&format!("{n}: {v}\n"));
    }
    s.push_str(&r.body_str());
    s
}

/// Runs `jobs` on threads at once; their results in order.
fn parallel<T: Send>(jobs: Vec<Box<dyn FnOnce() -> T + Send + '_>>) -> Vec<T> {
    thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|j| s.spawn(j)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("job panicked"))
            .collect()
    })
}

/// A positive whole number of seconds in `Retry-After`.
fn assert_retry_after(r: &Resp) {
    let v = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {r:?}"));
    let n: u64 = v
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {v:?} is not an integer"));
    assert!(n > 0 && n <= 60, "Retry-After {n}");
}

/// `sigma_identity_mismatch_total`.
fn mismatches(addr: SocketAddr) -> u64 {
    let r = get_with(addr, "/metrics", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let text = r.body_str();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("sigma_identity_mismatch_total")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sigma_identity_mismatch_total in:\n{text}"))
}

/// The header names `&inspect` saw, and its identity.
fn inspect(r: &Resp) -> (Value, Vec<(String, String)>) {
    assert_eq!(r.status, 200, "inspect: {r:?}");
    let v = json_body(r);
    let headers = v["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|p| {
            (
                p[0].as_str().expect("name").to_owned(),
                p[1].as_str().expect("value").to_owned(),
            )
        })
        .collect();
    (v["identity"].clone(), headers)
}

// ----- WebSocket helpers -----------------------------------------------------

/// Sends a WebSocket handshake for `path` with `headers`; returns the
/// socket and the response head (read byte by byte, so nothing after it is
/// consumed).
fn ws_handshake(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (TcpStream, String) {
    let mut t = TcpStream::connect(addr).expect("connect");
    t.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    t.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    t.write_all(req.as_bytes()).expect("handshake");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            t.read(&mut b).expect("read handshake"),
            1,
            "closed in handshake: {}",
            lossy(&head)
        );
        head.push(b[0]);
    }
    (t, String::from_utf8_lossy(&head).into_owned())
}

/// Whatever arrives within `limit` (or until EOF or an error).
fn read_for(t: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || t.set_read_timeout(Some(left)).is_err() {
            return all;
        }
        match t.read(&mut buf) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a response head.
fn head_status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"))
}

/// A masked client frame.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    assert!(n < 126, "small frames only");
    f.push(0x80 | n as u8);
    let key = [0x37u8, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Reads one server frame: opcode and payload (server frames are unmasked).
fn ws_read(t: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    t.read_exact(&mut h).expect("frame header");
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            t.read_exact(&mut l).expect("len16");
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            t.read_exact(&mut l).expect("len64");
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).expect("len")];
    t.read_exact(&mut payload).expect("payload");
    (h[0] & 0x0f, payload)
}

/// Sends a Ping with `token` and reads up to its Pong; returns the data
/// frames (text, binary, continuation) that arrived before it. Server
/// Pings in between are skipped.
fn data_before_pong(t: &mut TcpStream, token: &[u8]) -> Vec<(u8, Vec<u8>)> {
    t.write_all(&ws_frame(0x9, token)).expect("ping");
    let mut data = Vec::new();
    loop {
        let (op, payload) = ws_read(t);
        match op {
            0xA if payload == token => return data,
            0x9 | 0xA => {}
            0x8 => panic!("closed before the pong: {payload:?}; data {data:?}"),
            _ => data.push((op, payload)),
        }
    }
}

fn assert_no_mallory(what: &str, text: &str) {
    let low = text.to_ascii_lowercase();
    assert!(
        !low.contains("mallory") && !low.contains("secret"),
        "{what} leaked the crossed reply: {text:?}"
    );
}

// ----- 1. login: form, JSON, the cookie --------------------------------------

#[test]
fn form_login_redirects_only_to_same_origin_next() {
    let s = Sigma::start("[auth]\nsession_lifetime = \"1h\"\nsession_idle_timeout = \"30m\"\n");
    let addr = s.addr();
    let pw = s.admin_pw.clone();
    let cases: [(Option<&str>, &str); 5] = [
        (None, "/"),
        (Some("/chat?x=1"), "/chat?x=1"),
        (Some("//evil.test"), "/"),
        (Some("https://evil.test"), "/"),
        (Some("/\\evil.test"), "/"),
    ];
    let jobs = cases
        .iter()
        .map(|&(next, _)| {
            let pw = pw.clone();
            Box::new(move || login_form(addr, "admin", &pw, next, &[]))
                as Box<dyn FnOnce() -> Resp + Send>
        })
        .collect();
    let resps = parallel(jobs);
    let mut ids = Vec::new();
    for ((next, want), r) in cases.iter().zip(&resps) {
        assert_eq!(r.status, 303, "next {next:?}: {r:?}");
        assert_eq!(r.header("location"), Some(*want), "next {next:?}: {r:?}");
        let c = set_cookie(r);
        assert_cookie_attrs(&c, 3600, false);
        assert_session_id_shape(&c.value);
        ids.push(c.value);
    }
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), ids.len(), "session ids repeat: {ids:?}");
    // Each of them is a live session.
    for id in &ids {
        assert_eq!(whoami(addr, Some(id)), logged_in("admin"));
    }
}

#[test]
fn json_login_and_whoami() {
    let s = Sigma::start("");
    let addr = s.addr();
    // Anonymous, with no cookie and with a well-formed but unknown one.
    assert_eq!(whoami(addr, None), anonymous());
    let forged = "A".repeat(43);
    assert_eq!(whoami(addr, Some(&forged)), anonymous());

    let r = login_json(addr, "admin", &s.admin_pw, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{r:?}"
    );
    assert_eq!(json_body(&r), json!({"user": "admin"}));
    let c = set_cookie(&r);
    // The default session_lifetime is 30 days.
    assert_cookie_attrs(&c, 30 * 24 * 3600, false);
    assert_session_id_shape(&c.value);

    assert_eq!(whoami(addr, Some(&c.value)), logged_in("admin"));
    // The session cookie among others still counts.
    let mixed = format!("theme=dark; {}; lang=en", cookie(&c.value));
    let r = get_with(addr, "/auth/whoami", &[("Cookie", &mixed)]);
    assert_eq!(json_body(&r), logged_in("admin"));
    // Without the cookie the client is anonymous again.
    assert_eq!(whoami(addr, None), anonymous());
}

#[test]
fn cookie_is_secure_only_when_configured() {
    let s = Sigma::start(
        "[auth]\ncookie_secure = true\nsession_lifetime = \"2h\"\nsession_idle_timeout = \"1h\"\n",
    );
    let r = login_json(s.addr(), "admin", &s.admin_pw, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let c = set_cookie(&r);
    assert_cookie_attrs(&c, 7200, true);
    // The cookie that clears it on logout is Secure too.
    let r = request(
        s.addr(),
        "POST",
        "/logout",
        &[("Cookie", &cookie(&c.value))],
        b"",
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert!(set_cookie(&r).has("secure"), "{r:?}");
}

#[test]
fn cookie_is_secure_when_public_url_is_https() {
    // TLS configured by an https public URL (a terminator in front) and
    // cookie_secure left false: the session cookie is Secure all the same.
    let s = Sigma::start(
        "[auth]\npublic_url = \"https://chat.example.com\"\nsession_lifetime = \"2h\"\nsession_idle_timeout = \"1h\"\n",
    );
    let r = login_json(s.addr(), "admin", &s.admin_pw, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let c = set_cookie(&r);
    assert_cookie_attrs(&c, 7200, true);
    let r = request(
        s.addr(),
        "POST",
        "/logout",
        &[("Cookie", &cookie(&c.value))],
        b"",
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert!(set_cookie(&r).has("secure"), "{r:?}");
}

// ----- 3. logout --------------------------------------------------------------

#[test]
fn logout_revokes_the_session_server_side() {
    let s =
        Sigma::start("[[route]]\npath = \"/private\"\nto = \"&inspect\"\nauth = \"required\"\n");
    let addr = s.addr();
    let id = s.admin_session();
    let ck = cookie(&id);
    assert_eq!(whoami(addr, Some(&id)), logged_in("admin"));
    assert_eq!(get_with(addr, "/private", &[("Cookie", &ck)]).status, 200);

    let r = request(addr, "POST", "/logout", &[("Cookie", &ck)], b"");
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    let cleared = set_cookie(&r);
    assert_eq!(cleared.value, "", "logout must clear the cookie: {r:?}");
    assert_eq!(cleared.attr("max-age"), Some("0"), "{r:?}");
    assert_eq!(cleared.attr("path"), Some("/"), "{r:?}");

    // Replaying the old cookie (as a client that kept it would).
    assert_eq!(whoami(addr, Some(&id)), anonymous());
    let r = get_with(addr, "/private", &[("Cookie", &ck)]);
    assert_eq!(r.status, 401, "revoked session still admitted: {r:?}");
    // And logging out again is harmless.
    let r = request(addr, "POST", "/logout", &[("Cookie", &ck)], b"");
    assert_eq!(r.status, 204, "{r:?}");
}

// ----- 4. restart -------------------------------------------------------------

#[test]
fn sessions_survive_a_restart_and_revocations_too() {
    let mut s = Sigma::start("");
    let (kept, revoked) = {
        let addr = s.addr();
        let pw = s.admin_pw.clone();
        let pw2 = pw.clone();
        let r = parallel(vec![
            Box::new(move || login_json(addr, "admin", &pw, &[]))
                as Box<dyn FnOnce() -> Resp + Send>,
            Box::new(move || login_json(addr, "admin", &pw2, &[])),
        ]);
        assert_eq!(r[0].status, 200, "{:?}", r[0]);
        assert_eq!(r[1].status, 200, "{:?}", r[1]);
        (session_id(&r[0]), session_id(&r[1]))
    };
    assert_eq!(whoami(s.addr(), Some(&kept)), logged_in("admin"));
    let r = request(
        s.addr(),
        "POST",
        "/logout",
        &[("Cookie", &cookie(&revoked))],
        b"",
    );
    assert_eq!(r.status, 204, "{r:?}");

    let stdout = s.restart();
    assert!(
        admin_password(&stdout).is_none(),
        "admin re-created on restart: {stdout:?}"
    );
    assert_eq!(
        whoami(s.addr(), Some(&kept)),
        logged_in("admin"),
        "the session did not survive the restart"
    );
    assert_eq!(
        whoami(s.addr(), Some(&revoked)),
        anonymous(),
        "a revoked session came back after the restart"
    );
}

// ----- 5. expiry ----------------------------------------------------------------

/// Sleeps until `at` after `t0`.
fn sleep_until(t0: Instant, at: Duration) {
    let now = t0.elapsed();
    if at > now {
        thread::sleep(at - now);
    }
}

#[test]
fn unused_session_expires_after_the_idle_timeout() {
    // A long lifetime, so only the idle timeout can end the session.
    let s = Sigma::start(
        "[auth]\nsession_idle_timeout = \"1s\"\nsession_lifetime = \"1h\"\n\
         [[route]]\npath = \"/private\"\nto = \"&inspect\"\nauth = \"required\"\n",
    );
    let addr = s.addr();
    let id = s.admin_session();
    let t0 = Instant::now();
    assert_eq!(
        whoami(addr, Some(&id)),
        logged_in("admin"),
        "a session used {:?} after login is already gone (idle timeout 1 s)",
        t0.elapsed()
    );
    // Now unused for 1.5 s.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(whoami(addr, Some(&id)), anonymous(), "idle session alive");
    let r = get_with(addr, "/private", &[("Cookie", &cookie(&id))]);
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn used_session_still_dies_at_its_lifetime() {
    let s = Sigma::start("[auth]\nsession_idle_timeout = \"1s\"\nsession_lifetime = \"2s\"\n");
    let addr = s.addr();
    let id = s.admin_session();
    // The session was created before its login answer arrived.
    let t0 = Instant::now();
    let mut seen = Vec::new();
    // Used every 0.5 s: never idle for 1 s, so alive until the lifetime.
    for step in 1..=3u64 {
        sleep_until(t0, Duration::from_millis(500 * step));
        let at = t0.elapsed();
        let who = whoami(addr, Some(&id));
        seen.push((at, who["user"].clone()));
        assert_eq!(
            who,
            logged_in("admin"),
            "a session used every 0.5 s died {at:?} after login \
             (idle 1 s, lifetime 2 s); uses so far: {seen:?}"
        );
    }
    // Keep using it; past 2 s it is gone, whatever the use.
    for step in 4..=6u64 {
        sleep_until(t0, Duration::from_millis(500 * step));
        let at = t0.elapsed();
        let who = whoami(addr, Some(&id));
        seen.push((at, who["user"].clone()));
        if step >= 5 {
            assert_eq!(
                who,
                anonymous(),
                "session alive {at:?} after login, lifetime 2 s; uses: {seen:?}"
            );
        }
    }
}

// ----- 6. uniform failures -----------------------------------------------------

/// Status, reason, headers without `Date`, body.
fn comparable(r: &Resp) -> (u16, String, Vec<(String, String)>, Vec<u8>) {
    (
        r.status,
        r.reason.clone(),
        r.headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
            .cloned()
            .collect(),
        r.body.clone(),
    )
}

#[test]
fn wrong_password_and_unknown_user_look_the_same() {
    let s = Sigma::start("");
    let addr = s.addr();
    let jobs: Vec<Box<dyn FnOnce() -> Resp + Send>> = vec![
        Box::new(move || login_json(addr, "admin", "wrong password", &[])),
        Box::new(move || login_json(addr, "ghost", "wrong password", &[])),
        Box::new(move || login_json(addr, "not a valid/name", "wrong password", &[])),
        Box::new(move || login_form(addr, "admin", "wrong password", Some("/x"), &[])),
        Box::new(move || login_form(addr, "ghost", "wrong password", Some("/x"), &[])),
    ];
    let r = parallel(jobs);
    for x in &r {
        assert_eq!(x.status, 401, "{x:?}");
        assert!(x.header("set-cookie").is_none(), "{x:?}");
    }
    assert_eq!(
        json_body(&r[0]),
        json!({"error": "invalid_credentials", "message": sigma_core::response::error_message("invalid_credentials")})
    );
    assert_eq!(
        comparable(&r[0]),
        comparable(&r[1]),
        "JSON: wrong password vs unknown user"
    );
    assert_eq!(
        comparable(&r[0]),
        comparable(&r[2]),
        "JSON: wrong password vs invalid user name"
    );
    assert_eq!(
        comparable(&r[3]),
        comparable(&r[4]),
        "form: wrong password vs unknown user"
    );
}

// ----- 7. throttling ------------------------------------------------------------

#[test]
fn login_is_throttled_per_user() {
    let s = Sigma::start("[auth]\nlogin_per_user_per_minute = 3\nlogin_per_ip_per_minute = 100\n");
    let addr = s.addr();
    let jobs = (0..3)
        .map(|_| {
            Box::new(move || login_json(addr, "admin", "wrong", &[]))
                as Box<dyn FnOnce() -> Resp + Send>
        })
        .collect();
    for r in parallel(jobs) {
        assert_eq!(r.status, 401, "{r:?}");
    }
    // The 4th attempt for admin: refused before the password is looked
    // at, even the right one.
    for r in [
        login_json(addr, "admin", "wrong", &[]),
        login_json(addr, "admin", &s.admin_pw, &[]),
        login_form(addr, "admin", &s.admin_pw, None, &[]),
    ] {
        assert_eq!(r.status, 429, "{r:?}");
        assert_retry_after(&r);
        assert!(
            r.header("set-cookie").is_none(),
            "throttled login set a cookie: {r:?}"
        );
    }
    // Another user from the same address is not throttled.
    let r = login_json(addr, "bob", "wrong", &[]);
    assert_eq!(r.status, 401, "{r:?}");
}

#[test]
fn login_is_throttled_per_ip_and_forwarded_for_does_not_help() {
    let s = Sigma::start("[auth]\nlogin_per_ip_per_minute = 5\nlogin_per_user_per_minute = 100\n");
    let addr = s.addr();
    // Five different users, each claiming another client address in
    // X-Forwarded-For (no proxy is trusted, so it must not count).
    let jobs = (1..=5)
        .map(|i| {
            Box::new(move || {
                let xff = format!("10.0.0.{i}");
                login_json(
                    addr,
                    &format!("user{i}"),
                    "wrong",
                    &[("X-Forwarded-For", &xff)],
                )
            }) as Box<dyn FnOnce() -> Resp + Send>
        })
        .collect();
    for r in parallel(jobs) {
        assert_eq!(r.status, 401, "{r:?}");
    }
    let r = login_json(addr, "user6", "wrong", &[("X-Forwarded-For", "10.0.0.6")]);
    assert_eq!(r.status, 429, "6th attempt from one IP: {r:?}");
    assert_retry_after(&r);
    // The right password does not bypass it.
    let r = login_json(addr, "admin", &s.admin_pw, &[]);
    assert_eq!(r.status, 429, "{r:?}");
    assert_retry_after(&r);
    assert!(r.header("set-cookie").is_none(), "{r:?}");
}

// ----- 8. rotation -------------------------------------------------------------

#[test]
fn login_rotates_the_session_id() {
    let s = Sigma::start("");
    let addr = s.addr();
    let first = s.admin_session();
    let r = login_json(addr, "admin", &s.admin_pw, &[("Cookie", &cookie(&first))]);
    assert_eq!(r.status, 200, "{r:?}");
    let second = session_id(&r);
    assert_session_id_shape(&second);
    assert_ne!(first, second, "login kept the session id");
    assert_eq!(whoami(addr, Some(&second)), logged_in("admin"));
    assert_eq!(
        whoami(addr, Some(&first)),
        anonymous(),
        "the pre-login session survived the new login"
    );
}

// ----- 9. cross-site -----------------------------------------------------------

#[test]
fn cross_site_requests_with_the_cookie_are_refused() {
    let s = Sigma::start(
        "[auth]\nallowed_origins = [\"http://app.test\"]\n\
         [[route]]\npath = \"/echo\"\nto = \"&echo\"\nauth = \"optional\"\n",
    );
    let addr = s.addr();
    let id = s.admin_session();
    let ck = cookie(&id);
    let own = s.origin();
    let other_port = format!("http://127.0.0.1:{}", addr.port().wrapping_add(1));
    let post = |headers: &[(&str, &str)]| request(addr, "POST", "/echo", headers, b"payload");

    for (why, origin) in [
        ("evil origin", "http://evil.test"),
        ("opaque origin", "null"),
        ("same host, other port", other_port.as_str()),
    ] {
        let r = post(&[("Cookie", &ck), ("Origin", origin)]);
        assert_eq!(r.status, 403, "{why}: {r:?}");
        assert!(!r.body_str().contains("payload"), "{why}: {r:?}");
    }
    for m in ["PUT", "DELETE", "PATCH"] {
        let r = request(
            addr,
            m,
            "/echo",
            &[("Cookie", &ck), ("Origin", "http://evil.test")],
            b"payload",
        );
        assert_eq!(r.status, 403, "{m}: {r:?}");
    }
    let r = post(&[("Cookie", &ck), ("Sec-Fetch-Site", "cross-site")]);
    assert_eq!(r.status, 403, "Sec-Fetch-Site: cross-site: {r:?}");

    // Accepted: own origin, an allowed origin, same-origin fetch metadata,
    // no browser metadata at all, a safe method, or no cookie.
    for (why, headers) in [
        (
            "own origin",
            vec![("Cookie", ck.as_str()), ("Origin", own.as_str())],
        ),
        (
            "allowed origin",
            vec![("Cookie", ck.as_str()), ("Origin", "http://app.test")],
        ),
        (
            "same-origin fetch",
            vec![("Cookie", ck.as_str()), ("Sec-Fetch-Site", "same-origin")],
        ),
        ("no Origin", vec![("Cookie", ck.as_str())]),
        ("no cookie", vec![("Origin", "http://evil.test")]),
    ] {
        let r = post(&headers);
        assert_eq!(r.status, 200, "{why}: {r:?}");
        assert_eq!(r.body_str(), "payload", "{why}");
    }
    let r = get_with(
        addr,
        "/echo",
        &[("Cookie", &ck), ("Origin", "http://evil.test")],
    );
    assert_eq!(r.status, 200, "GET is not state-changing: {r:?}");

    // WebSocket upgrades (cross-site WebSocket hijacking).
    for (why, h) in [
        ("evil origin", ("Origin", "http://evil.test")),
        ("cross-site fetch", ("Sec-Fetch-Site", "cross-site")),
    ] {
        let (mut t, head) = ws_handshake(addr, "/echo", &[("Cookie", &ck), h]);
        assert_eq!(head_status(&head), 403, "ws {why}: {head}");
        // The socket was not upgraded: a frame sent anyway is not echoed.
        let _ = t.write_all(&ws_frame(0x1, b"hi"));
        let rest = read_for(&mut t, Duration::from_millis(500));
        assert!(
            find(&rest, &[0x81, 2, b'h', b'i']).is_none(),
            "ws {why}: refused upgrade still echoes: {}",
            lossy(&rest)
        );
    }
    for origin in [own.as_str(), "http://app.test"] {
        let (mut t, head) = ws_handshake(addr, "/echo", &[("Cookie", &ck), ("Origin", origin)]);
        assert_eq!(head_status(&head), 101, "ws from {origin}: {head}");
        t.write_all(&ws_frame(0x1, b"hi")).expect("send");
        assert_eq!(ws_read(&mut t), (0x1, b"hi".to_vec()), "echo from {origin}");
    }

    // Login CSRF: a cross-site page cannot log the visitor in.
    let r = login_json(
        addr,
        "admin",
        &s.admin_pw,
        &[("Origin", "http://evil.test")],
    );
    assert_eq!(r.status, 403, "cross-site JSON login: {r:?}");
    assert!(r.header("set-cookie").is_none(), "{r:?}");
    let r = login_form(
        addr,
        "admin",
        &s.admin_pw,
        None,
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(r.status, 403, "cross-site form login: {r:?}");
    assert!(r.header("set-cookie").is_none(), "{r:?}");

    // Logout CSRF: a cross-site page cannot log the visitor out.
    let r = request(
        addr,
        "POST",
        "/logout",
        &[("Cookie", &ck), ("Origin", "http://evil.test")],
        b"",
    );
    assert_eq!(r.status, 403, "cross-site logout: {r:?}");
    assert_eq!(whoami(addr, Some(&id)), logged_in("admin"));
}

// ----- 10. identity headers ---------------------------------------------------

const SPOOFED: [(&str, &str); 4] = [
    ("X-Sigma-User", "admin"),
    ("x-sigma-identity", "x"),
    ("X_Sigma_User", "admin"),
    ("X-SIGMA-World", "y"),
];

/// Asserts that none of the spoofed headers reached the destination, and
/// that an innocent one did.
fn assert_stripped(why: &str, headers: &[(String, String)]) {
    for (n, v) in headers {
        let norm = n.to_ascii_lowercase().replace('_', "-");
        assert!(
            !norm.starts_with("x-sigma-"),
            "{why}: the destination saw {n}: {v}; all: {headers:?}"
        );
    }
    assert!(
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("x-innocent") && v == "1"),
        "{why}: ordinary headers must pass: {headers:?}"
    );
}

fn spoofed_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h: Vec<(&str, &str)> = SPOOFED.to_vec();
    h.push(("X-Innocent", "1"));
    h.extend_from_slice(extra);
    h
}

#[test]
fn spoofed_identity_headers_never_reach_a_destination() {
    let s =
        Sigma::start("[[route]]\npath = \"/inspect\"\nto = \"&inspect\"\nauth = \"optional\"\n");
    let addr = s.addr();
    let r = get_with(addr, "/inspect", &spoofed_headers(&[]));
    let (identity, headers) = inspect(&r);
    assert_eq!(identity, Value::Null, "anonymous: {r:?}");
    assert_stripped("anonymous", &headers);

    let id = s.admin_session();
    let ck = cookie(&id);
    let r = get_with(addr, "/inspect", &spoofed_headers(&[("Cookie", &ck)]));
    let (identity, headers) = inspect(&r);
    assert_eq!(identity, logged_in("admin"), "logged in: {r:?}");
    assert_stripped("logged in", &headers);

    // The same on a POST with a body.
    let r = request(
        addr,
        "POST",
        "/inspect",
        &spoofed_headers(&[("Cookie", &ck)]),
        b"{}",
    );
    let (identity, headers) = inspect(&r);
    assert_eq!(identity, logged_in("admin"), "POST: {r:?}");
    assert_stripped("POST", &headers);
}

#[test]
fn auth_none_route_is_forwarded_without_identity() {
    // config.rs, AuthLevel::None: "Anyone; forwarded with identity `null`".
    let s = Sigma::start(
        "[[route]]\npath = \"/public\"\nto = \"&inspect\"\nauth = \"none\"\n\
         [[route]]\npath = \"/inspect\"\nto = \"&inspect\"\nauth = \"optional\"\n",
    );
    let addr = s.addr();
    let ck = cookie(&s.admin_session());
    let (identity, _) = inspect(&get_with(addr, "/inspect", &[("Cookie", &ck)]));
    assert_eq!(identity, logged_in("admin"), "optional route");
    let (identity, _) = inspect(&get_with(addr, "/public", &[("Cookie", &ck)]));
    assert_eq!(
        identity,
        Value::Null,
        "an auth = \"none\" route received the user's identity"
    );
}

// ----- 11. the reply rule -------------------------------------------------------

#[test]
fn crossed_replies_never_reach_the_client() {
    let s =
        Sigma::start("[[route]]\npath = \"/crossed\"\nto = \"&crossed\"\nauth = \"optional\"\n");
    let addr = s.addr();
    let id = s.admin_session();
    let ck = cookie(&id);
    let own = s.origin();

    // HTTP: the reply (as mallory) becomes a 502 with none of its data.
    let before = mismatches(addr);
    let resps = [
        get_with(addr, "/crossed", &[]),
        request(addr, "POST", "/crossed", &[], b"hello"),
        get_with(addr, "/crossed/x", &[("Cookie", &ck)]),
        request(
            addr,
            "POST",
            "/crossed",
            &[("Cookie", &ck), ("Origin", &own)],
            b"hello",
        ),
    ];
    for r in &resps {
        assert_eq!(r.status, 502, "{r:?}");
        assert!(r.header("x-secret").is_none(), "{r:?}");
        assert_no_mallory("HTTP", &resp_text(r));
    }
    assert_eq!(
        mismatches(addr) - before,
        resps.len() as u64,
        "identity_mismatch must count each crossed HTTP reply"
    );

    // WebSocket: the crossed message is dropped; the socket lives on.
    let before = mismatches(addr);
    let anon: Vec<(&str, &str)> = Vec::new();
    let authed = vec![("Cookie", ck.as_str()), ("Origin", own.as_str())];
    let mut sent = 0;
    for (who, headers) in [("anonymous", &anon), ("logged in", &authed)] {
        let (mut t, head) = ws_handshake(addr, "/crossed", headers);
        assert_eq!(head_status(&head), 101, "{who}: {head}");
        t.write_all(&ws_frame(0x1, b"hello")).expect("text");
        t.write_all(&ws_frame(0x2, b"\x01\x02")).expect("binary");
        sent += 2;
        let data = data_before_pong(&mut t, b"token-1");
        assert!(
            data.is_empty(),
            "{who}: the client received a crossed reply: {data:?}"
        );
        for (_, payload) in &data {
            assert_no_mallory(who, &String::from_utf8_lossy(payload));
        }
        // Still open, and still dropping.
        t.write_all(&ws_frame(0x1, b"again")).expect("text");
        sent += 1;
        let data = data_before_pong(&mut t, b"token-2");
        assert!(data.is_empty(), "{who}: {data:?}");
    }
    assert_eq!(
        mismatches(addr) - before,
        sent,
        "identity_mismatch must count each dropped WebSocket message"
    );
}

// ----- 12. route access -------------------------------------------------------

#[test]
fn route_access_required_users_and_h_listeners() {
    let s = Sigma::start_with(
        "[[route]]\npath = \"/private\"\nto = \"&inspect\"\nauth = \"required\"\n\
         [[route]]\npath = \"/bob\"\nto = \"&inspect\"\nauth = \"required\"\nusers = [\"bob\"]\n",
        "T127.0.0.1:0[HA] T127.0.0.1:0[H]",
        &[("admin", "admin-pw-1"), ("bob", "bob-pw-2")],
    );
    let (ha, h) = (s.addrs[0], s.addrs[1]);
    let html = ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8");
    let api = ("Accept", "application/json");

    // Anonymous browser navigation: to the login page, coming back after.
    let r = get_with(ha, "/private/x?a=1&b=2", &[html]);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("/login?next=%2Fprivate%2Fx%3Fa%3D1%26b%3D2"),
        "{r:?}"
    );
    assert!(!r.body_str().contains("identity"), "{r:?}");
    // Anonymous API call: 401 with a challenge, nothing of the destination.
    for headers in [vec![api], vec![]] {
        let r = get_with(ha, "/private/x", &headers);
        assert_eq!(r.status, 401, "{r:?}");
        assert!(
            r.header("www-authenticate").is_some_and(|v| !v.is_empty()),
            "401 without WWW-Authenticate: {r:?}"
        );
        assert!(!r.body_str().contains("headers"), "{r:?}");
    }

    let (admin, bob) = {
        let r = parallel(vec![
            Box::new(move || login_json(ha, "admin", "admin-pw-1", &[]))
                as Box<dyn FnOnce() -> Resp + Send>,
            Box::new(move || login_json(ha, "bob", "bob-pw-2", &[])),
        ]);
        assert_eq!(r[0].status, 200, "{:?}", r[0]);
        assert_eq!(r[1].status, 200, "{:?}", r[1]);
        (cookie(&session_id(&r[0])), cookie(&session_id(&r[1])))
    };

    let (identity, _) = inspect(&get_with(ha, "/private/x", &[("Cookie", &admin), html]));
    assert_eq!(identity, logged_in("admin"));
    // The allow-list: admin is authenticated but not on it.
    let r = get_with(ha, "/bob", &[("Cookie", &admin), api]);
    assert_eq!(r.status, 403, "admin on bob's route: {r:?}");
    let r = get_with(ha, "/bob", &[("Cookie", &admin), html]);
    assert_eq!(r.status, 403, "admin (browser) on bob's route: {r:?}");
    let (identity, _) = inspect(&get_with(ha, "/bob/notes", &[("Cookie", &bob)]));
    assert_eq!(identity, logged_in("bob"));
    let r = get_with(ha, "/bob", &[api]);
    assert_eq!(r.status, 401, "anonymous on bob's route: {r:?}");

    // An [H] listener: no A, so no route auth, the cookie is ignored and
    // every request is forwarded with identity null (and still without
    // client-forged identity headers).
    for (why, path, headers) in [
        ("anonymous", "/private", vec![]),
        ("admin cookie", "/private", vec![("Cookie", admin.as_str())]),
        (
            "admin on bob's route",
            "/bob",
            vec![("Cookie", admin.as_str())],
        ),
        ("bob cookie", "/bob", vec![("Cookie", bob.as_str()), html]),
    ] {
        let mut headers = headers;
        headers.extend(SPOOFED);
        headers.push(("X-Innocent", "1"));
        let r = get_with(h, path, &headers);
        let (identity, seen) = inspect(&r);
        assert_eq!(identity, Value::Null, "[H] {why}: {r:?}");
        assert_stripped(&format!("[H] {why}"), &seen);
    }
}

// ----- 13. the login page -------------------------------------------------------

#[test]
fn login_page_is_a_form_with_next_escaped() {
    let s = Sigma::start("");
    let addr = s.addr();
    let page = |target: &str| {
        let r = get_with(addr, target, &[("Accept", "text/html")]);
        assert_eq!(r.status, 200, "{target}: {r:?}");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("text/html")),
            "{target}: {r:?}"
        );
        r.body_str()
    };

    let p = page("/login");
    assert!(p.contains("<form"), "{p}");
    assert!(p.contains("method=\"post\""), "{p}");
    assert!(p.contains("action=\"/login\""), "{p}");
    assert!(p.contains("name=\"user\""), "{p}");
    assert!(p.contains("name=\"password\""), "{p}");
    assert!(p.contains("name=\"next\" value=\"/\""), "{p}");

    // A `next` that is no path at all is replaced by `/`.
    let p = page("/login?next=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E");
    assert!(!p.contains("<script"), "{p}");
    assert!(p.contains("name=\"next\" value=\"/\""), "{p}");

    // A path with markup in it is kept, escaped.
    let p = page("/login?next=%2F%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E");
    assert!(!p.contains("<script"), "{p}");
    assert!(
        p.contains("value=\"/&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{p}"
    );
    // The query of a redirected request survives, escaped.
    let p = page("/login?next=%2Fprivate%2Fx%3Fa%3D1%26b%3D2");
    assert!(p.contains("value=\"/private/x?a=1&amp;b=2\""), "{p}");

    // The page after a failed form login escapes it too.
    let r = login_form(
        addr,
        "admin",
        "wrong",
        Some("/\"><script>alert(1)</script>"),
        &[],
    );
    assert_eq!(r.status, 401, "{r:?}");
    let p = r.body_str();
    assert!(!p.contains("<script"), "{p}");
    assert!(p.contains("&lt;script&gt;"), "{p}");
}
