//! `&db`, the durable per-user key-value store (DESIGN §6, §9), against the
//! real binary over real sockets: CRUD with 201/200/204/404 and ETags,
//! `If-Match` / `If-None-Match` and 412, prefix listing, per-user
//! namespaces, shared namespaces with writers (403), the value size limit
//! (413), anonymous requests (401), the
//! WebSocket operations and `watch`, and durability: writes acknowledged
//! before a `kill -9` at a random moment are all there after a restart.
//!
//! `cargo nextest run -p sigma --test db`.
//!
//! Users are created with `sigma user add` before the server starts, and
//! each test logs in as few times as it can (Argon2id is slow in debug
//! builds).

mod common;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::ws::Ws;
use common::*;
use serde_json::{json, Value};

// ----- fixtures --------------------------------------------------------------

const HA: &str = "T127.0.0.1:0[HA]";

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

/// `sigma user add NAME --password-stdin --data DIR`.
fn add_user(data: &Path, name: &str, pw: &str) {
    let mut cmd = sigma_cmd();
    cmd.args(["user", "add", name, "--password-stdin", "--data"])
        .arg(data);
    let (st, _, err) = run_bounded(cmd, Some(format!("{pw}\n").as_bytes()));
    assert!(st.success(), "sigma user add {name}: {err}");
}

/// A running sigma with users `alice` and `bob` (passwords `pw-<name>`).
struct Sigma {
    // Declared before `data`: the server stops before its directory goes.
    server: Server,
    /// Kept for its `Drop`.
    _data: DataDir,
}

impl Sigma {
    /// Users added first, then the server with `tail` as extra config.
    fn start(tail: &str) -> Sigma {
        Self::start_with(tail, &["alice", "bob"])
    }

    /// [`Sigma::start`] with these users.
    fn start_with(tail: &str, users: &[&str]) -> Sigma {
        let data = DataDir::new("db");
        // One after the other: each `sigma user add` locks the store.
        for &u in users {
            add_user(&data.path(), u, &format!("pw-{u}"));
        }
        let toml = Cfg::new().tail(tail).toml();
        let l = Server::launch(&toml, &data.path(), HA);
        Sigma {
            server: l.server,
            _data: data,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Logs `user` in; the `Cookie` header value.
    fn login(&self, user: &str) -> String {
        login(self.addr(), user)
    }

    /// Logs several users in at once.
    fn logins<const N: usize>(&self, users: [&str; N]) -> [String; N] {
        let addr = self.addr();
        thread::scope(|s| {
            let hs = users.map(|u| s.spawn(move || login(addr, u)));
            hs.map(|h| h.join().expect("login thread"))
        })
    }
}

/// `POST /login` as JSON; the `Cookie` header value for the session.
fn login(addr: SocketAddr, user: &str) -> String {
    login_as(addr, user, &format!("pw-{user}"))
}

// ----- HTTP helpers ----------------------------------------------------------

/// A logged-in user's view of `/db`, one fresh connection per request.
struct User {
    addr: SocketAddr,
    cookie: String,
}

impl User {
    fn new(addr: SocketAddr, cookie: &str) -> Self {
        Self {
            addr,
            cookie: cookie.to_owned(),
        }
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut h = vec![("Cookie", self.cookie.as_str())];
        h.extend_from_slice(headers);
        request(self.addr, method, path, &h, body)
    }

    fn get(&self, key: &str, headers: &[(&str, &str)]) -> Resp {
        self.req("GET", &format!("/db/{key}"), headers, b"")
    }

    fn put(&self, key: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.req("PUT", &format!("/db/{key}"), headers, body)
    }

    fn delete(&self, key: &str, headers: &[(&str, &str)]) -> Resp {
        self.req("DELETE", &format!("/db/{key}"), headers, b"")
    }

    /// `GET /db/?QUERY`: the JSON list.
    fn list(&self, query: &str) -> (Resp, Vec<Value>) {
        let r = self.req("GET", &format!("/db/?{query}"), &[], b"");
        assert_eq!(r.status, 200, "list {query}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: Value = serde_json::from_slice(&r.body).expect("list is JSON");
        let items = v.as_array().expect("list is an array").clone();
        (r, items)
    }

    fn keys(&self, query: &str) -> Vec<String> {
        self.list(query)
            .1
            .iter()
            .map(|i| i["key"].as_str().expect("key").to_owned())
            .collect()
    }
}

fn etag_of(r: &Resp) -> String {
    r.header("etag")
        .unwrap_or_else(|| panic!("no ETag: {r:?}"))
        .to_owned()
}

fn error_code(r: &Resp) -> String {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    v["error"].as_str().unwrap_or("").to_owned()
}

/// Asserts that `r` is `{"type":"error","code":code,"message":TEXT,"id":id}`.
#[track_caller]
fn assert_ws_error(r: &Value, id: Value, code: &str) {
    let message = r["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "no message: {r}");
    assert_eq!(
        r,
        &json!({"type": "error", "code": code, "message": message, "id": id})
    );
}

/// `"v<N>"` → N.
fn version(etag: &str) -> u64 {
    etag.strip_prefix("\"v")
        .and_then(|s| s.strip_suffix('"'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("ETag {etag:?} is not \"v<N>\""))
}

// ----- WebSocket helpers -----------------------------------------------------

/// Opens `/db` with the session cookie and this server's own `Origin`.
fn db_ws(addr: SocketAddr, cookie: &str) -> Ws {
    Ws::open(
        addr,
        "/db",
        &format!("Cookie: {cookie}\r\nOrigin: http://{addr}\r\n"),
    )
}

// ----- HTTP ------------------------------------------------------------------

#[test]
fn crud_with_statuses_and_etags() {
    let s = Sigma::start("");
    let a = User::new(s.addr(), &s.login("alice"));

    assert_eq!(a.get("greeting", &[]).status, 404);
    let r = a.put("greeting", &[("Content-Type", "text/plain")], b"hello");
    assert_eq!(r.status, 201, "{r:?}");
    let e1 = etag_of(&r);
    version(&e1);

    let r = a.get("greeting", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(etag_of(&r), e1);

    // HEAD: the same headers, no body.
    let mut c = Client::connect(s.addr());
    c.send(&request_bytes(
        s.addr(),
        "HEAD",
        "/db/greeting",
        &[("Cookie", &a.cookie)],
        b"",
    ));
    let h = c.read_head_response();
    assert_eq!(h.status, 200);
    assert_eq!(h.header("etag"), Some(e1.as_str()));

    // Replacing: 200 and a newer ETag; no Content-Type means octet-stream.
    let r = a.put("greeting", &[], b"\x00\xffbin");
    assert_eq!(r.status, 200, "{r:?}");
    let e2 = etag_of(&r);
    assert!(version(&e2) > version(&e1), "{e1} then {e2}");
    let r = a.get("greeting", &[]);
    assert_eq!(r.body, b"\x00\xffbin");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(etag_of(&r), e2);

    // An empty value is a value.
    assert_eq!(a.put("empty", &[], b"").status, 201);
    let r = a.get("empty", &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));

    // Keys are opaque and percent-decoded: `/` is just a character.
    assert_eq!(a.put("dir/sub%20key%2Fx+y", &[], b"k").status, 201);
    assert_eq!(a.get("dir/sub%20key%2fx+y", &[]).body, b"k");
    assert_eq!(a.keys("prefix=dir%2F"), ["dir/sub key/x+y"]);
    assert_eq!(a.put("%C3%A9t%C3%A9", &[], b"summer").status, 201);
    assert_eq!(a.get("%c3%a9t%c3%a9", &[]).body, b"summer");

    // Invalid keys: control characters, not UTF-8.
    for bad in ["a%0Ab", "%ff", "a%1Fb"] {
        let r = a.put(bad, &[], b"x");
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert_eq!(error_code(&r), "invalid_key", "{bad}");
    }
    // Paths no route may see (dot and empty segments, NUL, bad escapes)
    // are refused before routing (route::path).
    for bad in [
        "..", "a/../b", "a/./b", "a%00b", "%zz", "%2e%2e", "a//b", "a\\b",
    ] {
        let r = a.put(bad, &[], b"x");
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert_eq!(error_code(&r), "invalid_path", "{bad}");
    }
    // An encoded `/` is a key character, `//` included.
    assert_eq!(a.put("a%2F%2Fb", &[], b"slashes").status, 201);
    assert_eq!(a.get("a%2f%2fb", &[]).body, b"slashes");

    // Delete: 204, then 404.
    let r = a.delete("greeting", &[]);
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty());
    assert_eq!(a.get("greeting", &[]).status, 404);
    assert_eq!(a.delete("greeting", &[]).status, 404);
    // Re-created: created again, with a version never used before.
    let r = a.put("greeting", &[], b"again");
    assert_eq!(r.status, 201);
    assert!(version(&etag_of(&r)) > version(&e2));

    // Other methods are not allowed.
    let r = a.req("POST", "/db/greeting", &[], b"x");
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some_and(|v| v.contains("PUT")));
    assert_eq!(a.req("PUT", "/db/", &[], b"x").status, 405);
}

#[test]
fn if_match_and_if_none_match() {
    let s = Sigma::start("");
    let a = User::new(s.addr(), &s.login("alice"));
    let e1 = etag_of(&a.put("k", &[], b"one"));

    // If-Match: the current ETag wins, a stale one gets 412 and changes
    // nothing.
    let r = a.put("k", &[("If-Match", &e1)], b"two");
    assert_eq!(r.status, 200, "{r:?}");
    let e2 = etag_of(&r);
    let r = a.put("k", &[("If-Match", &e1)], b"lost update");
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(error_code(&r), "precondition_failed");
    assert_eq!(a.get("k", &[]).body, b"two");
    // A list, and `*`.
    let list = format!("\"v999999\", {e2}");
    let r = a.put("k", &[("If-Match", &list)], b"three");
    assert_eq!(r.status, 200, "{r:?}");
    let e3 = etag_of(&r);
    assert_eq!(a.put("k", &[("If-Match", "*")], b"four").status, 200);
    assert_eq!(a.put("absent", &[("If-Match", "*")], b"x").status, 412);
    assert_eq!(a.put("absent", &[("If-Match", &e1)], b"x").status, 412);
    assert_eq!(a.get("absent", &[]).status, 404);
    // A weak tag never matches If-Match.
    let weak = format!("W/{e3}");
    assert_eq!(a.put("k", &[("If-Match", &weak)], b"x").status, 412);
    // Malformed: 400.
    assert_eq!(a.put("k", &[("If-Match", "v1")], b"x").status, 400);

    // If-None-Match: * is create-only.
    let r = a.put("new", &[("If-None-Match", "*")], b"first");
    assert_eq!(r.status, 201, "{r:?}");
    let en = etag_of(&r);
    let r = a.put("new", &[("If-None-Match", "*")], b"second");
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(a.get("new", &[]).body, b"first");

    // Conditional GET: 304 for a matching If-None-Match, 412 for a
    // failing If-Match.
    let r = a.get("new", &[("If-None-Match", &en)]);
    assert_eq!(r.status, 304, "{r:?}");
    assert_eq!(etag_of(&r), en);
    assert_eq!(a.get("new", &[("If-None-Match", "\"v1\"")]).status, 200);
    assert_eq!(a.get("new", &[("If-Match", &e1)]).status, 412);
    assert_eq!(a.get("new", &[("If-Match", &en)]).status, 200);

    // Conditional DELETE.
    let r = a.delete("new", &[("If-Match", &e1)]);
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(a.get("new", &[]).status, 200);
    assert_eq!(a.delete("new", &[("If-Match", &en)]).status, 204);
    assert_eq!(a.delete("new", &[("If-Match", &en)]).status, 412);
}

#[test]
fn prefix_listing() {
    let s = Sigma::start("");
    let a = User::new(s.addr(), &s.login("alice"));
    for (k, v) in [
        ("a/1", "x"),
        ("a/2", "yy"),
        ("a/3", "zzz"),
        ("ab", "w"),
        ("b/1", "v"),
    ] {
        assert_eq!(a.put(k, &[], v.as_bytes()).status, 201);
    }
    let e2 = etag_of(&a.get("a/2", &[]));
    let (_, items) = a.list("prefix=a%2F");
    assert_eq!(
        items,
        vec![
            json!({"key": "a/1", "etag": etag_of(&a.get("a/1", &[])), "size": 1}),
            json!({"key": "a/2", "etag": e2, "size": 2}),
            json!({"key": "a/3", "etag": etag_of(&a.get("a/3", &[])), "size": 3}),
        ]
    );
    assert_eq!(a.keys("prefix=a"), ["a/1", "a/2", "a/3", "ab"]);
    assert_eq!(a.keys(""), ["a/1", "a/2", "a/3", "ab", "b/1"]);
    assert_eq!(a.keys("prefix=c"), Vec::<String>::new());
    // `<route>` without the slash lists too.
    let r = a.req("GET", "/db?prefix=b", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        json!([{"key": "b/1", "etag": etag_of(&a.get("b/1", &[])), "size": 1}])
    );

    // Pages: `limit`, and a `Link` to the next page while more follow.
    let (r, items) = a.list("prefix=a&limit=3");
    assert_eq!(items.len(), 3);
    let link = r.header("link").expect("Link to the next page").to_owned();
    let next = link
        .strip_prefix('<')
        .and_then(|l| l.split_once(">; rel=\"next\""))
        .map(|(u, _)| u.to_owned())
        .unwrap_or_else(|| panic!("bad Link {link:?}"));
    let r = a.req("GET", &next, &[], b"");
    assert_eq!(r.status, 200, "{next}");
    let rest: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        rest,
        json!([{"key": "ab", "etag": etag_of(&a.get("ab", &[])), "size": 1}])
    );
    assert!(r.header("link").is_none());
    assert_eq!(a.keys("prefix=a&after=a%2F2"), ["a/3", "ab"]);
    assert_eq!(a.req("GET", "/db/?limit=0", &[], b"").status, 400);

    // Deleted keys leave the listing.
    assert_eq!(a.delete("a/2", &[]).status, 204);
    assert_eq!(a.keys("prefix=a%2F"), ["a/1", "a/3"]);
}

#[test]
fn namespaces_are_per_user() {
    let s = Sigma::start("");
    let [ca, cb] = s.logins(["alice", "bob"]);
    let (a, b) = (User::new(s.addr(), &ca), User::new(s.addr(), &cb));
    assert_eq!(a.put("secret", &[], b"alice's").status, 201);
    assert_eq!(a.put("shared/name", &[], b"alice's").status, 201);

    // Bob sees none of it, and cannot change or delete it.
    assert_eq!(b.get("secret", &[]).status, 404);
    assert_eq!(b.keys(""), Vec::<String>::new());
    assert_eq!(b.delete("secret", &[]).status, 404);
    assert_eq!(b.put("secret", &[("If-Match", "*")], b"x").status, 412);
    // Bob's own key of the same name is his.
    assert_eq!(
        b.put("secret", &[("If-None-Match", "*")], b"bob's").status,
        201
    );
    assert_eq!(b.get("secret", &[]).body, b"bob's");
    assert_eq!(a.get("secret", &[]).body, b"alice's");
    assert_eq!(b.keys(""), ["secret"]);
    assert_eq!(a.keys(""), ["secret", "shared/name"]);
    // Identity headers from the client change nothing.
    let r = b.get("shared/name", &[("X-Sigma-User", "alice")]);
    assert_eq!(r.status, 404);
}

#[test]
fn shared_namespaces() {
    let s = Sigma::start_with(
        r#"
[[route]]
path = "/db"
to = "&db"
auth = "required"

[[route]]
path = "/team"
to = "&db"
auth = "required"
users = ["alice", "bob"]
namespace = "team"
writers = ["alice"]
"#,
        &["alice", "bob", "carol"],
    );
    let [ca, cb, cc] = s.logins(["alice", "bob", "carol"]);
    let team = |c: &str| {
        let u = User::new(s.addr(), c);
        move |m: &str, key: &str, body: &[u8]| u.req(m, &format!("/team/{key}"), &[], body)
    };
    let (a, b, c) = (team(&ca), team(&cb), team(&cc));

    // Alice (a writer) writes; Bob (a reader) reads but cannot write.
    let r = a("PUT", "plan", b"ship it");
    assert_eq!(r.status, 201, "{r:?}");
    let r = b("GET", "plan", b"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ship it"[..]));
    let r = b("PUT", "plan", b"no");
    assert_eq!(
        (r.status, r.header("content-type")),
        (403, Some("application/json"))
    );
    assert_eq!(b("DELETE", "plan", b"").status, 403);
    assert_eq!(b("GET", "?prefix=", b"").status, 200);
    // Carol is not admitted by the route at all.
    assert_eq!(c("GET", "plan", b"").status, 403);
    // The shared namespace is not Alice's own, nor anyone's.
    let own = User::new(s.addr(), &ca);
    assert_eq!(own.get("plan", &[]).status, 404);
    assert_eq!(own.put("plan", &[], b"mine").status, 201);
    assert_eq!(a("GET", "plan", b"").body, b"ship it");

    // Over WebSocket: Bob watches the shared namespace and sees Alice's
    // writes; his own writes are refused.
    let mut ws = Ws::open(
        s.addr(),
        "/team",
        &format!("Cookie: {cb}\r\nOrigin: http://{}\r\n", s.addr()),
    );
    let r = ws.call(json!({"type": "watch", "prefix": "", "id": 1}));
    assert_eq!(r, json!({"type": "result", "id": 1}));
    let r = ws.call(json!({"type": "put", "key": "x", "value": "1", "id": 2}));
    assert_ws_error(&r, json!(2), "forbidden");
    let r = ws.call(json!({"type": "get", "key": "plan", "id": 3}));
    assert_eq!(r["value"], json!("ship it"));
    assert_eq!(a("DELETE", "plan", b"").status, 204);
    let change = ws.recv();
    assert_eq!(
        change,
        json!({"type": "change", "key": "plan", "etag": null})
    );
}

#[test]
fn limits_on_values_and_keys() {
    let s = Sigma::start("[db]\nmax_value = 1024\nmax_key = 16\n");
    let a = User::new(s.addr(), &s.login("alice"));
    assert_eq!(a.put("big", &[], &[b'x'; 1024]).status, 201);
    let r = a.put("big", &[], &[b'x'; 1025]);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(error_code(&r), "too_large");
    assert_eq!(a.get("big", &[]).body.len(), 1024);

    assert_eq!(a.put(&"k".repeat(16), &[], b"x").status, 201);
    let r = a.put(&"k".repeat(17), &[], b"x");
    assert_eq!(r.status, 400, "{r:?}");
    // The limit is in bytes, after decoding: 6 × 2-byte é + 5 = 17.
    let r = a.put(&format!("{}kkkkk", "%C3%A9".repeat(6)), &[], b"x");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        a.req("GET", &format!("/db/?prefix={}", "p".repeat(17)), &[], b"")
            .status,
        400
    );
}

#[test]
fn anonymous_requests_get_401() {
    // The default route (auth required), and a route that lets anonymous
    // requests through to `&db` itself.
    let s = Sigma::start("[[route]]\npath = \"/db\"\nto = \"&db\"\nauth = \"required\"\n\n[[route]]\npath = \"/open\"\nto = \"&db\"\nauth = \"optional\"\n");
    for path in ["/db/k", "/db/", "/open/k", "/open/"] {
        for method in ["GET", "PUT", "DELETE"] {
            // `&db` refuses anonymous requests before it looks at the
            // method (`PUT /open/` would be 405 for a user).
            let r = request(s.addr(), method, path, &[], b"");
            assert_eq!(r.status, 401, "{method} {path}: {r:?}");
            assert_eq!(error_code(&r), "unauthenticated", "{method} {path}");
        }
    }
    // A WebSocket on the open route: accepted, but no operation works.
    let mut ws = Ws::open(s.addr(), "/open", "");
    for op in [
        json!({"type": "get", "key": "k", "id": 1}),
        json!({"type": "put", "key": "k", "value": "v", "id": 1}),
        json!({"type": "watch", "prefix": "", "id": 1}),
    ] {
        let r = ws.call(op);
        assert_ws_error(&r, json!(1), "unauthenticated");
    }
    // Logged in, both routes reach the same namespace.
    let a = User::new(s.addr(), &s.login("alice"));
    assert_eq!(a.req("PUT", "/open/k", &[], b"v").status, 201);
    assert_eq!(a.get("k", &[]).body, b"v");
    assert_eq!(request(s.addr(), "GET", "/open/k", &[], b"").status, 401);
}

// ----- WebSocket -------------------------------------------------------------

#[test]
fn websocket_operations() {
    let s = Sigma::start("");
    let cookie = s.login("alice");
    let a = User::new(s.addr(), &cookie);
    let mut ws = db_ws(s.addr(), &cookie);

    let r = ws.call(json!({"type": "get", "key": "k", "id": 1}));
    assert_ws_error(&r, json!(1), "not_found");
    let r = ws.call(json!({"type": "put", "key": "k", "value": "hello", "id": 2}));
    assert_eq!(
        (r["type"].clone(), r["id"].clone(), r["created"].clone()),
        (json!("result"), json!(2), json!(true)),
        "{r}"
    );
    let e1 = r["etag"].as_str().expect("etag").to_owned();
    // The same entry over HTTP.
    let h = a.get("k", &[]);
    assert_eq!(
        (h.body.as_slice(), etag_of(&h)),
        (&b"hello"[..], e1.clone())
    );
    assert_eq!(h.header("content-type"), Some("text/plain; charset=utf-8"));

    let r = ws.call(json!({"type": "get", "key": "k", "id": "g"}));
    assert_eq!(
        r,
        json!({"type": "result", "id": "g", "key": "k", "etag": e1, "value": "hello",
               "content_type": "text/plain; charset=utf-8"})
    );
    // Conditional put: stale → precondition_failed.
    let r = ws.call(json!({"type": "put", "key": "k", "value": "2", "if_match": e1, "id": 3}));
    assert_eq!(r["type"], json!("result"), "{r}");
    assert_eq!(r["created"], json!(false));
    let r = ws.call(json!({"type": "put", "key": "k", "value": "3", "if_match": e1, "id": 4}));
    assert_ws_error(&r, json!(4), "precondition_failed");
    let r =
        ws.call(json!({"type": "put", "key": "k", "value": "3", "if_none_match": "*", "id": 5}));
    assert_eq!(r["code"], json!("precondition_failed"));
    // Bytes go as base64 both ways.
    assert_eq!(a.put("bin", &[], b"\xff\x00").status, 201);
    let r = ws.call(json!({"type": "get", "key": "bin", "id": 6}));
    assert_eq!(r["value_base64"], json!("/wA="), "{r}");
    let r = ws.call(json!({"type": "put", "key": "bin2", "value_base64": "/wA=", "id": 7}));
    assert_eq!(r["type"], json!("result"), "{r}");
    assert_eq!(a.get("bin2", &[]).body, b"\xff\x00");

    let r = ws.call(json!({"type": "list", "prefix": "bin", "id": 8}));
    assert_eq!(r["type"], json!("result"), "{r}");
    let keys: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["bin", "bin2"]);
    assert_eq!(r["more"], json!(false));
    assert_eq!(r["items"][0]["size"], json!(2));

    let r = ws.call(json!({"type": "delete", "key": "bin", "id": 9}));
    assert_eq!(r, json!({"type": "result", "id": 9}));
    let r = ws.call(json!({"type": "delete", "key": "bin", "id": 10}));
    assert_eq!(r["code"], json!("not_found"));
    assert_eq!(a.get("bin", &[]).status, 404);

    // Bad requests are answered, in order, and the socket stays usable.
    let r = ws.call(json!({"type": "frobnicate", "id": 11}));
    assert_ws_error(&r, json!(11), "bad_message");
    // The old style (`op`) is refused, saying the field is `type`.
    let r = ws.call(json!({"op": "get", "key": "k", "id": 14}));
    assert_ws_error(&r, json!(14), "bad_message");
    assert!(r["message"].as_str().unwrap().contains("\"type\""), "{r}");
    // An id that is neither a string nor a number is refused, unechoed.
    ws.send(&json!({"type": "get", "key": "k", "id": {"n": 1}}));
    let r = ws.recv();
    assert_eq!(r.get("id"), None, "{r}");
    assert_eq!(r["code"], json!("bad_message"), "{r}");
    let r = ws.call(json!({"type": "get", "key": "../x", "id": 12}));
    assert_eq!(r["code"], json!("invalid_key"));
    let r = ws.call(json!({"type": "get", "key": "k", "id": 13, "if_mtach": "*"}));
    assert_ws_error(&r, json!(13), "bad_message");
    // Pipelined requests are answered in order.
    for i in 0..20 {
        ws.send(&json!({"type": "put", "key": format!("p/{i}"), "value": "v", "id": 100 + i}));
    }
    for i in 0..20 {
        let r = ws.recv();
        assert_eq!(r["id"], json!(100 + i), "{r}");
        assert_eq!(r["type"], json!("result"), "{r}");
    }
    assert_eq!(a.keys("prefix=p%2F").len(), 20);
}

#[test]
fn watch_delivers_changes_from_http_and_websocket() {
    let s = Sigma::start("");
    let [ca, cb] = s.logins(["alice", "bob"]);
    let a = User::new(s.addr(), &ca);
    let b = User::new(s.addr(), &cb);
    let mut watcher = db_ws(s.addr(), &ca);
    let mut writer = db_ws(s.addr(), &ca);
    let mut bob_ws = db_ws(s.addr(), &cb);

    let r = watcher.call(json!({"type": "watch", "prefix": "todo/", "id": 1}));
    assert_eq!(r, json!({"type": "result", "id": 1}));
    let r = bob_ws.call(json!({"type": "watch", "prefix": "", "id": 1}));
    assert_eq!(r["type"], json!("result"));

    // A change over HTTP.
    let e = etag_of(&a.put("todo/1", &[], b"milk"));
    assert_eq!(
        watcher.recv(),
        json!({"type": "change", "key": "todo/1", "etag": e})
    );
    // Outside the prefix: nothing; then a change over WebSocket.
    assert_eq!(a.put("other", &[], b"x").status, 201);
    let r = writer.call(json!({"type": "put", "key": "todo/2", "value": "eggs", "id": 7}));
    let e2 = r["etag"].as_str().unwrap().to_owned();
    assert_eq!(
        watcher.recv(),
        json!({"type": "change", "key": "todo/2", "etag": e2})
    );
    // Deletes.
    assert_eq!(a.delete("todo/1", &[]).status, 204);
    assert_eq!(
        watcher.recv(),
        json!({"type": "change", "key": "todo/1", "etag": null})
    );
    // A failed conditional write changes nothing and notifies no one.
    assert_eq!(a.put("todo/2", &[("If-Match", "\"v1\"")], b"x").status, 412);
    // Bob's changes go to Bob's watchers only; Bob saw none of Alice's.
    let eb = etag_of(&b.put("todo/1", &[], b"bob"));
    let seen = bob_ws.recv();
    assert_eq!(seen, json!({"type": "change", "key": "todo/1", "etag": eb}));
    // Watcher's next message is its reply to this, not Bob's change.
    let r = watcher.call(json!({"type": "unwatch", "prefix": "todo/", "id": 2}));
    assert_eq!(r, json!({"type": "result", "id": 2}));
    assert_eq!(a.put("todo/3", &[], b"x").status, 201);
    let r = watcher.call(json!({"type": "get", "key": "todo/3", "id": 3}));
    assert_eq!(r["value"], json!("x"), "an unwatched change arrived: {r}");
}

// ----- durability ------------------------------------------------------------

/// splitmix64: a small seeded generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn durable_value(round: usize, i: usize) -> Vec<u8> {
    format!("round {round} write {i} {}", "x".repeat(i % 97)).into_bytes()
}

/// PUTs `r<round>/k<i>` for i = 0, 1, … on one keep-alive connection until
/// the server stops answering; the `i` of every 2xx answer.
fn write_until_dead(addr: SocketAddr, cookie: &str, round: usize, stop: &AtomicBool) -> Vec<usize> {
    let mut acked = Vec::new();
    let Ok(stream) = TcpStream::connect(addr) else {
        return acked;
    };
    let mut c = Client::from_stream(stream);
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let req = request_bytes(
            addr,
            "PUT",
            &format!("/db/r{round}/k{i}"),
            &[("Cookie", cookie), ("Content-Type", "text/plain")],
            &durable_value(round, i),
        );
        if c.try_send(&req).is_err() {
            break;
        }
        match c.try_read_response() {
            Ok(r) if (200..300).contains(&r.status) => acked.push(i),
            Ok(r) => panic!("write {round}/{i} refused: {r:?}"),
            Err(_) => break,
        }
    }
    acked
}

/// Every acknowledged write of every round is there, with its value; an
/// unacknowledged write in flight at the kill may be there, but whole.
fn check_writes(addr: SocketAddr, cookie: &str, acked: &[Vec<usize>]) {
    let mut c = Client::connect(addr);
    for (round, keys) in acked.iter().enumerate() {
        let next = keys.last().map_or(0, |l| l + 1);
        for &i in keys.iter().chain(std::iter::once(&next)) {
            c.send(&request_bytes(
                addr,
                "GET",
                &format!("/db/r{round}/k{i}"),
                &[("Cookie", cookie)],
                b"",
            ));
            let r = c.read_response();
            if i == next && r.status == 404 {
                continue;
            }
            assert_eq!(
                r.status, 200,
                "acknowledged write r{round}/k{i} is lost: {r:?}"
            );
            assert_eq!(
                r.body,
                durable_value(round, i),
                "r{round}/k{i} has another value"
            );
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    const ROUNDS: usize = 5;
    let seed = std::env::var("DB_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0006_u64);
    eprintln!("durability seed {seed} (set DB_TEST_SEED to repeat another)");
    let mut rng = Rng(seed);
    let t0 = Instant::now();

    let data = DataDir::new("db-kill");
    add_user(&data.path(), "alice", "pw-alice");
    let toml = Cfg::new().toml();
    let mut acked: Vec<Vec<usize>> = Vec::new();
    for round in 0..ROUNDS {
        let l = Server::launch(&toml, &data.path(), HA);
        let mut server = l.server;
        let addr = server.addr();
        let cookie = login(addr, "alice");
        // What earlier rounds wrote before their kill is all there.
        check_writes(addr, &cookie, &acked);

        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (cookie, stop) = (cookie.clone(), Arc::clone(&stop));
            thread::spawn(move || write_until_dead(addr, &cookie, round, &stop))
        };
        let delay = Duration::from_millis(rng.between(50, 500));
        thread::sleep(delay);
        server.signal("KILL");
        let (st, _) = server.wait_exit(Duration::from_secs(10));
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(st.signal(), Some(9), "{st}");
        }
        stop.store(true, Ordering::SeqCst);
        let keys = writer.join().expect("writer thread");
        eprintln!(
            "round {round}: killed after {delay:?}, {} writes acknowledged",
            keys.len()
        );
        acked.push(keys);
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 0, "no write was acknowledged in {ROUNDS} rounds");

    let l = Server::launch(&toml, &data.path(), HA);
    let cookie = login(l.server.addr(), "alice");
    check_writes(l.server.addr(), &cookie, &acked);
    // Nothing else is there, either.
    let u = User::new(l.server.addr(), &cookie);
    for (round, keys) in acked.iter().enumerate() {
        let listed = u.keys(&format!("prefix=r{round}%2F&limit=1000")).len();
        assert!(
            listed == keys.len() || listed == keys.len() + 1,
            "round {round}: {listed} keys listed, {} acknowledged",
            keys.len()
        );
    }
    eprintln!("durability: {total} writes in {:?}", t0.elapsed());
}
